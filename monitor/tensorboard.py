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

from .prometheus import LAYER_GAUGES
from .snapshot import Pulse, Snapshot

PULSE_SCALARS = ("loss", "global_grad_norm", "clipped_grad_norm", "loss_scale")
LAYERS_TAG = "gradwatch/layers"
ALERTS_TAG = "gradwatch/alerts"


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
        self._owned = writer is None
        if writer is None:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=log_dir)
        self.writer = writer
        self._layers_written: tuple[str, ...] = ()

    @property
    def log_dir(self) -> str:
        return self.writer.log_dir if hasattr(self.writer, "log_dir") else self.writer.logdir

    def on_pulse(self, pulse: Pulse) -> None:
        for name in PULSE_SCALARS:
            value = getattr(pulse, name)
            if value is not None:
                self.writer.add_scalar(f"gradwatch/{name}", value, pulse.step)
        for optimizer, groups in enumerate(pulse.learning_rates):
            for group, lr in enumerate(groups):
                if not math.isnan(lr):
                    self.writer.add_scalar(f"gradwatch/learning_rate/{optimizer}/{group}", lr,
                                           pulse.step)

    def on_snapshot(self, snapshot: Snapshot) -> None:
        if snapshot.layers != self._layers_written:
            if not self._layers_written:
                self.writer.add_custom_scalars(custom_scalars_layout())
            self.writer.add_text(LAYERS_TAG, fenced_json(list(snapshot.layers)), snapshot.step)
            self._layers_written = snapshot.layers
        for name in LAYER_GAUGES:
            for layer, value in zip(snapshot.layers, getattr(snapshot, name)):
                if not math.isnan(value):
                    self.writer.add_scalar(f"gradwatch/{name}/{layer}", value, snapshot.step)
        nonfinite = snapshot.nonfinite.sum(axis=(1, 2))
        for source, value in zip(("gradient", "activation", "parameter"), nonfinite):
            self.writer.add_scalar(f"gradwatch/nonfinite/{source}", value, snapshot.step)
        self.writer.add_scalar("gradwatch/overhead_seconds", snapshot.overhead_seconds,
                               snapshot.step)

    def on_alert(self, alert) -> None:
        self.writer.add_text(ALERTS_TAG, fenced_json(dataclasses.asdict(alert)), alert.step)

    def flush(self) -> None:
        self.writer.flush()

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
    charts = {
        name: ["Multiline", [f"^gradwatch/{re.escape(name)}/"]] for name in LAYER_GAUGES
    }
    charts["per-step figures"] = ["Multiline", [f"^gradwatch/({'|'.join(PULSE_SCALARS)})$"]]
    return {"gradwatch": charts}
