"""TensorBoard export: scalars grouped per statistic, plus a custom-scalars layout.

Tags: ``gradwatch/<statistic>/<layer>`` for per-layer statistics (sampled steps) and
``gradwatch/<figure>`` for per-step figures. Figures that span decades are written a second
time as their base-10 logarithm, ``gradwatch/log10_<statistic>/<layer>`` and
``gradwatch/log10_<figure>`` (`LOG10_STATISTICS`, `LOG10_FIGURES`; finite positive values
only), since TensorBoard's axes are linear. TensorBoard colours a line by its run, so each
charted layer is also a run of its own below the run (`tensorboard_layers`: ``layers/``),
whose figures a chart per depth group shows, a colour per layer. The custom-scalars layout
(Custom Scalars tab) has a chart per per-step figure (a line per run) and a category per
statistic, log10 where there is one, with a chart per depth group of at most
`LAYERS_PER_CHART` layer runs, input side first. Two text tags make the run readable by
programs too (``gradwatch report``): ``gradwatch/layers`` holds the layer names in depth
order as JSON, and ``gradwatch/alerts`` one JSON object per alert event (in a fenced block,
so TensorBoard shows it readably).
"""
from __future__ import annotations

import json
import math
import re

from tensorboard.compat.proto.summary_pb2 import Summary

try:
    import google_crc32c
except ImportError:  # a dependency, but TensorBoard works without it (slower)
    google_crc32c = None  # type: ignore[assignment]

from ..records.fields import LAYER_GAUGES, PULSE_SCALARS, TAG_PREFIX, tag
from ..records.figures import Name, pulse_figures, snapshot_figures
from ..records.snapshot import Pulse, Snapshot
from .tensorboard_layers import (
    LAYER_RUNS_DIR,
    LAYER_TAG_PREFIX,
    LAYERS_PER_CHART,
    LOG10_PREFIX,
    LOG10_STATISTICS,
    LayerRuns,
    chart_groups,
    group_label,
    shown,
)

#: what this module gives on from tensorboard_layers (its own names are public too)
__all__ = ["LAYER_RUNS_DIR", "LAYERS_PER_CHART", "LOG10_PREFIX", "LOG10_STATISTICS"]

LAYERS_TAG = tag("layers")
ALERTS_TAG = tag("alerts")
#: Per-step figures also written as log10 (they span decades).
LOG10_FIGURES = ("loss", "global_grad_norm")


class TensorBoardSink:
    """Writes Pulses and Snapshots as TensorBoard scalars.

    Args:
        writer: a SummaryWriter to share (e.g. Lightning's TensorBoardLogger.experiment); it
            is flushed, not closed, at the end.
        log_dir: where to create a SummaryWriter of our own when ``writer`` is None.
    """

    def __init__(self, writer=None, log_dir: str | None = None) -> None:
        if writer is None and log_dir is None:
            raise ValueError("TensorBoardSink needs a writer or a log_dir")
        # imported here: `gradwatch report` reads runs without torch
        from torch.utils.tensorboard import SummaryWriter

        use_fast_checksums()
        self._owned = writer is None
        if writer is None:
            writer = SummaryWriter(log_dir=log_dir)
        self.writer = writer
        # torch's writer takes a whole summary per event (tensorboardX's wants its own protos)
        self._one_event_per_step = isinstance(writer, SummaryWriter)
        self._layers_written: tuple[str, ...] = ()
        self._measured: tuple[str, ...] = ()  # the per-step figures seen, charted
        self.layer_runs = LayerRuns(self.log_dir)

    @property
    def log_dir(self) -> str:
        return self.writer.log_dir if hasattr(self.writer, "log_dir") else self.writer.logdir

    def on_pulse(self, pulse: Pulse) -> None:
        figures = pulse_figures(pulse)
        if any((name,) in figures and name not in self._measured for name in PULSE_SCALARS):
            self._measured = tuple(name for name in PULSE_SCALARS
                                   if (name,) in figures or name in self._measured)
            if self._layers_written:   # else the first Snapshot writes the layout
                self.writer.add_custom_scalars(
                    custom_scalars_layout(self._layers_written, self._measured))
        scalars = tagged(figures)
        scalars.update(log10_scalars({name: getattr(pulse, name) for name in LOG10_FIGURES}))
        self._write_scalars(scalars, pulse.step)

    def on_snapshot(self, snapshot: Snapshot) -> None:
        if snapshot.layers != self._layers_written:
            self.writer.add_custom_scalars(custom_scalars_layout(snapshot.layers,
                                                                 self._measured))
            self.writer.add_text(LAYERS_TAG, fenced_json(list(snapshot.layers)), snapshot.step)
            self._layers_written = snapshot.layers
        scalars = tagged(snapshot_figures(snapshot))
        scalars.update(log10_scalars({f"{name}/{layer}": value for name in LOG10_STATISTICS
                                      for layer, value in zip(snapshot.layers,
                                                              getattr(snapshot, name))}))
        self._write_scalars(scalars, snapshot.step)
        self.layer_runs.write(snapshot)

    def _write_scalars(self, scalars: dict[str, float], step: int) -> None:
        """All ``scalars`` of one step as ONE event (a summary with a value per tag), read
        back the same as an event per scalar and several times cheaper to write."""
        if self._one_event_per_step:
            values = [Summary.Value(tag=tag, simple_value=float(value))
                      for tag, value in scalars.items()]
            self.writer._get_file_writer().add_summary(Summary(value=values), step)
        else:
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, step)

    def on_alert(self, alert) -> None:
        self.writer.add_text(ALERTS_TAG, fenced_json(alert.to_dict()), alert.step)

    def close(self) -> None:
        self.layer_runs.close()
        if self._owned:
            self.writer.close()
        else:
            self.writer.flush()


def use_fast_checksums() -> bool:
    """Checksum TensorBoard's event records in C (google-crc32c) instead of pure Python: the
    same values, about 1000 x faster. Without TensorFlow, tensorboard computes each record's
    CRC32C in a Python loop, ~1 ms per 10 KB (a Snapshot's event), on the writer's thread
    but holding the GIL, so the training thread waits for it. True if in use."""
    # its pure-Python fallback is no faster
    if google_crc32c is None or google_crc32c.implementation != "c":
        return False
    from tensorboard.summary.writer import record_writer

    record_writer.masked_crc32c = masked_crc32c
    return True


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC32C of ``data`` (as tensorboard's ``masked_crc32c``)."""
    crc = google_crc32c.value(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def fenced_json(value: object) -> str:
    """JSON in a markdown code block: readable in TensorBoard's Text tab, parseable back."""
    return "```json\n" + json.dumps(value, default=str) + "\n```"


def parse_fenced_json(text: str) -> object:
    return json.loads(text.strip().removeprefix("```json").removesuffix("```"))


def tagged(figures: dict[Name, float]) -> dict[str, float]:
    """``figures`` under their TensorBoard tags, ``gradwatch/<part>/<part>``."""
    return {tag("/".join(name)): value for name, value in figures.items()}


def log10_scalars(values: dict[str, float | None]) -> dict[str, float]:
    """``gradwatch/log10_<name>`` tags of the finite positive ``values`` (a logarithm of the
    others is no number: their plain tags hold them)."""
    return {f"{TAG_PREFIX}{LOG10_PREFIX}{name}": math.log10(value)
            for name, value in values.items()
            if value is not None and math.isfinite(value) and value > 0}


def custom_scalars_layout(layers: tuple[str, ...],
                          measured: tuple[str, ...] = PULSE_SCALARS) -> dict:
    """The Custom Scalars tab: a chart per per-step figure ``measured`` (a line per run:
    TensorBoard's colours; none for, e.g., a loss scale without AMP), then a category per
    layer statistic with a chart per depth group of the layer runs (a line per layer, named
    in the legend). Titles and tags name depth positions, not layers or runs, so the
    charts of several runs' layouts merge into one."""
    prefix = re.escape(TAG_PREFIX)
    per_step = [f"{LOG10_PREFIX}{name}" for name in LOG10_FIGURES if name in measured]
    per_step += measured
    layout: dict[str, dict[str, list]] = {
        "gradwatch: per step": {name: ["Multiline", [f"^{prefix}{name}$"]] for name in per_step}}
    for name in LAYER_GAUGES:
        charts: dict[str, list] = {}
        for group in chart_groups(len(layers)):
            label = group_label(group, len(layers))
            charts[f"{shown(name)} · {label}"] = [
                "Multiline", [f"^{re.escape(f'{LAYER_TAG_PREFIX}{shown(name)}/{label}')}$"]]
        layout[f"gradwatch: {shown(name)}"] = charts
    return layout
