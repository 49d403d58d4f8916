"""The markdown report of the overhead benchmark: header, per-model tables, budget, scale."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from .floor import Floor
from .scale import ScaleFigures

#: Targets of issue 6, by configuration: the median ratio to the bare step time.
RATIO_TARGETS = {"gradwatch-defaults": 1.02, "gradwatch-every-step": 1.15}
#: The configuration that is the floor of per-step gradient monitoring (benchmarks/configs.py).
GRAD_NORM_FLOOR = "floor-grad-norm"
RENDER_TARGET_SECONDS = 0.100
#: Traced-memory growth per step still called flat: what is alive at a sample (the last
#: sampled step's records, the export queue) moves it by a few KiB either way; a leak of one
#: small object (64 bytes) per sampled step (every 50) is 1.3 bytes per step.
MEMORY_SLACK_BYTES_PER_STEP = 1.0
#: Samples whose median is each end of the measured half (one sample is one moment's noise).
MEMORY_END_SAMPLES = 3


@dataclass
class Row:
    """One configuration on one model."""

    model: str
    config: str
    step_ms: float
    ratio: float
    ratio_low: float
    ratio_high: float
    monitor_share: float | None
    syncs_sampled: float | None  # added to the bare run, per gradwatch-sampled step
    syncs_other: float | None  # added to the bare run, per other step
    ops_added: float
    short_window: bool


def markdown(env: dict[str, str], plan, configs, skipped: list[str], rows: list[Row],
             floors: list[Floor], figures: ScaleFigures, seconds: float) -> str:
    lines = [
        "# gradwatch overhead benchmark",
        "",
        f"- machine: {env['machine']}",
        f"- versions: {env['versions']}",
        f"- command: `{env['command']}`",
        f"- date: {env['date']}; the whole run took {seconds / 60:.1f} min",
        f"- device: {plan.device}; {plan.rounds} interleaved rounds (random order per round); "
        f"per run a fresh model with the same seed; timed: {plan.steps} steady-state steps "
        f"per window ({', '.join(f'{m.name} {m.windows}' for m in plan.models)} windows) "
        f"after {plan.warmup} warm-up steps ({plan.short_steps} after {plan.short_warmup} "
        f"for the configurations marked *, whose cost dwarfs the noise)",
        "",
        "Configurations:",
        "",
        *[f"- `{c.name}`{' *' if c.short_window else ''}: {c.description}" for c in configs],
        *[f"- `{name}`: skipped (not installed)" for name in skipped],
        "",
        "Columns: **ratio** = step time / bare step time of the same round, median "
        "[min-max] over rounds; **self time** = the configuration's own time on the training "
        "thread (gradwatch: `monitor.overhead_seconds`; floor-grad-norm: its own timer) / "
        "step time, median over rounds (far less noisy than the ratio); **syncs** = host syncs (scalar reads `aten::_local_scalar_dense`"
        " + copies to the host) added to the bare run, per gradwatch-sampled step / per other "
        "step (for non-gradwatch configurations every step is an \"other\" step); "
        "**ops** = aten ops (torch.profiler) added to the bare run, per step.",
        "",
    ]
    for model in plan.models:
        lines += [f"## {model.name}: {model.description}", "",
                  "| config | ms/step | ratio | self time | syncs sampled / other | ops |",
                  "| --- | ---: | --- | ---: | ---: | ---: |"]
        for row in rows:
            if row.model == model.name:
                lines.append(
                    f"| {row.config}{' *' if row.short_window else ''} | {row.step_ms:.1f} | "
                    f"x{row.ratio:.3f} [{row.ratio_low:.3f}-{row.ratio_high:.3f}] | "
                    f"{_percent(row.monitor_share)} | {_count(row.syncs_sampled)} / "
                    f"{_count(row.syncs_other)} | {row.ops_added:+.0f} |")
        lines.append("")
    lines += (budget(rows, figures) + per_step_floor(rows) + floor_section(floors)
              + scale_section(figures))
    return "\n".join(lines) + "\n"


def budget(rows: list[Row], figures: ScaleFigures) -> list[str]:
    """Each target of issue 6 next to what was measured."""
    lines = ["## Budget", "",
             "A ratio target is met when the median ratio AND 1 + the self time are within "
             "it: the self time is spent on the training thread, so it is a lower bound of "
             "the overhead that the noise of the ratio cannot hide.", "",
             "| target | model | measured | met |", "| --- | --- | --- | --- |"]
    floor_share = {row.model: row.monitor_share for row in rows
                   if row.config == GRAD_NORM_FLOOR}
    for row in rows:
        target = RATIO_TARGETS.get(row.config)
        if target is not None:
            floor = floor_share.get(row.model)
            lines.append(f"| {row.config} <= x{target} | {row.model} | x{row.ratio:.3f} "
                         f"(self time {_percent(row.monitor_share)}"
                         + (f"; {GRAD_NORM_FLOOR}: {_percent(floor)}" if floor else "")
                         + f") | {_met(within(row, target))} |")
        if row.config.startswith("gradwatch"):
            ok = (row.syncs_sampled is None or row.syncs_sampled <= 1) and \
                (row.syncs_other or 0) == 0
            lines.append(f"| {row.config}: <= 1 sync per sampled step, 0 otherwise | "
                         f"{row.model} | {_count(row.syncs_sampled)} / "
                         f"{_count(row.syncs_other)} | {_met(ok)} |")
    render = figures.render_seconds[figures.layers]
    lines.append(f"| /metrics for {figures.layers} layers < 100 ms | synthetic | "
                 f"{render * 1e3:.1f} ms | {_met(render < RENDER_TARGET_SECONDS)} |")
    middle, last, traced, rss = memory_growth(figures)
    flat = traced < MEMORY_SLACK_BYTES_PER_STEP * (last - middle) and rss < 2 ** 20
    lines += [f"| memory flat over {figures.memory_steps} steps | small MLP | "
              f"{traced / 1024:+.1f} KiB traced, {rss / 2 ** 20:+.1f} MiB RSS from step "
              f"{middle} to {last} (medians of {MEMORY_END_SAMPLES} samples; flat: under "
              f"{MEMORY_SLACK_BYTES_PER_STEP:g} byte per step) | {_met(flat)} |",
              ""]
    return lines


def per_step_floor(rows: list[Row]) -> list[str]:
    """What the defaults cost above the floor of per-step gradient monitoring."""
    share = {(row.model, row.config): row.monitor_share for row in rows}
    models = [row.model for row in rows if row.config == GRAD_NORM_FLOOR]
    if not models:
        return []
    lines = [
        "## Floor of the always-on path",
        "",
        f"`{GRAD_NORM_FLOOR}` does only what any per-step gradient monitor must: one fused "
        "norm of the gradients per step, never read, never logged. Its self time is the "
        "floor of the defaults' per-step cost (gradwatch measures the global gradient norm "
        "every step: explosion, NaN and spike detection at the step they happen). Where the "
        "floor alone is above the target, the target cannot be met without giving that up.",
        "",
        "| model | floor self time | gradwatch-defaults self time | above the floor |",
        "| --- | ---: | ---: | ---: |",
    ]
    for model in models:
        floor = share.get((model, GRAD_NORM_FLOOR))
        defaults = share.get((model, "gradwatch-defaults"))
        above = "-" if floor is None or defaults is None else f"{(defaults - floor) * 100:+.2f} pp"
        lines.append(f"| {model} | {_percent(floor)} | {_percent(defaults)} | {above} |")
    return lines + [""]


def within(row: Row, target: float) -> bool:
    """Met only when both the median ratio AND the self time are within the target: time
    spent on the training thread is added to the step whatever the noise says, so the self
    share is a lower bound of the true overhead, and a ratio below it is noise."""
    share = row.monitor_share or 0.0
    return row.ratio <= target and 1.0 + share <= target


def memory_growth(figures: ScaleFigures) -> tuple[int, int, int, int]:
    """Growth of all traced bytes and of RSS over the second half of the run, from the
    median of its first MEMORY_END_SAMPLES samples to that of the last ones: flat means no
    growth once warm (the first half fills bounded windows and library caches; the table
    shows it). All traced, not only monitor-held: an object made by the monitor may be
    kept by any code, and the monitor-held share moves as library caches are refilled.
    Returns (the middle steps of the two ends, traced growth, RSS growth)."""
    half = figures.memory[(len(figures.memory) - 1) // 2:]
    n = min(MEMORY_END_SAMPLES, len(half) // 2) or 1
    start, end = half[:n], half[-n:]

    def median(samples, column: int) -> int:
        return int(statistics.median(s[column] for s in samples))

    return (median(start, 0), median(end, 0), median(end, 2) - median(start, 2),
            median(end, 3) - median(start, 3))


def floor_section(floors: list[Floor]) -> list[str]:
    """How far the sampled step is from one read of what its statistics cover."""
    if not floors:
        return []
    lines = [
        "## Floor of a sampled step (plain `gradwatch.Monitor`, every_n_steps=1)",
        "",
        "One read pass = one fused `torch._foreach_norm` over every traced activation, "
        "gradient and weight: what any per-layer statistic must at least read. The "
        "statistics need several such passes; the gap to the monitor's self time is "
        "per-op cost (one eager op, allocation and pass per statistic and tensor).",
        "",
        "| model | values read | bare step ms | one read pass ms (share) | "
        "monitor self time per sampled step ms (share) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for f in floors:
        lines.append(
            f"| {f.model} | {f.elements:,} | {f.step_seconds * 1e3:.1f} | "
            f"{f.read_seconds * 1e3:.2f} ({f.read_seconds / f.step_seconds:.1%}) | "
            f"{f.sampled_seconds * 1e3:.1f} ({f.sampled_seconds / f.step_seconds:.1%}) |")
    return lines + [""]


def scale_section(figures: ScaleFigures) -> list[str]:
    lines = [
        f"## Scale: {figures.layers} layers (Linear(16)+Tanh each), plain `gradwatch.Monitor`",
        "",
        f"- monitor self time of one sampled step: {figures.sampled_step_seconds * 1e3:.1f} ms "
        f"(median; other steps {figures.unsampled_step_seconds * 1e3:.2f} ms; the bare "
        f"training step {figures.bare_step_seconds * 1e3:.1f} ms)",
    ]
    for cap, seconds in figures.render_seconds.items():
        lines.append(f"- `generate_latest(sink.registry)` after a snapshot, max_layers={cap}: "
                     f"{seconds * 1e3:.1f} ms, {figures.render_bytes[cap] / 1024:.0f} KiB")
    lines += [
        "",
        f"Memory over {figures.memory_steps} steps (small MLP, every_n_steps=50, a "
        "PrometheusSink; monitor-held = bytes tracemalloc traces to allocations with the "
        "monitor package on the stack; RSS includes tensors, which tracemalloc does not see):",
        "",
        "| step | monitor-held KiB | all traced KiB | RSS MiB |",
        "| ---: | ---: | ---: | ---: |",
        *[f"| {step} | {mine / 1024:.1f} | {traced / 1024:.1f} | {rss / 2 ** 20:.1f} |"
          for step, mine, traced, rss in figures.memory],
        "",
    ]
    return lines


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def _count(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.2f}"


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def kept_section(path: Path, heading: str) -> str:
    """The section headed ``heading`` of an existing report, up to the next "## " heading
    (for a report rewritten around sections that other commands measure), or ""."""
    text = path.read_text() if path.exists() else ""
    start = text.find(heading + "\n")
    if start < 0:
        return ""
    end = text.find("\n## ", start + len(heading))
    return "\n" + text[start:end + 1 if end >= 0 else len(text)].rstrip("\n") + "\n"
