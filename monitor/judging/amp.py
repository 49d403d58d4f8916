"""AmpOverflowStorm: the GradScaler skipping step after step (fp16 overflow)."""

from __future__ import annotations

from collections import deque

import numpy as np

from ..records.findings import Finding, Result, Verdict, describe_layers, table_fields
from ..records.snapshot import Pulse, Snapshot
from ..records.thresholds import Thresholds
from .base import FP16_MAX, pulse_of


class AmpOverflowStorm:
    """Mixed precision: a burst of steps the GradScaler skipped (overflowed gradients).

    A scaler skips a step now and then by design; ``amp_skipped_steps`` skips within the
    last ``history_steps`` steps is a storm. The skips before the first step that ran are
    the scaler calibrating its initial scale (it starts high, 2^16, and halves until the
    gradients fit), not a storm, and are not counted: the Pulse decides it
    (``scaler_overflowed``), and the rule counts the same steps
    (``gradwatch_amp_overflow_steps_total``). Steps without a finite loss scale (no
    scaler) are ignored. Layers named are those whose latest fp16 headroom was below
    ``fp16_headroom_bits``.
    """

    name = "AmpOverflowStorm"

    def __init__(self, thresholds: Thresholds) -> None:
        self.t = thresholds
        self.window: deque[tuple[bool, float]] = deque(maxlen=thresholds.history_steps)
        self.low_headroom: tuple[str, ...] = ()

    def on_pulse(self, pulse: Pulse) -> Result:
        if pulse.loss_scale is None:
            return None
        if pulse.scaler_calibrating:
            return Verdict.CLEAR
        self.window.append((pulse.scaler_overflowed, pulse.loss_scale))
        skipped = sum(1 for s, _ in self.window if s)
        if skipped < self.t.amp_skipped_steps:
            return Verdict.CLEAR
        peak = max(scale for _, scale in self.window)
        return Finding(
            name=self.name, step=pulse.step, time=pulse.time,
            layers=self.low_headroom, value=float(skipped), threshold=self.t.amp_skipped_steps,
            summary=f"{skipped} AMP steps skipped in the last {len(self.window)} steps",
            description=(
                f"The GradScaler skipped {skipped} of the last {len(self.window)} steps because "
                f"the gradients overflowed; the loss scale fell from {peak:g} to "
                f"{pulse.loss_scale:g}. "
                + (f"Layers within {self.t.fp16_headroom_bits:g} bits of the fp16 maximum: "
                   f"{describe_layers(self.low_headroom)}. " if self.low_headroom else "")
                + "See gradwatch_amp_loss_scale and gradwatch_amp_skipped_steps_total."),
            **table_fields(self.name),
        )

    def on_snapshot(self, snapshot: Snapshot) -> Result:
        if pulse_of(snapshot).loss_scale is not None:
            bits = fp16_headroom_bits(snapshot.layer_output_max_abs)
            low = np.flatnonzero(bits < self.t.fp16_headroom_bits)
            self.low_headroom = tuple(snapshot.layers[i] for i in low if i < len(snapshot.layers))
        return None


def fp16_headroom_bits(max_abs: np.ndarray) -> np.ndarray:
    """log2(65504 / max|x|) per layer; +inf for all-zero outputs, NaN where undefined."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.log2(FP16_MAX / np.abs(np.asarray(max_abs, dtype=np.float64)))
