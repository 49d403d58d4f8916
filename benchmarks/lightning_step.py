"""The callback's cost where users pay it (issue 29): inside a real Lightning step.

Three models whose bare steps span the range people train on a CPU (~2 ms, ~10 ms, ~100
ms). In each round the bare run, an empty callback (the four hooks gradwatch uses, doing
nothing: what Lightning's own dispatch of a callback costs), the floor (one fused norm of the
gradients per step, never read), gradwatch at its defaults (TensorBoard off, no endpoint: what every step pays) and
gradwatch sampling every step (``every_n_steps=1``: every probe, every step) run in turn, the
order rotated from round to round; each is timed over its steady-state window
(``benchmarks.runner``: Trainer set-up and warm-up excluded). A ratio is a run's step time
over the bare run's of the same round: median [min-max] over rounds. A sampled step's own
cost follows from the two gradwatch runs of a round: every step sampled costs U + S, the
defaults U + S / 50, so S = (every-step - defaults) x 50 / 49.

Then one more gradwatch run per model, in the same setting, breaks its time down by part
(``PartClock``): each callback hook, the stopwatch's own calls, the ring's drains, each
detector, the sampled steps (amortised per step) and the init audit, in microseconds per
step. Parts nest (the drains run inside the hooks, the detectors inside the drains), so the
hooks' sum is the total; the clock's own calls (~0.1 us each) are inside what they time.

    python -m benchmarks.lightning_step [--output docs/benchmarks.md]
    python -m benchmarks.lightning_step --smoke   # one round, a few steps, for CI
"""

from __future__ import annotations

import functools
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl

from gradwatch import TrainingDiagnostics
from gradwatch.monitor.probes.overhead import Stopwatch, timed

from . import step_cost
from .cardinality import section_main
from .configs import BARE, CONFIGS, Config
from .models import CpuSizes, ModelSpec, cpu_models
from .runner import run

SECTION = "## The cost in a Lightning step"
#: Written by hand from the measurements (docs/benchmarks.md): kept by a rewrite of the file
BOUNDS_SECTION = "## What bounds the cost in a Lightning step (issue 29)"
ROUNDS = 5
OWN_TIME_ROUNDS = 3
#: gradwatch's sampling window at its defaults: a timed window of whole windows, starting on
#: a sampled step, holds exactly its share of sampled steps (step 0 is in the warm-up)
WINDOW = 50
WARMUP = WINDOW
SMOKE_WARMUP, SMOKE_STEPS = 3, 6
HOOKS = ("on_train_batch_start", "on_before_backward", "on_before_optimizer_step",
         "on_train_batch_end")
FLOOR = "floor-grad-norm"


#: bare steps of ~2 ms, ~10 ms and ~100 ms on this CPU (measured 2026-12-07); timed
#: windows: whole sampling windows, about as many seconds for each model
SIZES = CpuSizes(width=64, depth=6, batch=64, seq=32, image=32, windows=(12, 1, 3))


def models(smoke: bool = False) -> list[ModelSpec]:
    """The three models (``smoke``: tiny sizes)."""
    return cpu_models(smoke, SIZES)


def user_defaults() -> TrainingDiagnostics:
    """The callback at its defaults, but for the writes of a run (TensorBoard, endpoint)."""
    return TrainingDiagnostics(tensorboard=False)


EVERY_STEP = "every-step"
EMPTY = "empty-callback"


class EmptyCallback(pl.Callback):
    """gradwatch's four per-step hooks, doing nothing: Lightning's dispatch of a callback."""

    def on_train_batch_start(self, *args: Any) -> None:
        pass

    def on_before_backward(self, *args: Any) -> None:
        pass

    def on_before_optimizer_step(self, *args: Any) -> None:
        pass

    def on_train_batch_end(self, *args: Any) -> None:
        pass

CONFIG_ORDER = (
    next(c for c in CONFIGS if c.name == BARE),
    Config(EMPTY, "a callback whose four per-step hooks do nothing",
           lambda directory: [EmptyCallback()]),
    next(c for c in CONFIGS if c.name == FLOOR),
    Config("gradwatch", "TrainingDiagnostics(tensorboard=False): every_n_steps=50, alerts on",
           lambda directory: [user_defaults()]),
    Config(EVERY_STEP, "TrainingDiagnostics(tensorboard=False, every_n_steps=1)",
           lambda directory: [TrainingDiagnostics(tensorboard=False, every_n_steps=1)]),
)


class PartClock:
    """Seconds per part of one gradwatch run, by wrapping the callback's objects in place."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, owner: Any, attribute: str, part: str) -> None:
        """Time ``owner.attribute`` (a bound method) as ``part`` from now on."""
        method = getattr(owner, attribute)

        @functools.wraps(method)
        def clocked(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds[part] += time.perf_counter() - start
                self.calls[part] += 1

        setattr(owner, attribute, clocked)

    def watch(self, diagnostics: TrainingDiagnostics) -> pl.Callback:
        """Wrap the hooks now; the Monitor's parts once it exists (a callback to add)."""
        for hook in HOOKS:
            self.wrap(diagnostics, hook, f"hook {hook}")
        self.wrap(diagnostics, "on_train_start", "start (init audit, wiring)")
        clock = self

        class WrapMonitor(pl.Callback):
            def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
                monitor, engine = diagnostics.monitor, diagnostics.engine
                assert monitor is not None
                clock.wrap(monitor._ring, "drain", "ring drains (Pulses + detectors)")
                clock.wrap(monitor._sampler, "finish", "sampled steps: transfer + packing")
                clock.wrap(monitor._sampler, "start", "sampled steps: hooks attached")
                clock.wrap(monitor.stopwatch, "add_since", "stopwatch calls")
                if engine is not None:
                    clock.detectors(engine)

        return WrapMonitor()

    def detectors(self, engine: Any) -> None:
        """Each detector's verdicts, by its class."""
        run_detector: Callable[..., Any] = engine._run

        def clocked(detector: object, judge: Callable[..., Any], *item: object) -> Any:
            start = time.perf_counter()
            try:
                return run_detector(detector, judge, *item)
            finally:
                part = f"detector {type(detector).__name__}"
                self.seconds[part] += time.perf_counter() - start
                self.calls[part] += 1

        engine._run = clocked


def breakdown(spec: ModelSpec, warmup: int, steps: int) -> tuple[dict[str, float], int]:
    """Microseconds per step by part, over a whole fit of ``warmup + steps`` steps; the
    stopwatch's calls per step."""
    clock = PartClock()
    diagnostics = user_defaults()
    config = Config("gradwatch", "", lambda directory: [diagnostics, clock.watch(diagnostics)])
    run(spec, config, warmup=warmup, steps=steps)
    total_steps = warmup + steps + 1
    per_step = {part: seconds / total_steps * 1e6 for part, seconds in clock.seconds.items()}
    per_step["stopwatch calls"] = clock.calls["stopwatch calls"] * _timed_call_seconds() * 1e6 \
        / total_steps
    return per_step, round(clock.calls["stopwatch calls"] / total_steps)


def _timed_call_seconds(calls: int = 20_000) -> float:
    """The cost of one ``timed`` wrapping around an empty body (its perf_counter pair and
    the addition), measured here."""

    class Timed:
        def __init__(self) -> None:
            self.stopwatch = Stopwatch()

        @timed
        def nothing(self) -> None:
            pass

    subject = Timed()
    start = time.perf_counter()
    for _ in range(calls):
        subject.nothing()
    return (time.perf_counter() - start) / calls


def hook_seconds(spec: ModelSpec, config: Config, warmup: int, steps: int) -> float:
    """Seconds per step the callbacks of ``config`` spend in their own per-step hooks (one
    clock per hook call, over the whole fit): the time on the training thread that the
    wall-clock ratios measure through the machine's noise. Lightning's dispatch of the hooks
    (the empty callback's cost) is outside it."""
    clock = PartClock()

    def callbacks(directory: str) -> list[pl.Callback]:
        made = config.callbacks(directory)
        for callback in made:
            for hook in HOOKS:
                if hook in vars(type(callback)):
                    clock.wrap(callback, hook, hook)
        return made

    run(spec, Config(config.name, "", callbacks), warmup=warmup, steps=steps)
    return sum(clock.seconds.values()) / (warmup + steps + 1)


def interleaved(spec: ModelSpec, rounds: int, warmup: int,
                steps: int) -> dict[str, list[float]]:
    """Step seconds per configuration, one run of each per round, the order rotated."""
    times: dict[str, list[float]] = {c.name: [] for c in CONFIG_ORDER}
    for round_index in range(rounds):
        shift = round_index % len(CONFIG_ORDER)
        for config in CONFIG_ORDER[shift:] + CONFIG_ORDER[:shift]:
            times[config.name].append(run(spec, config, warmup=warmup, steps=steps).step_seconds)
    return times


def render(results: dict[str, tuple[ModelSpec, dict[str, list[float]], dict[str, float], int]],
           rounds: int) -> str:
    lines = [SECTION, "", __doc__.split("\n\n", 1)[1].split("\n\n    python")[0].replace(
        "\n", " "), "", f"{rounds} rounds, each run timed over whole sampling windows of "
        f"{WINDOW} steps (" + ", ".join(f"{name} {spec.windows}" for name, (spec, *_) in
                                  results.items()) + "), one thread of a shared machine.", "",
        "| model | bare step (ms) | empty callback | floor | gradwatch | gradwatch - floor "
        "(us per step) | every step | a sampled step's own cost (ms) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, (spec, times, _, _) in results.items():
        bare = times[BARE]
        ratios = {c: [t / b for t, b in zip(times[c], bare)]
                  for c in (EMPTY, FLOOR, "gradwatch", EVERY_STEP)}
        beyond = statistics.median(g - f for g, f in zip(times["gradwatch"], times[FLOOR]))
        sampled = statistics.median((e - g) * WINDOW / (WINDOW - 1)
                                    for e, g in zip(times[EVERY_STEP], times["gradwatch"]))
        lines.append(f"| {name}: {spec.description} | {statistics.median(bare) * 1e3:.2f} | "
                     f"{_ratio(ratios[EMPTY])} | {_ratio(ratios[FLOOR])} | {_ratio(ratios['gradwatch'])} | "
                     f"{beyond * 1e6:+.0f} | {_ratio(ratios[EVERY_STEP])} | "
                     f"{sampled * 1e3:.2f} |")
    lines += ["", "Where gradwatch's time goes (us per step, over the whole fit):", ""]
    parts = sorted({p for _, _, per_step, _ in results.values() for p in per_step})
    lines += ["| part | " + " | ".join(results) + " |",
              "| --- |" + " ---: |" * len(results)]
    for part in parts:
        lines.append(f"| {part} | " + " | ".join(
            f"{per_step.get(part, 0.0):.1f}" for _, _, per_step, _ in results.values()) + " |")
    lines.append("| stopwatch calls per step | " + " | ".join(
        str(calls) for *_, calls in results.values()) + " |")
    return "\n".join(lines) + "\n"


def _ratio(values: list[float]) -> str:
    return f"x{statistics.median(values):.3f} [{min(values):.3f}-{max(values):.3f}]"


def own_times(spec: ModelSpec, rounds: int, warmup: int, steps: int) -> dict[str, float]:
    """Median hook seconds per step of the floor and of gradwatch, run in turn."""
    configs = [c for c in CONFIG_ORDER if c.name in (FLOOR, "gradwatch")]
    seconds: dict[str, list[float]] = {c.name: [] for c in configs}
    for _ in range(rounds):
        for config in configs:
            seconds[config.name].append(hook_seconds(spec, config, warmup, steps))
    return {name: statistics.median(values) for name, values in seconds.items()}


def measured_section(smoke: bool = False) -> str:
    rounds, warmup = (1, SMOKE_WARMUP) if smoke else (ROUNDS, WARMUP)
    results, own = {}, {}
    for spec in models(smoke):
        # whole sampling windows, about as many seconds for every model
        steps = SMOKE_STEPS if smoke else WINDOW * spec.windows
        times = interleaved(spec, rounds, warmup, steps)
        own[spec.name] = own_times(spec, min(rounds, OWN_TIME_ROUNDS), warmup, steps)
        per_step, calls = breakdown(spec, warmup, steps)
        results[spec.name] = (spec, times, per_step, calls)
    return render(results, rounds) + render_own(own)


def render_own(own: dict[str, dict[str, float]]) -> str:
    lines = ["", "The hooks' own time on the training thread (one clock per hook call, median "
             f"of {OWN_TIME_ROUNDS} runs of each, in turn): what the ratios above measure "
             "through the machine's noise, without Lightning's dispatch of the hooks (the "
             "empty callback's column).", "",
             "| model | floor (us per step) | gradwatch (us per step) | gradwatch - floor |",
             "| --- | ---: | ---: | ---: |"]
    for name, seconds in own.items():
        floor, gradwatch = seconds[FLOOR] * 1e6, seconds["gradwatch"] * 1e6
        lines.append(f"| {name} | {floor:.1f} | {gradwatch:.1f} | {gradwatch - floor:+.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    return section_main(argv, __doc__, measured_section, "one round, a few steps, for CI",
                        step_cost.SECTION)


if __name__ == "__main__":
    main()
