"""The cost of a sampled step (issue 18, item 3), part by part: aten ops and time on the
training thread of a plain ``gradwatch.Monitor`` with every_n_steps=1 (every step sampled).

Each part is a method of the sampled-step code, wrapped here (never in the package) while the
benchmark runs; a part's ops and time exclude those of the parts it calls:

- activation records: the forward hooks (``ForwardTracer._on_forward``) and the batched
  records of small outputs (``RecordBatches.flush``);
- activation combine: the records merged per layer (``ForwardTracer.finish``);
- gradient stats / weight stats / update stats: the per-parameter table
  (``ParamTable.add_gradients``, ``measure_weights``, ``save_before`` + ``record_update``);
- attention: the attention and output-logit probe (``AttentionProbe``);
- per-layer sums: the table summed per layer (``ParamTable.add_to``);
- transfer: the ONE device-to-host copy (``TransferLayout.to_host``);
- packing: the Snapshot built in numpy (``pack_snapshot``);
- the rest: the Monitor's hooks around them (the step's norm read, the ring, the exporter).

aten ops: those a ``TorchDispatchMode`` sees (the training's own ops are not counted), per
sampled step. Time: ``time.perf_counter`` around each part, the median per step over the
steps of the quietest of a few rounds (interference on a shared machine only adds time),
and as a share of the bare training step (no monitor, timed in turn with it).

    python -m benchmarks.sampled_cost [--output docs/benchmarks.md]
    python -m benchmarks.sampled_cost --smoke   # tiny models, a few steps
"""

from __future__ import annotations

import functools
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field

from torch.utils._python_dispatch import TorchDispatchMode

from gradwatch.monitor import Monitor
from gradwatch.monitor.capture import sampled_step as sample
from gradwatch.monitor.probes.attention import AttentionProbe
from gradwatch.monitor.probes.param_table import ParamTable
from gradwatch.monitor.probes.record_batches import RecordBatches
from gradwatch.monitor.probes.forward_hooks import ForwardTracer
from gradwatch.monitor.probes.transfer import TransferLayout

from . import step_cost
from .cardinality import section_main
from .models import ModelSpec, ReferenceModule, cpu_models

SECTION = "## Cost of a sampled step, part by part"
STEPS, ROUNDS = 10, 3
SMOKE_STEPS, SMOKE_ROUNDS = 2, 1
REST = "the rest"
#: part -> the methods it is made of, as (owner, attribute)
PARTS = {
    "activation records": ((ForwardTracer, "_on_forward"), (RecordBatches, "flush")),
    "activation combine": ((ForwardTracer, "finish"),),
    "gradient stats": ((ParamTable, "add_gradients"),),
    "weight stats": ((ParamTable, "measure_weights"),),
    "update stats": ((ParamTable, "save_before"), (ParamTable, "record_update")),
    "attention": ((AttentionProbe, "_record"), (AttentionProbe, "_on_head"),
                  (AttentionProbe, "values")),
    "per-layer sums": ((ParamTable, "add_to"),),
    "transfer": ((TransferLayout, "to_host"),),
    "packing": ((sample, "pack_snapshot"),),
    REST: ((Monitor, "begin_step"), (Monitor, "observe_loss"), (Monitor, "observe_gradients"),
           (Monitor, "end_step"), (Monitor, "_before_optimizer_step"),
           (Monitor, "_after_optimizer_step")),
}


#: aten ops per sampled step before the fusing (issue 18, item 3; main of 2026-12-02),
#: by model and part: op counts are the same on any machine
BEFORE_OPS = {
    "mlp": (475, 56, 3, 89, 265, 12, 43, 4, 0, 64),
    "transformer": (292, 56, 3, 129, 381, 51, 43, 4, 0, 85),
    "cnn": (119, 56, 3, 30, 81, 12, 43, 4, 0, 28),
}


#: Issue 18 item 3 as measured: the code before and after each change run in turn on the
#: same machine (2 cores), medians.
BEFORE_AFTER = (
    "Before -> after (issue 18 item 3, 2026-12-02, each code before and after run in turn on "
    "the same 2-core machine; self time per sampled step, plain `gradwatch.Monitor`): "
    "(1) the fusing of small outputs' records and of the update statistics: MLP 31.6 -> 8.6 "
    "ms, transformer 30.8 -> 23.8 ms, CNN 3.2 -> 3.0 ms; (2) a large output's moments and "
    "ratios from a sample of its rows (`activation_sample`, default 2**16 values): "
    "transformer records 25.3 -> 16.0 ms; (3) the drawn rows recorded in one batch like the "
    "small outputs' copies, the attention probe's mode only inside the modules attention was "
    "found in (the whole forward on one sampled step in 10) and the update statistics under "
    "no_grad instead of a detach per parameter: MLP 7.6 -> 7.2 ms, transformer 17.2 -> 15.5 "
    "ms, CNN 3.0 -> 2.7 ms; aten ops 729 -> 627, 1505 -> 961, 344 -> 311. In Lightning "
    "(`TrainingDiagnostics(every_n_steps=1)`, 3 interleaved rounds, 2 threads) (3) took "
    "every probe on every step on the transformer from x1.27 to x1.15 (the attention mode's "
    "Python on every torch call of the forward was outside the self time), and TensorBoard's "
    "event checksums, now in C (`google-crc32c`; tensorboard without TensorFlow computes them "
    "in a Python loop, ~1 ms per Snapshot event, holding the GIL the training thread then "
    "waits for), and the in-process detectors run before the Snapshot goes to the sinks' "
    "thread, took a detector on the training thread from 2.3 to 0.8 ms per Snapshot (0.4 ms "
    "without TensorBoard).")
#: What bounds the figures (the profile above).
BOUNDS = (
    "What bounds them: on the small models, per-op cost. A small output's record is one copy "
    "at its hook; the copies of one shape are reduced together when the step ends, the next "
    "forward starts or 4M values wait (`monitor/probes/record_batches.py`: [k, n], one op per "
    "statistic), so the MLP's 32 records cost ~90 ops instead of 475. The update statistics "
    "take a BLAS dot per parameter and float arithmetic for Adam's eps count on a float32 CPU "
    "model (3 dots and 2-4 element-wise passes per parameter: the fewest found; a bool mask's "
    "sum costs twice as much). What is left is per parameter (~8 ops), per layer (combining, "
    "per-layer sums: ~100 ops per step), ~1 ms of Python in the Monitor's hooks and the "
    "in-process detectors, and 0.2 ms of packing. On the transformer, each of its 24 outputs "
    "above 2**17 values (~9M values in all) is read twice in full (min and max: exact max "
    "|x|, and on a CPU the proof that no value is NaN/Inf, else exact counts over every "
    "value; `aminmax` measured slower in the step), ~5 ops at its hook (the rows drawn by a "
    "seeded generator of the monitor's own: the global RNG and the training are untouched), "
    "and the drawn rows of all outputs are reduced as one [24, 65536] batch; those two full "
    "passes (~2.5 ms in the training's cold cache), the batch (~1.5 ms), the update "
    "statistics' passes over 0.9M parameters (~2.8 ms) and the attention logits recomputed "
    "for 4 sequences (~2.2 ms) bound it now. Below x1.10 needs ~5 ms less: a fused kernel "
    "(one read for every statistic, which eager PyTorch does not offer) or a lower bound.")


@dataclass
class Accounts(TorchDispatchMode):
    """Ops and seconds per part, each charged to the innermost part running."""

    ops: Counter[str] = field(default_factory=Counter)
    seconds: Counter[str] = field(default_factory=Counter)
    stack: list[list] = field(default_factory=list)  # [part, start, seconds of callees]

    def __post_init__(self) -> None:
        super().__init__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.stack:
            self.ops[self.stack[-1][0]] += 1
        return func(*args, **(kwargs or {}))

    def wrap(self, part: str, method):
        @functools.wraps(method)
        def charged(*args, **kwargs):
            self.stack.append([part, time.perf_counter(), 0.0])
            try:
                return method(*args, **kwargs)
            finally:
                _, start, inner = self.stack.pop()
                spent = time.perf_counter() - start
                self.seconds[part] += spent - inner
                if self.stack:
                    self.stack[-1][2] += spent
        return charged


@dataclass(frozen=True)
class SampledCost:
    model: str
    steps: int
    step_ms: float  # bare training step, median
    ops: dict[str, float]  # per sampled step, by part
    ms: dict[str, float]  # per sampled step, by part (median, of the quietest round)

    @property
    def total_ops(self) -> float:
        return sum(self.ops.values())

    @property
    def total_ms(self) -> float:
        return sum(self.ms.values())


def measure(spec: ModelSpec, steps: int = STEPS, rounds: int = ROUNDS) -> SampledCost:
    """Ops and time per part of ``steps`` sampled steps of ``spec``'s model."""
    module = ReferenceModule(spec, 1)
    optimizer = module.configure_optimizers()
    batch = module.batches[0]
    accounts = Accounts()
    originals = [(owner, name, getattr(owner, name)) for methods in PARTS.values()
                 for owner, name in methods]
    for part, methods in PARTS.items():
        for owner, name in methods:
            setattr(owner, name, accounts.wrap(part, getattr(owner, name)))
    try:
        monitor = Monitor(module, every_n_steps=1, optimizers=[optimizer])
        count = 0

        def step(monitored: bool) -> None:
            nonlocal count
            if monitored:
                monitor.begin_step(count)
                count += 1
            loss = module.training_step(batch, 0)
            if monitored:
                monitor.observe_loss(loss)
            loss.backward()
            if monitored:
                monitor.observe_gradients(optimizer)
            optimizer.step()
            optimizer.zero_grad()
            if monitored:
                monitor.end_step()

        step(True)  # warm-up: the first sampled step also learns the forward order
        step(False)
        bare, per_part = [], []
        for _ in range(rounds):
            times, parts = [], []
            for _ in range(steps):
                start = time.perf_counter()
                step(False)
                times.append(time.perf_counter() - start)
                accounts.seconds.clear()
                step(True)
                parts.append(dict(accounts.seconds))
            bare.append(statistics.median(times))
            per_part.append({part: statistics.median(p.get(part, 0.0) for p in parts)
                             for part in PARTS})
        accounts.ops.clear()
        with accounts:
            for _ in range(steps):
                step(True)
        monitor.close()
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)
    quietest = min(per_part, key=lambda p: sum(p.values()))
    return SampledCost(spec.name, steps, min(bare) * 1e3,
                       {part: accounts.ops[part] / steps for part in PARTS},
                       {part: quietest[part] * 1e3 for part in PARTS})


def render(costs: list[SampledCost], before: dict[str, tuple[int, ...]] | None = None) -> str:
    """The section: per model, ops and ms per sampled step by part, and their share; with
    ``before``, the ops of each part before the fusing in brackets."""
    lines = [
        SECTION, "",
        f"`python -m benchmarks.sampled_cost`: a plain `gradwatch.Monitor` with "
        f"every_n_steps=1, {costs[0].steps} sampled steps per round, one thread of a shared "
        "machine. Per part of the sampled step: aten ops (`TorchDispatchMode`, mean per step"
        + ("; in brackets before the fusing of issue 18 item 3" if before else "")
        + ") and self time (ms, median per step of the quietest round; share of the bare "
        "step, timed in turn with it). A part's figures exclude the parts it calls.", "",
        "| part | " + " | ".join(f"{c.model} ops | {c.model} ms (share)" for c in costs) + " |",
        "| --- |" + " ---: | ---: |" * len(costs),
    ]
    for k, part in enumerate([*PARTS, "total"]):
        cells = []
        for cost in costs:
            ops = cost.total_ops if part == "total" else cost.ops[part]
            ms = cost.total_ms if part == "total" else cost.ms[part]
            old = before and before.get(cost.model)
            was = "" if not old else f" ({sum(old) if part == 'total' else old[k]})"
            cells.append(f"{ops:g}{was} | {ms:.2f} ({ms / cost.step_ms:.1%})")
        lines.append(f"| {part} | " + " | ".join(cells) + " |")
    lines += ["", "Bare step: " + ", ".join(f"{c.model} {c.step_ms:.1f} ms" for c in costs)
              + ".", ""] + ([BEFORE_AFTER, ""] if before else []) + [BOUNDS]
    return "\n".join(lines) + "\n"


def measured_section(smoke: bool = False) -> str:
    steps, rounds = (SMOKE_STEPS, SMOKE_ROUNDS) if smoke else (STEPS, ROUNDS)
    return render([measure(spec, steps, rounds) for spec in cpu_models(smoke)],
                  None if smoke else BEFORE_OPS)


def main(argv: list[str] | None = None) -> str:
    return section_main(argv, __doc__, measured_section, "tiny models, a few steps", step_cost.SECTION)


if __name__ == "__main__":
    main()
