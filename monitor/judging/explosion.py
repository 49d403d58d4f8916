"""GradientExplosion: the global gradient norm far above its recent level, or above a bar."""

from __future__ import annotations

import math

import numpy as np

from ..records.findings import Finding, Result, describe_layers, table_fields
from ..records.snapshot import Pulse, Snapshot
from ..records.thresholds import Thresholds
from .base import RATIO_FLOOR, History, Sustained, finite_mask


class GradientExplosion:
    """Global gradient norm far above normal, judged on EVERY step's Pulse.

    Fires on any of: the norm above ``explosion_norm`` (absolute); above
    ``explosion_spike_factor`` x the max of the recent non-anomalous norms (a spike, once
    ``history_min_steps`` are known); or growing by ``explosion_growth_factor`` per step for
    ``explosion_growth_steps`` steps in a row (exponential growth, see
    docs/theory.md § Vanishing and exploding gradients), which is what
    precedes an overflow to Inf/NaN. Clears after ``history_min_steps`` calm steps.
    Names as culprits the ``CULPRITS`` layers with the largest gradient norms at the latest
    sampled step (the Prometheus rule's ``layers`` annotation lists the same).
    """

    name = "GradientExplosion"
    CULPRITS = 3

    def __init__(self, thresholds: Thresholds) -> None:
        self.t = thresholds
        self.history = History(thresholds.history_steps)
        self.state = Sustained(1, thresholds.history_min_steps)
        self.latest: Snapshot | None = None

    def on_snapshot(self, snapshot: Snapshot) -> Result:
        self.latest = snapshot  # kept for naming culprits; no verdict from per-layer data
        return None

    def _culprits(self) -> tuple[tuple[str, ...], str]:
        snapshot = self.latest
        if snapshot is None:
            return (), ""
        norms = np.asarray(snapshot.grad_norm, dtype=np.float64)[:len(snapshot.layers)]
        finite = np.flatnonzero(finite_mask(norms))
        top = finite[np.argsort(-norms[finite], kind="stable")][:self.CULPRITS]
        layers = tuple(snapshot.layers[i] for i in top)
        text = (f" Largest gradient norms at step {snapshot.step}: "
                f"{describe_layers(layers, norms[top])}." if layers else "")
        return layers, text

    def on_pulse(self, pulse: Pulse) -> Result:
        norm = pulse.global_grad_norm
        if norm is None or not math.isfinite(norm):
            return None  # no gradients this step, or non-finite: NonFiniteValues' business
        t = self.t
        reasons: list[tuple[str, float]] = []  # (why, threshold it crossed)
        if norm > t.explosion_norm:
            reasons.append((f"above the absolute limit {t.explosion_norm:g}", t.explosion_norm))
        baseline = self.history.baseline
        if len(baseline) >= t.history_min_steps:
            peak = self.history.peak
            bar = t.explosion_spike_factor * peak
            if norm > bar:
                reasons.append((f"{norm / max(peak, RATIO_FLOOR):.3g}x the max of the last "
                                f"{len(baseline)} normal steps ({peak:.3g})", bar))
        growth = self._growth(norm)
        if growth is not None:
            reasons.append((f"growing {growth:.3g}x per step over the last "
                            f"{t.explosion_growth_steps} steps", t.explosion_growth_factor))
        self.history.add(norm, anomalous=bool(reasons) or self.state.on)
        return self.state.verdict(bool(reasons), lambda: self._finding(pulse, reasons))

    def _growth(self, norm: float) -> float | None:
        """Geometric mean growth per step when every one of the last steps grew enough."""
        steps = self.t.explosion_growth_steps
        raw = self.history.raw
        if len(raw) < steps:
            return None
        recent = [raw[i] for i in range(-steps, 0)] + [norm]  # deque ends: O(1) each
        if min(recent) <= 0:
            return None
        ratios = [b / a for a, b in zip(recent, recent[1:])]
        if min(ratios) < self.t.explosion_growth_factor:
            return None
        return (recent[-1] / recent[0]) ** (1 / steps)

    def _finding(self, pulse: Pulse, reasons: list[tuple[str, float]]) -> Finding:
        norm = pulse.global_grad_norm
        layers, culprits = self._culprits()
        return Finding(
            name=self.name, step=pulse.step, time=pulse.time, layers=layers,
            value=norm, threshold=reasons[0][1],
            summary=f"Global gradient norm {norm:.3g} at step {pulse.step}: exploding",
            description=(
                f"The global gradient norm (before clipping) is {norm:.3g}, "
                + "; ".join(r for r, _ in reasons) + ". Exploding gradients multiply through "
                "the layers and overflow to Inf, then NaN, within a few steps." + culprits
                + " See gradwatch_grad_norm per layer for where it grows and "
                "gradwatch_update_ratio for the layers being thrown around."),
            **table_fields(self.name),
        )
