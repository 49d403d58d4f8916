"""What every detector is built from: the protocols, debouncing, histories, a Snapshot's Pulse.

Each detector sees every Pulse (``on_pulse``) and/or every Snapshot (``on_snapshot``) and
returns a verdict: a ``Finding`` (the condition holds), ``Verdict.CLEAR`` (it has cleared),
``Verdict.NEEDS_SAMPLING`` (something is wrong, fully sampled steps are needed to say what),
or ``None`` (no opinion this time). The AlertEngine turns verdicts into Alerts and keeps the
firing state, so a detector never needs to know whether it already fired.

Detectors read host data only (floats, numpy arrays) and never raise on odd input: NaN,
Inf, zeros or no layers at all give no verdict or a sane one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Protocol, TypeAlias, runtime_checkable

import numpy as np

from ..records.findings import Finding, Result, Verdict
from ..records.snapshot import Pulse, Snapshot

@runtime_checkable
class PulseDetector(Protocol):
    """Judges every step's Pulse (loss, global norm, AMP state): cheap host arithmetic."""

    name: str  # the alert it raises (a row of the alert table, or a custom name)

    def on_pulse(self, pulse: Pulse) -> Result: ...


@runtime_checkable
class SnapshotDetector(Protocol):
    """Judges every sampled step's Snapshot (the per-layer figures)."""

    name: str

    def on_snapshot(self, snapshot: Snapshot) -> Result: ...


@runtime_checkable
class FlushingDetector(Protocol):
    """Holds a verdict back for a Snapshot that may never come (the end of training)."""

    def flush(self) -> Result: ...


#: A detector judges Pulses, Snapshots or both (and may hold a verdict back: flush).
Detector: TypeAlias = PulseDetector | SnapshotDetector


FP16_MAX = 65504.0
#: Denominator floor of the ratios printed in alert texts: a zero peak or sigma prints as a
#: huge ratio, never a ZeroDivisionError.
RATIO_FLOOR = 1e-300
#: Layers an alert text names before "and N more".


class Sustained:
    """Debounces a per-sample condition: on after ``on_after`` true samples in a row, off
    after ``off_after`` false samples in a row (so a value hovering at a threshold does not
    make an alert flap)."""

    def __init__(self, on_after: int, off_after: int) -> None:
        self.on_after, self.off_after = on_after, off_after
        self.on = False
        self._streak = 0  # consecutive samples disagreeing with the current state

    def update(self, condition: bool) -> bool:
        """Feed one sample; returns the (possibly new) state."""
        if condition == self.on:
            self._streak = 0
            return self.on
        self._streak += 1
        if self._streak >= (self.off_after if self.on else self.on_after):
            self.on, self._streak = condition, 0
        return self.on

    def verdict(self, condition: bool, finding: Callable[[], Finding]) -> Result:
        """Update with ``condition``: the Finding while on and the condition holds now,
        CLEAR while off, None while on but the condition is not seen now (clearing)."""
        if self.update(condition):
            return finding() if condition else None
        return Verdict.CLEAR


class History:
    """Recent values of one always-on series (loss, global norm).

    ``raw`` keeps every finite value; ``baseline`` only those that were not anomalous, so a
    spike (or a run of them) never raises the bar the next spike is judged against.
    """

    def __init__(self, size: int) -> None:
        self.raw: deque[float] = deque(maxlen=size)
        self.baseline: deque[float] = deque(maxlen=size)
        self._peak: float | None = None  # max(baseline), kept while it stays in the window

    def add(self, value: float, anomalous: bool) -> None:
        self.raw.append(value)
        if anomalous:
            return
        baseline = self.baseline
        dropped = baseline[0] if len(baseline) == baseline.maxlen else None
        baseline.append(value)
        if self._peak is not None and dropped != self._peak:
            self._peak = max(self._peak, value)
        else:  # the peak left the window: found again, once
            self._peak = None

    @property
    def peak(self) -> float:
        """The largest baseline value (judged every step: a scan of the window only when
        its peak leaves it)."""
        if self._peak is None:
            self._peak = max(self.baseline)
        return self._peak


def pulse_of(snapshot: Snapshot) -> Pulse:
    """The Snapshot's own Pulse, or an empty one for a Snapshot without Pulses."""
    if snapshot.pulses:
        return snapshot.pulses[-1]
    return Pulse(step=snapshot.step, time=snapshot.time, loss=None, global_grad_norm=None)


def finite_mask(values: np.ndarray) -> np.ndarray:
    return np.isfinite(np.asarray(values, dtype=np.float64))
