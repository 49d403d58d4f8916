"""A TensorBoard run per charted layer, so that a chart's lines get colours of their own.

TensorBoard colours a line by its run, never by its tag (Time Series, Scalars and Custom
Scalars alike; the last two give the runs, in the order of the run list, the colours of a
7-colour palette), so the layers of one run charted together share one colour. Here each
charted layer is a run of its own, ``<run>/layers/<depth>-<layer>`` (depth: its position,
1 for the input side), whose figures are tagged by depth group,
``gradwatch_layers/<statistic>/layers <first>-<last>`` (log10 for the statistics that span
decades): a chart of such a tag shows up to `LAYERS_PER_CHART` runs, each its own colour,
and the same depth group of several runs (the demo's four) in one chart, told apart by the
run names. At most `MAX_LAYER_RUNS` layers are charted (evenly spread over depth, the first
and last included): the run's own ``gradwatch/<statistic>/<layer>`` tags keep every layer.
The event files are written here, one record per layer and sampled step, with no thread of
their own (the sinks run on the export thread).
"""

from __future__ import annotations

import itertools
import math
import os
import re
import socket
import time
from pathlib import Path

from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.record_writer import RecordWriter

from ..records.fields import LAYER_GAUGES
from ..records.snapshot import Snapshot

LAYER_RUNS_DIR = "layers"
LAYER_TAG_PREFIX = "gradwatch_layers/"
LOG10_PREFIX = "log10_"
#: Per-layer statistics charted as log10 (they span decades).
LOG10_STATISTICS = ("grad_norm", "update_ratio", "activation_variance")
#: Lines (layers) per chart: fewer than the palette's 7 colours, so none repeats.
LAYERS_PER_CHART = 4
#: The most layers charted as runs: 16 charts per statistic.
MAX_LAYER_RUNS = 64
#: numbers the event files this process opens (two in one folder in one second differ)
_FILE_NUMBERS = itertools.count()


def shown(statistic: str) -> str:
    """The name a statistic is charted under (log10 where it spans decades)."""
    return f"{LOG10_PREFIX}{statistic}" if statistic in LOG10_STATISTICS else statistic


def charted_layers(count: int) -> list[int]:
    """Indices of the layers charted as runs: every one up to `MAX_LAYER_RUNS`, else that
    many spread evenly over depth, the first and the last included."""
    if count <= MAX_LAYER_RUNS:
        return list(range(count))
    return sorted({round(i * (count - 1) / (MAX_LAYER_RUNS - 1)) for i in range(MAX_LAYER_RUNS)})


def chart_groups(count: int) -> list[list[int]]:
    """The charted layers' indices in contiguous groups of `LAYERS_PER_CHART`, input first."""
    charted = charted_layers(count)
    return [charted[i:i + LAYERS_PER_CHART] for i in range(0, len(charted), LAYERS_PER_CHART)]


def group_label(group: list[int], count: int) -> str:
    """``layers 5-8``: depth positions, 1 the input side, in fixed blocks of
    `LAYERS_PER_CHART` up to `MAX_LAYER_RUNS` layers (so a 7-layer run's last three share
    the chart of a 9-layer run's layers 5 to 8), else the first and last charted layer's."""
    if count <= MAX_LAYER_RUNS:
        first = group[0] // LAYERS_PER_CHART * LAYERS_PER_CHART + 1
        return f"layers {first}-{first + LAYERS_PER_CHART - 1}"
    return f"layers {group[0] + 1}-{group[-1] + 1}"


def layer_run_name(index: int, count: int, layer: str) -> str:
    """``<depth>-<layer>``: the depth position zero-padded (the run list sorts by depth),
    the layer's name with what a folder name cannot hold replaced by ``_``."""
    return f"{index + 1:0{len(str(count))}d}-{re.sub(r'[^A-Za-z0-9_.-]', '_', layer)}"


def layer_value(statistic: str, value: float) -> float | None:
    """The charted value: the log10 of finite positive values of a log10 statistic (None
    for the others: no number), the value itself else; None for NaN (not defined)."""
    if math.isnan(value):
        return None
    if statistic in LOG10_STATISTICS:
        return math.log10(value) if math.isfinite(value) and value > 0 else None
    return value


class LayerRuns:
    """The layer runs below ``log_dir``: an event file each, opened when first written."""

    def __init__(self, log_dir: str) -> None:
        self.root = Path(log_dir) / LAYER_RUNS_DIR
        self._writers: dict[str, RecordWriter] = {}   # run name -> its event file
        self._layers: tuple[str, ...] = ()
        self._plan: list[tuple[int, str, str]] = []    # (layer index, run name, group label)

    def write(self, snapshot: Snapshot) -> None:
        """Each charted layer's statistics at the snapshot's step, one event per layer."""
        if snapshot.layers != self._layers:
            self._layers = snapshot.layers
            count = len(snapshot.layers)
            self._plan = [(i, layer_run_name(i, count, snapshot.layers[i]),
                           group_label(group, count))
                          for group in chart_groups(count) for i in group]
        # a statistic not measured at all may come as an empty column
        columns = {name: column for name in LAYER_GAUGES
                   if len(column := getattr(snapshot, name)) == len(snapshot.layers)}
        wall_time = time.time()
        for index, run, label in self._plan:
            values = [Summary.Value(tag=f"{LAYER_TAG_PREFIX}{shown(name)}/{label}",
                                    simple_value=charted)
                      for name, column in columns.items()
                      if (charted := layer_value(name, float(column[index]))) is not None]
            if values:
                event = Event(wall_time=wall_time, step=snapshot.step,
                              summary=Summary(value=values))
                self._writer(run).write(event.SerializeToString())
        for writer in self._writers.values():
            writer.flush()

    def _writer(self, run: str) -> RecordWriter:
        writer = self._writers.get(run)
        if writer is None:
            folder = self.root / run
            folder.mkdir(parents=True, exist_ok=True)
            name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}"
                    f".{os.getpid()}.{next(_FILE_NUMBERS)}")
            writer = self._writers[run] = RecordWriter(open(folder / name, "wb"))
            writer.write(Event(wall_time=time.time(),
                               file_version="brain.Event:2").SerializeToString())
        return writer

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers = {}
