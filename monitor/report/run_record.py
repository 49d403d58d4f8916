"""Reading a gradwatch run back from its TensorBoard event files, as plain data.

The report is built from what TrainingDiagnostics wrote (`monitor.tensorboard`), read with
TensorBoard's own `EventAccumulator`, so it shows exactly what TensorBoard would. A folder
reused by several runs (the demo run twice) is read as TensorBoard's restart rule reads it:
the latest run's events replace the earlier runs' from its first step on (`latest_run`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..records.fields import LAYER_GAUGES, TAG_PREFIX
from ..records.regimes import NONFINITE, worst
from ..records.snapshot import NONFINITE_SOURCES
from ..sinks.tensorboard import (
    ALERTS_TAG,
    LAYER_RUNS_DIR,
    LAYERS_TAG,
    LOG10_PREFIX,
    parse_fenced_json,
)

EVENT_FILE_PREFIX = "events.out.tfevents"
#: torch's SummaryWriter.add_text stores text under ``<tag>/text_summary``.
TEXT_SUFFIX = "/text_summary"


class NoGradwatchData(ValueError):
    """The directory holds no gradwatch data (the message says what it found instead)."""


@dataclass(frozen=True)
class Series:
    """One per-step figure: values at steps, in step order (NaN and Inf are real values)."""

    steps: np.ndarray
    values: np.ndarray


@dataclass(frozen=True)
class RunRecord:
    """Everything gradwatch wrote for one run.

    Attributes:
        name: ``<parent>/<dir>`` of the run directory, e.g. ``lightning_logs/version_0``.
        path: the run directory.
        layers: layer names in depth order, input first.
        sampled_steps: the steps with per-layer statistics, ascending.
        statistics: per-layer statistic (a ``LAYER_GAUGES`` name) -> matrix
            [layer x sampled step]; NaN where no value was written (the sink writes no NaN,
            so NaN means "not measured or NaN"); +-Inf are measured values.
        series: per-step figures by tag without the ``gradwatch/`` prefix: ``loss``,
            ``global_grad_norm``, ``clipped_grad_norm``, ``loss_scale``,
            ``learning_rate/<opt>/<group>``, ``nonfinite/<source>``, ``overhead_seconds``.
        alerts: alert events (dicts with name, severity, status, step, layers, regime, ...),
            in step order.
        replaced_runs: earlier runs in the same folder whose events from the latest run's
            first step on were replaced by the latest run's (0: the folder held one run).
    """

    name: str
    path: Path
    layers: tuple[str, ...]
    sampled_steps: np.ndarray
    statistics: dict[str, np.ndarray]
    series: dict[str, Series]
    alerts: tuple[dict, ...]
    replaced_runs: int = 0

    @property
    def steps(self) -> np.ndarray:
        """Every step that has any gradwatch value, ascending."""
        all_steps = [self.sampled_steps] + [s.steps for s in self.series.values()]
        all_steps += [np.asarray([a["step"]]) for a in self.alerts
                      if isinstance(a.get("step"), int)]
        return np.unique(np.concatenate(all_steps)).astype(int)

    def nonfinite_steps(self, source: str) -> np.ndarray:
        """Steps where non-finite values of ``source`` were recorded: ``loss`` (every step),
        or ``gradient``, ``activation``, ``parameter`` (sampled steps)."""
        if source == "loss":
            loss = self.series.get("loss", Series(np.zeros(0, int), np.zeros(0)))
            return loss.steps[~np.isfinite(loss.values)]
        counts = self.series.get(f"nonfinite/{source}", Series(np.zeros(0, int), np.zeros(0)))
        return counts.steps[counts.values > 0]

    @property
    def verdict(self) -> str:
        """The worst regime (``REGIMES`` order) the alerts reported, or ``nonfinite`` when
        non-finite values were recorded whatever the alerts say; ``healthy`` otherwise."""
        seen = [a.get("regime") for a in self.alerts]
        if any(len(self.nonfinite_steps(source)) for source in NONFINITE_SOURCES + ("loss",)):
            seen.append(NONFINITE)
        return worst(seen)


def find_runs(path: str | os.PathLike) -> list[Path]:
    """Directories at or below ``path`` holding TensorBoard event files, sorted; a run's
    layer runs (its ``layers/`` folder: TensorBoard's colours) are part of it, no runs."""
    runs = []
    for directory, folders, files in os.walk(path):
        if any(f.startswith(EVENT_FILE_PREFIX) for f in files):
            runs.append(Path(directory))
            if LAYER_RUNS_DIR in folders:
                folders.remove(LAYER_RUNS_DIR)
    return sorted(runs)


def load_run(run_dir: str | os.PathLike) -> RunRecord:
    """Reads one run directory (e.g. ``lightning_logs/version_0``).

    Raises:
        NoGradwatchData: not a directory, no event files in it (naming the runs below it,
            if any), or event files without gradwatch tags.
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise NoGradwatchData(f"{path}: not a directory")
    if not any(f.name.startswith(EVENT_FILE_PREFIX) for f in path.iterdir()):
        below = [str(r.relative_to(path)) for r in find_runs(path)]
        hint = f"; runs below it: {', '.join(below[:10])}" if below else ""
        raise NoGradwatchData(f"{path}: no TensorBoard event files{hint}")
    files = [_read_events(file) for file in sorted(path.glob(EVENT_FILE_PREFIX + "*"))
             if file.is_file()]
    files = [f for f in files if f.scalars or f.texts]
    if not files:
        raise NoGradwatchData(f"{path}: TensorBoard event files without gradwatch data "
                              f"(no {TAG_PREFIX}* tags; was TrainingDiagnostics in the callbacks?)")
    latest, replaced_runs = latest_run(files)

    per_layer: dict[str, dict[str, dict[int, float]]] = {name: {} for name in LAYER_GAUGES}
    series: dict[str, Series] = {}
    for tag, events in latest.scalars.items():
        statistic, _, layer = tag.removeprefix(TAG_PREFIX).partition("/")
        if statistic in LAYER_GAUGES and layer:
            per_layer[statistic][layer] = events
        elif not statistic.startswith(LOG10_PREFIX):   # log10 tags: copies for TensorBoard
            steps = np.asarray(sorted(events), dtype=int)
            series[tag.removeprefix(TAG_PREFIX)] = Series(
                steps, np.asarray([events[s] for s in steps], dtype=float))

    texts = latest.texts
    seen_layers = {layer for by_layer in per_layer.values() for layer in by_layer}
    layers = _depth_order(texts.get(LAYERS_TAG, []), seen_layers)
    sampled_steps = np.asarray(sorted({step for by_layer in per_layer.values()
                                       for events in by_layer.values() for step in events}),
                               dtype=int)
    column = {int(step): j for j, step in enumerate(sampled_steps)}
    row = {layer: i for i, layer in enumerate(layers)}
    statistics = {}
    for statistic, by_layer in per_layer.items():
        matrix = np.full((len(layers), len(sampled_steps)), np.nan)
        for layer, events in by_layer.items():
            for step, value in events.items():
                matrix[row[layer], column[step]] = value
        statistics[statistic] = matrix
    alerts = [a for _, a in texts.get(ALERTS_TAG, []) if isinstance(a, dict)]
    alerts.sort(key=lambda a: a["step"] if isinstance(a.get("step"), int) else -1)
    name = f"{path.resolve().parent.name}/{path.resolve().name}"
    return RunRecord(name, path, layers, sampled_steps, statistics, series, tuple(alerts),
                     replaced_runs)


@dataclass
class EventFile:
    """gradwatch events by tag and step, of one event file (one writer) or of a run."""

    scalars: dict[str, dict[int, float]] = field(default_factory=dict)
    texts: dict[str, list[tuple[int, object]]] = field(default_factory=dict)
    first_time: float = math.inf   # wall times of the first and last gradwatch event
    last_time: float = -math.inf

    @property
    def first_step(self) -> int:
        steps = [min(events) for events in self.scalars.values() if events]
        steps += [step for events in self.texts.values() for step, _ in events]
        return min(steps, default=0)

    def drop_from(self, step: int) -> bool:
        """Drops every event at or after ``step``; True when there was one."""
        before = self._count()
        self.scalars = {tag: {s: v for s, v in events.items() if s < step}
                        for tag, events in self.scalars.items()}
        self.texts = {tag: [(s, v) for s, v in events if s < step]
                      for tag, events in self.texts.items()}
        return self._count() < before

    def add(self, other: EventFile) -> None:
        """Adds ``other``'s events; at a step both have, ``other``'s value wins."""
        for tag, events in other.scalars.items():
            self.scalars.setdefault(tag, {}).update(events)
        for tag, entries in other.texts.items():
            self.texts[tag] = sorted(self.texts.get(tag, []) + entries, key=lambda e: e[0])
        self.first_time = min(self.first_time, other.first_time)
        self.last_time = max(self.last_time, other.last_time)

    def _count(self) -> int:
        return (sum(map(len, self.scalars.values())) + sum(map(len, self.texts.values())))


def latest_run(files: list[EventFile]) -> tuple[EventFile, int]:
    """The events of a folder's latest run, and how many earlier runs it replaced events of.

    Writers whose events overlap in time are one run (the logger's writer and a second one,
    ranks writing into one folder). A later run replaces the earlier runs' events at and
    after its first step, as TensorBoard's restart rule does: a rerun from step 0 replaces
    them all (a reused folder reports its latest run alone), a run resumed from a checkpoint
    at step k keeps the history before k.
    """
    runs: list[EventFile] = []
    for file in sorted(files, key=lambda f: f.first_time):
        if not runs or file.first_time > runs[-1].last_time:
            runs.append(EventFile())
        runs[-1].add(file)
    merged, replaced = EventFile(), 0
    for run in runs:
        replaced += merged.drop_from(run.first_step)
        merged.add(run)
    return merged, replaced


def _read_events(file: Path) -> EventFile:
    """The gradwatch scalars and texts of one event file, read with TensorBoard's reader."""
    from tensorboard.backend.event_processing.event_accumulator import (
        SCALARS,
        TENSORS,
        EventAccumulator,
    )

    # Size 0 keeps every event (the default keeps a sample); no purging, so an alert
    # written after the fact (behind the latest scalars' step) is kept.
    accumulator = EventAccumulator(str(file), size_guidance={SCALARS: 0, TENSORS: 0},
                                   purge_orphaned_data=False)
    accumulator.Reload()
    tags = accumulator.Tags()
    read, times = EventFile(), []
    for tag in (t for t in tags["scalars"] if t.startswith(TAG_PREFIX)):
        events = accumulator.Scalars(tag)
        read.scalars[tag] = {e.step: e.value for e in events}   # a rewrite wins
        times += [e.wall_time for e in events[:1] + events[-1:]]
    for stored in tags["tensors"]:
        if stored.removesuffix(TEXT_SUFFIX) in (LAYERS_TAG, ALERTS_TAG):
            read.texts[stored.removesuffix(TEXT_SUFFIX)] = _texts(accumulator, stored)
            times += [e.wall_time for e in accumulator.Tensors(stored)]
    if times:
        read.first_time, read.last_time = min(times), max(times)
    return read


def _texts(accumulator, tag: str) -> list[tuple[int, object]]:
    """(step, parsed JSON) of each text event of ``tag``; unparseable events are skipped."""
    parsed = []
    for event in accumulator.Tensors(tag):
        for raw in event.tensor_proto.string_val:
            try:
                parsed.append((event.step, parse_fenced_json(raw.decode("utf-8"))))
            except (ValueError, UnicodeDecodeError):
                continue  # someone else's text under our tag: not ours to show
    return parsed


def _depth_order(layer_lists: list[tuple[int, object]], seen: set[str]) -> tuple[str, ...]:
    """The latest written depth order, then any layer only seen in scalar tags (by name)."""
    latest = next((names for _, names in reversed(layer_lists)
                   if isinstance(names, list) and all(isinstance(n, str) for n in names)), [])
    ordered = list(dict.fromkeys(latest))
    return tuple(ordered + sorted(seen - set(ordered)))
