"""TensorBoard export: scalars grouped per statistic, plus a custom-scalars layout.

Tags: ``gradwatch/<statistic>/<layer>`` for per-layer statistics (sampled steps) and
``gradwatch/<figure>`` for per-step figures. The custom-scalars layout puts every layer of a
statistic in one chart ("gradwatch" category of the Custom Scalars tab). Two text tags make
the run readable by programs too (``gradwatch report``): ``gradwatch/layers`` holds the
layer names in depth order as JSON, and ``gradwatch/alerts`` one JSON object per alert
event (in a fenced block, so TensorBoard shows it readably).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re

from tensorboard.compat.proto.summary_pb2 import Summary

from .fields import (
    ATTENTION_GAUGES,
    LAYER_FIELDS,
    LAYER_GAUGES,
    OUTPUT_GAUGES,
    PULSE_SCALARS,
    TAG_PREFIX,
    tag,
)
from .snapshot import NONFINITE_SOURCES, Pulse, Snapshot

LAYERS_TAG = tag("layers")
ALERTS_TAG = tag("alerts")


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

        self._owned = writer is None
        if writer is None:
            writer = SummaryWriter(log_dir=log_dir)
        self.writer = writer
        # torch's writer takes a whole summary per event (tensorboardX's wants its own protos)
        self._one_event_per_step = isinstance(writer, SummaryWriter)
        self._layers_written: tuple[str, ...] = ()

    @property
    def log_dir(self) -> str:
        return self.writer.log_dir if hasattr(self.writer, "log_dir") else self.writer.logdir

    def on_pulse(self, pulse: Pulse) -> None:
        scalars = {tag(name): value for name in PULSE_SCALARS
                   if (value := getattr(pulse, name)) is not None}
        for optimizer, groups in enumerate(pulse.learning_rates):
            for group, lr in enumerate(groups):
                if not math.isnan(lr):
                    scalars[tag(f"learning_rate/{optimizer}/{group}")] = lr
        self._write_scalars(scalars, pulse.step)

    def on_snapshot(self, snapshot: Snapshot) -> None:
        if snapshot.layers != self._layers_written:
            if not self._layers_written:
                self.writer.add_custom_scalars(custom_scalars_layout())
            self.writer.add_text(LAYERS_TAG, fenced_json(list(snapshot.layers)), snapshot.step)
            self._layers_written = snapshot.layers
        scalars = {field.tag(layer): value for field in LAYER_FIELDS
                   for layer, value in zip(snapshot.layers, getattr(snapshot, field.name))
                   if not math.isnan(value)}
        nonfinite = snapshot.nonfinite.sum(axis=(1, 2))
        for source, value in zip(NONFINITE_SOURCES, nonfinite):
            scalars[tag(f"nonfinite/{source}")] = value
        scalars[tag("overhead_seconds")] = snapshot.overhead_seconds
        # issue 17: attention per module, output logits
        for name in ATTENTION_GAUGES:
            scalars.update({tag(f"{name}/{module}"): value for module, value in
                            zip(snapshot.attention_layers, getattr(snapshot, name))})
        scalars.update({tag(name): getattr(snapshot, name) for name in OUTPUT_GAUGES
                        if not math.isnan(getattr(snapshot, name))})
        self._write_scalars(scalars, snapshot.step)

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
        self.writer.add_text(ALERTS_TAG, fenced_json(dataclasses.asdict(alert)), alert.step)

    def close(self) -> None:
        if self._owned:
            self.writer.close()
        else:
            self.writer.flush()


def fenced_json(value: object) -> str:
    """JSON in a markdown code block: readable in TensorBoard's Text tab, parseable back."""
    return "```json\n" + json.dumps(value, default=str) + "\n```"


def parse_fenced_json(text: str) -> object:
    return json.loads(text.strip().removeprefix("```json").removesuffix("```"))


def custom_scalars_layout() -> dict:
    """One multiline chart per statistic, each showing every layer."""
    prefix = re.escape(TAG_PREFIX)
    charts = {
        name: ["Multiline", [f"^{prefix}{re.escape(name)}/"]] for name in LAYER_GAUGES
    }
    charts["per-step figures"] = ["Multiline", [f"^{prefix}({'|'.join(PULSE_SCALARS)})$"]]
    return {"gradwatch": charts}
