"""Overhead benchmark of gradwatch (issue 6): what leaving it on costs, next to the usual tools.

Trains the reference models (benchmarks/models.py) with Lightning under every configuration
of benchmarks/configs.py, in ONE process, in interleaved rounds (a random order per round),
and reports per model the median and min-max over rounds of each configuration's step time
divided by the bare step time of the same round (rounds drift together on a noisy machine;
their ratio drifts far less). Also per step, from one extra profiled run per configuration:
host syncs (scalar reads and copies to the host) on gradwatch's sampled and other steps,
and aten ops added to the bare run; and gradwatch's self-timed share of the step time.
Then, on a CPU, the floor under "every probe on every step" (benchmarks/floor.py), and the
scale figures (benchmarks/scale.py), the series at fleet scale (benchmarks/cardinality.py),
the cost of a sampled step part by part (benchmarks/sampled_cost.py), the fixed cost of an
unsampled step (benchmarks/step_cost.py) and of one that clips by norm
(benchmarks/clip_cost.py). Writes a markdown report.

    PYTHONPATH=. python benchmarks/overhead.py                 # CPU, ~15 min -> docs/benchmarks.md
    PYTHONPATH=. python benchmarks/overhead.py --smoke         # seconds, tiny, -> a temp file
    PYTHONPATH=. python benchmarks/overhead.py --device cuda   # GPT-2-small class, bf16
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import lightning
import torch

from benchmarks import (cardinality, clip_cost, floor, gpu, instability, lightning_step, report,
                        sampled_cost, scale, step_cost)
from benchmarks.configs import BARE, CONFIGS, Config
from benchmarks.models import ModelSpec, cpu_models, gpu_models
from benchmarks.runner import Measured, run

DEFAULT_OUTPUT = Path("docs/benchmarks.md")


@dataclass(frozen=True)
class Plan:
    """How much to run: sizes, rounds and windows."""

    models: list[ModelSpec]
    device: str
    rounds: int
    warmup: int
    steps: int  # timed steps: a multiple of gradwatch's default every_n_steps (50)
    short_warmup: int  # for configurations whose cost dwarfs the noise (Config.short_window)
    short_steps: int
    scale_layers: int
    memory_steps: int


def make_plan(args: argparse.Namespace) -> Plan:
    if args.smoke:
        # one model: Trainer set-up dominates a smoke run and the test must stay ~30 s
        return Plan(cpu_models(smoke=True)[:1], "cpu", args.rounds or 1, warmup=1, steps=3,
                    short_warmup=1, short_steps=2, scale_layers=20, memory_steps=200)
    models = gpu_models() if args.device == "cuda" else cpu_models()
    return Plan(models, args.device, args.rounds or 7, warmup=3, steps=50, short_warmup=2,
                short_steps=5, scale_layers=1000, memory_steps=20_000)


def window(plan: Plan, config: Config, spec: ModelSpec) -> dict:
    if config.short_window:
        return {"warmup": plan.short_warmup, "steps": plan.short_steps}
    return {"warmup": plan.warmup, "steps": plan.steps * spec.windows}


def timed_rounds(plan: Plan, configs: list[Config], seed: int) -> dict[tuple[str, str], list]:
    """Per (model, config), one Measured per round; the order is shuffled in each round."""
    shuffle = random.Random(seed)
    results: dict[tuple[str, str], list[Measured]] = {}
    for round_number in range(plan.rounds):
        for spec in plan.models:
            order = list(configs)
            shuffle.shuffle(order)
            for config in order:
                started = time.perf_counter()
                measured = run(spec, config, device=plan.device, **window(plan, config, spec))
                results.setdefault((spec.name, config.name), []).append(measured)
                log(f"round {round_number + 1}/{plan.rounds} {spec.name:12s} "
                    f"{config.name:22s} {measured.step_seconds * 1e3:9.2f} ms/step "
                    f"(run {time.perf_counter() - started:.1f} s)")
    return results


def profiled(plan: Plan, configs: list[Config]) -> dict[tuple[str, str], Measured]:
    """One profiled run per (model, config): host syncs and aten ops per step."""
    return {(spec.name, config.name): run(spec, config, device=plan.device, profiled=True,
                                          **window(plan, config, spec))
            for spec in plan.models for config in configs}


def summarize(plan: Plan, configs: list[Config], timed, counted) -> list[report.Row]:
    """One report row per (model, config): ratios to the bare run of the same round."""
    rows = []
    for spec in plan.models:
        bare = timed[(spec.name, BARE)]
        bare_counts = counted[(spec.name, BARE)]
        for config in configs:
            rounds = timed[(spec.name, config.name)]
            ratios = [m.step_seconds / b.step_seconds for m, b in zip(rounds, bare)]
            shares = [m.monitor_share for m in rounds if m.monitor_share is not None]
            counts = counted[(spec.name, config.name)]
            rows.append(report.Row(
                model=spec.name,
                config=config.name,
                step_ms=statistics.median(m.step_seconds for m in rounds) * 1e3,
                ratio=statistics.median(ratios),
                ratio_low=min(ratios),
                ratio_high=max(ratios),
                monitor_share=statistics.median(shares) if shares else None,
                syncs_sampled=_added(counts.syncs_sampled, bare_counts.syncs_other),
                syncs_other=_added(counts.syncs_other, bare_counts.syncs_other),
                ops_added=counts.aten_ops - bare_counts.aten_ops,
                short_window=config.short_window,
            ))
    return rows


def _added(value: float | None, bare: float | None) -> float | None:
    return None if value is None else value - (bare or 0.0)


def environment(command: str, plan: Plan) -> dict[str, str]:
    """Machine, versions, command and date for the report header."""
    device = torch.cuda.get_device_name() if plan.device == "cuda" else cpu_model()
    return {
        "machine": f"{device}, {os.cpu_count()} CPU cores, {platform.system()} "
                   f"{platform.machine()}",
        "versions": f"python {platform.python_version()}, torch {torch.__version__}, "
                    f"lightning {lightning.__version__}",
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def own_process_section(benchmark: ModuleType, smoke: bool) -> str:
    """The section a per-part benchmark measures with its own command, in a fresh
    interpreter: measured in this one, after the runs above, their Python figures came out
    about 2x their own command's."""
    command = [sys.executable, "-m", benchmark.__name__] + (["--smoke"] if smoke else [])
    root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH"))))
    done = subprocess.run(command, cwd=root, env={**os.environ, "PYTHONPATH": path},
                          capture_output=True, text=True, check=True)
    return done.stdout[done.stdout.index(benchmark.SECTION):].removesuffix("\n")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, one round, a few steps (for the test suite)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 7; smoke 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-round order")
    parser.add_argument("--output", type=Path,
                        help=f"markdown report (default {DEFAULT_OUTPUT}; smoke: a temp file)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    for name in ("lightning.pytorch", "lightning.pytorch.utilities.rank_zero",
                 "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.ERROR)  # set-up banners, once per run
    plan = make_plan(args)
    configs = [c for c in CONFIGS if c.available()]
    skipped = [c.name for c in CONFIGS if not c.available()]
    started = time.perf_counter()
    timed = timed_rounds(plan, configs, args.seed)
    log("profiling one run per configuration")
    counted = profiled(plan, configs)
    log("floor: one read of what the statistics cover")
    floors = [floor.measure(spec) for spec in plan.models] if plan.device == "cpu" else []
    log("scale figures")
    figures = scale.measure(plan.scale_layers, plan.memory_steps, plan.device)
    log("fixed cost of an unsampled step")
    step_cost_section = own_process_section(step_cost, args.smoke)
    log("clipping by norm")
    clip_section = own_process_section(clip_cost, args.smoke)
    log("series at fleet scale")
    cardinality_section = cardinality.measured_section()
    log("the cost in a Lightning step, part by part")
    lightning_section = own_process_section(lightning_step, args.smoke)
    log("cost of a sampled step, part by part")
    sampled_section = (own_process_section(sampled_cost, args.smoke) + "\n"
                       if plan.device == "cpu" else "")
    rows = summarize(plan, configs, timed, counted)
    output = args.output or (Path(tempfile.mkstemp(prefix="gradwatch-bench-", suffix=".md")[1])
                             if args.smoke else DEFAULT_OUTPUT)
    command = "PYTHONPATH=. python benchmarks/overhead.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    text = report.markdown(environment(command.strip(), plan), plan, configs, skipped, rows,
                           floors, figures, time.perf_counter() - started)
    output.parent.mkdir(parents=True, exist_ok=True)
    bounds = report.kept_section(output, lightning_step.BOUNDS_SECTION).lstrip("\n")
    output.write_text(f"{text}\n{cardinality_section}\n{lightning_section}\n"
                      + (f"{bounds}\n" if bounds else "")
                      + f"{sampled_section}{step_cost_section}"
                      f"\n{clip_section}"
                      + report.kept_section(output, gpu.SECTION)  # measured on a GPU
                      + instability.kept_section(output))  # issue 17's section stays
    log(f"wrote {output}")
    print(output)
    return output


if __name__ == "__main__":
    main()
