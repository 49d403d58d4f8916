"""The GPU benchmark (issue 18, item 4): gradwatch on a GPT-2-small-class decoder in bf16,
``torch.compile`` off and on, as one prepared script that ends within its time budget.

Per mode (eager; compiled with inductor), the configurations that measure gradwatch's own
cost (bare, gradwatch-defaults, gradwatch-every-step, floor-grad-norm) train a fresh model
each in interleaved rounds (a random order per round), like benchmarks/overhead.py. First one
profiled run per configuration counts, with the CUDA profiler, the device-to-host copies and
the host-blocking synchronisations (``CUDA_SYNCHRONIZATIONS``) of a window in which
gradwatch-defaults samples no step, so the difference to the bare run is what gradwatch
adds per unsampled step (target 0); gradwatch-every-step samples every step (target: its one
transfer). Then timed rounds while the budget lasts (whole rounds only). Targets: the
defaults within 1% of the bare step (median ratio and 1 + self time).

    PYTHONPATH=. python -m benchmarks.gpu [--output docs/benchmarks.md]   # a CUDA device
    PYTHONPATH=. python -m benchmarks.gpu --smoke     # seconds, on the CPU: the code paths
    benchmarks/gpu.sh                                 # on a lent device machine (no network)
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import lightning
import torch

from . import instability
from .cardinality import write_section
from .configs import BARE, CONFIGS, Config
from .models import ModelSpec, TokenModel, gpu_models, token_batch, token_loss
from .runner import Measured, run

SECTION = "## GPU: GPT-2-small class, bf16, torch.compile off and on"
CONFIG_NAMES = (BARE, "gradwatch-defaults", "gradwatch-every-step", "floor-grad-norm")
DEFAULTS, EVERY_STEP = "gradwatch-defaults", "gradwatch-every-step"
#: the smoke run's: each code path once (floor-grad-norm takes the same as bare)
SMOKE_CONFIG_NAMES = (BARE, DEFAULTS, EVERY_STEP)
TARGET_RATIO = 1.01
#: The whole run's budget (issue 18: <= 8 minutes), the set-up of the last round included.
BUDGET_SECONDS = 420.0


@dataclass(frozen=True)
class GpuPlan:
    spec: ModelSpec
    device: str
    modes: dict[str, str | None]  # mode -> torch.compile backend (None: eager)
    max_rounds: int
    warmup: int
    steps: int  # timed steps: a multiple of gradwatch's default every_n_steps (50)
    sync_warmup: int
    sync_steps: int  # the profiled window: no step of it sampled at every_n_steps=50
    budget_seconds: float


def make_plan(smoke: bool) -> GpuPlan:
    if smoke:
        spec = ModelSpec("decoder-tiny", "2-layer causal decoder, d_model 32, seq 16, batch 4, "
                         "AdamW, float32 on the CPU", lambda: TokenModel(64, 16, 32, 2, 2,
                                                                          causal=True),
                         token_batch(4, 16, 64), token_loss,
                         lambda p: torch.optim.AdamW(p, lr=3e-4))
        return GpuPlan(spec, "cpu", {"eager": None, "compiled": "eager"}, max_rounds=1,
                       warmup=1, steps=3, sync_warmup=1, sync_steps=3, budget_seconds=60)
    return GpuPlan(gpu_models()[0], "cuda", {"eager": None, "compiled": "inductor"},
                   max_rounds=5, warmup=3, steps=50, sync_warmup=3, sync_steps=40,
                   budget_seconds=BUDGET_SECONDS)


@dataclass
class ModeResult:
    mode: str
    counted: dict[str, Measured]
    timed: dict[str, list[Measured]]


def measure(plan: GpuPlan, configs: list[Config], seed: int = 0) -> list[ModeResult]:
    """Per mode: the profiled runs, then timed rounds while the budget lasts."""
    started = time.perf_counter()
    shuffle = random.Random(seed)
    results = []
    for number, (mode, backend) in enumerate(plan.modes.items()):
        counted = {c.name: run(plan.spec, c, device=plan.device, profiled=True,
                               warmup=plan.sync_warmup, steps=plan.sync_steps,
                               compile_backend=backend) for c in configs}
        # this mode's share of what is left, so that every later mode gets its rounds too
        deadline = started + plan.budget_seconds * (number + 1) / len(plan.modes)
        timed: dict[str, list[Measured]] = {c.name: [] for c in configs}
        round_seconds = 0.0
        for round_number in range(plan.max_rounds):
            if round_number and time.perf_counter() + round_seconds > deadline:
                break
            round_start = time.perf_counter()
            order = list(configs)
            shuffle.shuffle(order)
            for config in order:
                timed[config.name].append(run(plan.spec, config, device=plan.device,
                                              warmup=plan.warmup, steps=plan.steps,
                                              compile_backend=backend))
            round_seconds = time.perf_counter() - round_start
            print(f"{mode}: round {round_number + 1} in {round_seconds:.0f} s", file=sys.stderr,
                  flush=True)
        results.append(ModeResult(mode, counted, timed))
    return results


def render(plan: GpuPlan, results: list[ModeResult], seconds: float, command: str) -> str:
    device = (torch.cuda.get_device_name() if plan.device == "cuda"
              else "no GPU: the CPU smoke run, counts of the CUDA profiler not taken")
    cuda = f" (CUDA {torch.version.cuda})" if torch.version.cuda else ""
    lines = [
        SECTION, "",
        f"- device: {device}; torch {torch.__version__}{cuda}, lightning "
        f"{lightning.__version__}",
        f"- command: `{command}`; date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"the run took {seconds / 60:.1f} min",
        f"- model: {plan.spec.description}; modes: "
        + ", ".join(f"{m} ({'torch.compile, ' + b if b else 'no torch.compile'})"
                    for m, b in plan.modes.items()),
        f"- timed: {plan.steps} steps after {plan.warmup} warm-up steps per run, interleaved "
        f"rounds while the {plan.budget_seconds / 60:.0f}-minute budget lasts; counted: one "
        f"run per configuration, steps {plan.sync_warmup}-{plan.sync_warmup + plan.sync_steps - 1}"
        f" (gradwatch-defaults samples none of them; gradwatch-every-step all)",
        "",
        "Columns: **ratio** = step time / bare step time of the same round, median [min-max]; "
        "**self time** = gradwatch's own time on the training thread / step time; **DtoH**, "
        "**syncs** = device-to-host copies and host-blocking CUDA synchronisations "
        "(torch.profiler) per step, added to the bare run's; **host reads** = scalar reads "
        "and host copies seen at the aten level, added per step.", "",
        "| mode | config | rounds | ms/step | ratio | self time | DtoH | syncs | host reads |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    budget = []
    for result in results:
        bare_rounds = result.timed[BARE]
        bare_counts = result.counted[BARE]
        for name, rounds in result.timed.items():
            ratios = [m.step_seconds / b.step_seconds for m, b in zip(rounds, bare_rounds)]
            shares = [m.monitor_share for m in rounds if m.monitor_share is not None]
            counts = result.counted[name]
            reads = _added(counts.syncs_sampled if name == EVERY_STEP else counts.syncs_other,
                           bare_counts.syncs_other)
            share = statistics.median(shares) if shares else None
            lines.append(
                f"| {result.mode} | {name} | {len(rounds)} | "
                f"{statistics.median(m.step_seconds for m in rounds) * 1e3:.2f} | "
                f"x{statistics.median(ratios):.3f} [{min(ratios):.3f}-{max(ratios):.3f}] | "
                f"{_percent(share)} | {_number(_added(counts.device_to_host, bare_counts.device_to_host))} | "
                f"{_number(_added(counts.synchronizations, bare_counts.synchronizations))} | "
                f"{_number(reads)} |")
            if name == DEFAULTS:
                ratio = statistics.median(ratios)
                met = ratio <= TARGET_RATIO and (share is None or 1 + share <= TARGET_RATIO)
                budget.append(f"| {result.mode} | gradwatch-defaults <= x{TARGET_RATIO:g} | "
                              f"x{ratio:.3f} (self time {_percent(share)}) | {_met(met)} |")
                added = [_added(counts.device_to_host, bare_counts.device_to_host),
                         _added(counts.synchronizations, bare_counts.synchronizations)]
                known = [a for a in added if a is not None]
                budget.append(f"| {result.mode} | 0 DtoH copies and syncs per unsampled step | "
                              f"{' / '.join(_number(a) for a in added)} | "
                              f"{_met(all(a <= 0 for a in known)) if known else '-'} |")
    lines += ["", "| mode | target | measured | met |", "| --- | --- | --- | --- |", *budget]
    return "\n".join(lines) + "\n"


def _added(value: float | None, bare: float | None) -> float | None:
    return None if value is None else value - (bare or 0.0)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def _met(met: bool) -> str:
    return "yes" if met else "**no**"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help="the tiny CPU run of every code path (for the test suite)")
    parser.add_argument("--output", type=Path, help="write the section into this Markdown file")
    options = parser.parse_args(argv)
    plan = make_plan(options.smoke)
    if plan.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmarks.gpu: no CUDA device here (--smoke runs on the CPU)")
    names = SMOKE_CONFIG_NAMES if options.smoke else CONFIG_NAMES
    configs = [c for c in CONFIGS if c.name in names]
    started = time.perf_counter()
    results = measure(plan, configs)
    command = "PYTHONPATH=. python -m benchmarks.gpu " + " ".join(
        sys.argv[1:] if argv is None else argv)
    section = render(plan, results, time.perf_counter() - started, command.strip())
    if options.output:
        write_section(options.output, section, before=instability.SECTION)
    print(section)
    return section


if __name__ == "__main__":
    main()
