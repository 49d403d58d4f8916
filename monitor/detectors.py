"""Detectors: pure code from a stream of Pulses and Snapshots to findings.

Each detector sees every Pulse (``on_pulse``) and/or every Snapshot (``on_snapshot``) and
returns a verdict: a ``Finding`` (the condition holds), ``Verdict.CLEAR`` (it has cleared),
``Verdict.NEEDS_SAMPLING`` (something is wrong, fully sampled steps are needed to say what),
or ``None`` (no opinion this time). The AlertEngine turns verdicts into Alerts and keeps the
firing state, so a detector never needs to know whether it already fired.

Detectors read host data only (floats, numpy arrays) and never raise on odd input: NaN,
Inf, zeros or no layers at all give no verdict or a sane one.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# the severity and regime names, re-exported for detectors built on this module
from .alert_table import CRITICAL, INFO, WARNING  # noqa: F401
from .regimes import EXPLODING, NONFINITE, VANISHING  # noqa: F401
from .alert_table import spec as alert_spec
from .snapshot import NONFINITE_SOURCES, Pulse, Snapshot
from .thresholds import DEPTH_SIDES, GRAD_NORM_FLOOR, IQR_PER_SIGMA, Thresholds

FP16_MAX = 65504.0
#: Denominator floor of the ratios printed in alert texts: a zero peak or sigma prints as a
#: huge ratio, never a ZeroDivisionError.
RATIO_FLOOR = 1e-300
#: Layers an alert text names before "and N more".
DESCRIBED_LAYERS = 8
#: Within this fraction of its bar (in log loss), a rise judged on the approximate rolling
#: level is judged again on the exact window: the approximation is off by far less.
EXACT_LEVEL_MARGIN = 0.5
#: Fewest layers with a gradient norm that make a depth profile: an input side, an output
#: side and one layer between.
MIN_PROFILE_LAYERS = 3
#: Fewest layers with an activation variance whose two sides can be compared.
MIN_VARIANCE_LAYERS = 2


@dataclass(frozen=True)
class Finding:
    """What a detector saw: the content of an Alert, without the run's identity (run, rank)
    and firing state. ``time`` is when the step it is about ended."""

    name: str
    severity: str
    step: int
    time: float
    layers: tuple[str, ...]
    value: float
    threshold: float
    summary: str
    description: str
    remedy: str
    regime: str | None = None
    origin_exact: bool | None = None
    checkpoint: str | None = None


def table_fields(name: str) -> dict[str, Any]:
    """The Finding fields the alert table decides: severity, regime and remedy."""
    spec = alert_spec(name)
    return {"severity": spec.severity, "regime": spec.regime, "remedy": spec.remedy}


class Verdict(enum.Enum):
    """Verdicts that are not a Finding."""

    CLEAR = "clear"
    NEEDS_SAMPLING = "needs_sampling"


Result = Finding | Verdict | None


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

    def add(self, value: float, anomalous: bool) -> None:
        self.raw.append(value)
        if not anomalous:
            self.baseline.append(value)


def describe_layers(layers: Sequence[str], values: Sequence[float] | None = None,
                    limit: int = DESCRIBED_LAYERS) -> str:
    """'a (1.2), b (3.4) and 3 more' for descriptions (values optional)."""
    items = list(layers) if values is None else [
        f"{name} ({value:.3g})" for name, value in zip(layers, values)]
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _pulse_of(snapshot: Snapshot) -> Pulse:
    """The Snapshot's own Pulse, or an empty one for a Snapshot without Pulses."""
    if snapshot.pulses:
        return snapshot.pulses[-1]
    return Pulse(step=snapshot.step, time=snapshot.time, loss=None, global_grad_norm=None)


def _finite(values: np.ndarray) -> np.ndarray:
    return np.isfinite(np.asarray(values, dtype=np.float64))


# ---------------------------------------------------------------------------- explosion


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
        finite = np.flatnonzero(_finite(norms))
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
            peak = max(baseline)
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


# ---------------------------------------------------------------------------- loss


def robust_level(log_losses: Iterable[float]) -> tuple[float, float]:
    """Median and robust sigma (IQR / 1.349, the sigma of a normal with that IQR) of log
    losses; the Prometheus rules compute the same two with quantile_over_time (the same
    linear interpolation between ranks). Plain Python: it runs every step, on ~100 values,
    where numpy's call overhead would be most of the cost."""
    ordered = sorted(log_losses)
    last = len(ordered) - 1

    def quantile(q: float) -> float:
        rank = q * last
        low = int(rank)
        high = min(low + 1, last)
        return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)

    return quantile(0.5), (quantile(0.75) - quantile(0.25)) / IQR_PER_SIGMA


class RollingLevel:
    """Recent log losses with their median and robust sigma (``robust_level``).

    The level moves slowly, so ``level(exact=False)`` reuses the figures of up to
    ``REFRESH`` appends ago: a sort per step would cost more than the other detectors
    together. The detectors ask for the exact figures whenever a step comes near their bar,
    so every verdict that fires is computed on the exact window.
    """

    REFRESH = 8

    def __init__(self, size: int) -> None:
        self.values: deque[float] = deque(maxlen=size)
        self._level: tuple[float, float] | None = None
        self._stale = 0

    def __len__(self) -> int:
        return len(self.values)

    def append(self, value: float) -> None:
        self.values.append(value)
        self._stale += 1

    def level(self, exact: bool = False) -> tuple[float, float]:
        if self._level is None or self._stale >= self.REFRESH or (exact and self._stale):
            self._level, self._stale = robust_level(self.values), 0
        return self._level


class _LossJudge:
    """What the two loss detectors share: a positive, finite loss after the warm-up."""

    name = ""

    def __init__(self, thresholds: Thresholds) -> None:
        self.t = thresholds
        self.state = Sustained(1, thresholds.history_min_steps)
        self.seen = 0

    def _log_loss(self, pulse: Pulse) -> float | None:
        """log(loss) raised to ``loss_floor``, or None when this loss cannot be judged
        (absent, non-finite, <= 0: ratios of a loss only make sense while it is positive)."""
        loss = pulse.loss
        if loss is None or not math.isfinite(loss) or loss <= 0:
            return None
        self.seen += 1
        return math.log(max(loss, self.t.loss_floor))

    @property
    def warming_up(self) -> bool:
        return self.seen <= self.t.loss_warmup_steps

    def _finding(self, pulse: Pulse, threshold: float, summary: str, description: str,
                 ) -> Finding:
        spec = alert_spec(self.name)
        return Finding(
            name=self.name, severity=spec.severity, step=pulse.step, time=pulse.time,
            layers=(), value=pulse.loss, threshold=threshold, regime=spec.regime,
            summary=summary, description=description + " See gradwatch_loss next to "
            "gradwatch_global_grad_norm: a loss that rises with the gradient norm is an "
            "exploding regime.", remedy=spec.remedy)


class LossSpike(_LossJudge):
    """One step's loss far above where the loss stands: a warning.

    A spike: log(loss) more than ``log(loss_spike_factor)`` and ``loss_noise_sigmas`` robust
    sigmas above the median of the last ``history_steps`` non-spike steps (the spikes stay
    out of the history, so a burst does not raise the bar). Judged after
    ``loss_warmup_steps``; clears after ``history_min_steps`` calm steps.
    """

    name = "LossSpike"

    def __init__(self, thresholds: Thresholds) -> None:
        super().__init__(thresholds)
        self.history = RollingLevel(thresholds.history_steps)
        self.bar = math.log(thresholds.loss_spike_factor)

    def on_pulse(self, pulse: Pulse) -> Result:
        value = self._log_loss(pulse)
        if value is None:
            return None
        t, spike = self.t, False
        if not self.warming_up and len(self.history) >= t.history_min_steps:
            median, sigma = self.history.level()
            if value - median > self.bar * EXACT_LEVEL_MARGIN:
                median, sigma = self.history.level(exact=True)
            rise = value - median
            spike = rise > self.bar and rise > t.loss_noise_sigmas * sigma
        if not spike:
            self.history.append(value)
            return self.state.verdict(False, lambda: None)
        ratio = math.exp(rise)
        return self.state.verdict(True, lambda: self._finding(
            pulse, t.loss_spike_factor,
            f"Loss {pulse.loss:.4g} at step {pulse.step}: a spike {ratio:.3g}x the median",
            f"The loss is {ratio:.3g}x the median of the last {len(self.history)} steps "
            f"({math.exp(median):.4g}), {rise / max(sigma, RATIO_FLOOR):.3g} robust sigmas of "
            "log(loss) above it: one step far off where the loss stands."))


class LossDivergence(_LossJudge):
    """The loss's level rose and stays up: critical.

    Level: the median of the last ``loss_divergence_steps`` losses (over half of them must
    be high: the persistence). Reference: the median of up to ``history_steps`` losses before
    them. Divergence: log(level / reference) above ``log(loss_divergence_factor)`` and above
    ``loss_divergence_sigmas`` robust sigmas of the reference window's log(loss). While it
    fires the reference stays where the loss stood before the rise, so the alert clears when
    the loss is back, not when the window has forgotten. Judged after ``loss_warmup_steps``.
    """

    name = "LossDivergence"

    def __init__(self, thresholds: Thresholds) -> None:
        super().__init__(thresholds)
        self.recent: deque[float] = deque(maxlen=thresholds.loss_divergence_steps)
        self.before = RollingLevel(thresholds.history_steps)
        self.bar = math.log(thresholds.loss_divergence_factor)

    def on_pulse(self, pulse: Pulse) -> Result:
        value = self._log_loss(pulse)
        if value is None:
            return None
        t = self.t
        if len(self.recent) == self.recent.maxlen and not self.state.on:
            self.before.append(self.recent[0])
        self.recent.append(value)
        if self.warming_up or len(self.before) < t.history_min_steps:
            return self.state.verdict(False, lambda: None)
        reference, sigma = self.before.level()
        if max(self.recent) - reference <= self.bar * EXACT_LEVEL_MARGIN:  # none near it
            return self.state.verdict(False, lambda: None)
        level, _ = robust_level(self.recent)
        reference, sigma = self.before.level(exact=True)
        rise = level - reference
        diverging = rise > self.bar and rise > t.loss_divergence_sigmas * sigma
        ratio = math.exp(rise)
        return self.state.verdict(diverging, lambda: self._finding(
            pulse, t.loss_divergence_factor,
            f"Loss diverging at step {pulse.step}: its level is {ratio:.3g}x where it stood",
            f"The median loss of the last {len(self.recent)} steps ({math.exp(level):.4g}) is "
            f"{ratio:.3g}x the median of the {len(self.before)} steps before "
            f"({math.exp(reference):.4g}), above {t.loss_divergence_factor:g}x and "
            f"{rise / max(sigma, RATIO_FLOOR):.3g} robust sigmas of log(loss): the rise is "
            "sustained, not a spike."))


# ---------------------------------------------------------------------------- non-finite


class NonFiniteValues:
    """Any NaN/Inf in the loss, gradients, activations or parameters, with its origin.

    On a Pulse with a non-finite loss or global norm (except an AMP step that the scaler
    skipped: overflowed gradients are its normal business), the verdict is NEEDS_SAMPLING
    and the finding waits for the next Snapshot: the one of the same step gives the exact
    origin; a later one (the engine escalates sampling) gives an inferred origin. ``flush``
    returns a waiting finding when no Snapshot will come (end of training).
    A Pulse's NaN also means "not observed" (no loss passed to the Monitor, no gradients),
    so a NaN loss or norm only counts once that series has been finite; an Inf always
    counts, and a run that is NaN from its first step is caught by its Snapshot's counts.
    Clears after ``escalation_steps`` finite steps in a row.
    """

    name = "NonFiniteValues"

    def __init__(self, thresholds: Thresholds) -> None:
        self.t = thresholds
        self.pending: Pulse | None = None  # first non-finite Pulse not yet reported
        self.state = Sustained(1, thresholds.escalation_steps)

    def on_pulse(self, pulse: Pulse) -> Result:
        if not self._bad_series(pulse) or pulse.amp_skipped:
            if self.pending is None and not self.state.update(False):
                return Verdict.CLEAR
            return None
        if self.state.on:
            self.state.update(True)  # still non-finite: restart the count to clearing
            return None
        if self.pending is None:
            self.pending = pulse
        return Verdict.NEEDS_SAMPLING

    def on_snapshot(self, snapshot: Snapshot) -> Result:
        pending, self.pending = self.pending, None
        if pending is not None:
            self.state.update(True)
            return self._finding(snapshot, pending, exact=snapshot.step == pending.step)
        if nonfinite_counts(snapshot).sum() > 0 or snapshot.nonfinite_origin:
            self.state.update(True)
            return self._finding(snapshot, _pulse_of(snapshot), exact=True)
        return None

    @staticmethod
    def _bad_series(pulse: Pulse) -> list[str]:
        """'loss (inf)'-style names of the Pulse's measured series that went non-finite."""
        series = (("loss", pulse.loss), ("global gradient norm", pulse.global_grad_norm))
        return [f"{name} ({value:g})" for name, value in series
                if value is not None and not math.isfinite(value)]

    def flush(self) -> Result:
        """The waiting finding, without origin, when no Snapshot is coming."""
        if self.pending is None:
            return None
        pulse, self.pending = self.pending, None
        self.state.update(True)
        return self._finding(None, pulse, exact=False)

    def _finding(self, snapshot: Snapshot | None, pulse: Pulse, exact: bool) -> Finding:
        sources = self._bad_series(pulse)
        origin_layers: tuple[str, ...] = ()
        origin_text = "origin unknown: no fully sampled step followed"
        total = float(len(sources))
        if snapshot is not None:
            counts = nonfinite_counts(snapshot)
            layers = snapshot.layers
            total = max(total, float(counts.sum()))
            per_source = {s: counts[i].sum(axis=1) for i, s in enumerate(NONFINITE_SOURCES)}
            for source, per_layer in per_source.items():
                hit = [layers[i] for i in np.flatnonzero(per_layer > 0) if i < len(layers)]
                if hit:
                    sources.append(f"{source}s in {describe_layers(hit)}")
            grads = per_source["gradient"]
            deepest_grad = next((layers[i] for i in reversed(range(min(len(grads), len(layers))))
                                 if grads[i] > 0), "")
            forward = snapshot.nonfinite_origin
            origin_layers = tuple(dict.fromkeys(x for x in (forward, deepest_grad) if x))
            how = "exact (seen on the step itself)" if exact else (
                f"inferred from step {snapshot.step}, a fully traced step after the "
                f"non-finite step {pulse.step}")
            params_bad = bool(per_source["parameter"].sum() > 0)
            origin_text = (
                f"first module with a non-finite output in forward order: "
                f"{forward or 'none seen'}; first layer with a non-finite gradient in backward "
                f"order: {deepest_grad or 'none seen'}; origin {how}")
            if params_bad and not exact:
                origin_text += (". Parameters were already non-finite by then, so the "
                                "forward origin only shows where the corrupted weights sit")
        where = ", ".join(sources) or "values"
        if pulse.local_gradients_finite is False:
            origin_text += ("; this rank's OWN gradients were already non-finite before the "
                            "all-reduce: the NaN came from this rank")
        elif pulse.local_gradients_finite:
            origin_text += ("; this rank's own gradients were finite before the all-reduce: "
                            "the NaN came from another rank (see that rank's alert)")
        return Finding(
            name=self.name, step=pulse.step, time=pulse.time,
            layers=origin_layers, value=total, threshold=0.0,
            origin_exact=exact if snapshot is not None else None,
            summary=(f"Non-finite values at step {pulse.step}"
                     + (f", first in {origin_layers[0]}" if origin_layers else "")),
            description=(f"NaN/Inf in {where}. {origin_text}. \"NaN during training\" is "
                         "most often an explosion that overflowed the float range; see "
                         "gradwatch_nonfinite_total and gradwatch_global_grad_norm just "
                         "before this step."),
            **table_fields(self.name),
        )


def nonfinite_counts(snapshot: Snapshot) -> np.ndarray:
    """[source, layer, kind] counts, without the gradients of an AMP-skipped step."""
    counts = np.nan_to_num(np.asarray(snapshot.nonfinite, dtype=np.float64))
    if counts.ndim != 3:
        return np.zeros((len(NONFINITE_SOURCES), 0, 3))
    if _pulse_of(snapshot).amp_skipped:
        counts = counts.copy()
        counts[NONFINITE_SOURCES.index("gradient")] = 0
    return counts


# ---------------------------------------------------------------------------- AMP


class AmpOverflowStorm:
    """Mixed precision: a burst of steps the GradScaler skipped (overflowed gradients).

    A scaler skips a step now and then by design; ``amp_skipped_steps`` skips within the
    last ``history_steps`` steps is a storm. The skips before the first step that ran are
    the scaler calibrating its initial scale (it starts high, 2^16, and halves until the
    gradients fit), not a storm, and are not counted. Steps without a finite loss scale (no
    scaler) are ignored. Layers named are those whose latest fp16 headroom was below
    ``fp16_headroom_bits``.
    """

    name = "AmpOverflowStorm"

    def __init__(self, thresholds: Thresholds) -> None:
        self.t = thresholds
        self.window: deque[tuple[bool, float]] = deque(maxlen=thresholds.history_steps)
        self.low_headroom: tuple[str, ...] = ()
        self.calibrated = False

    def on_pulse(self, pulse: Pulse) -> Result:
        if pulse.loss_scale is None:
            return None
        self.calibrated = self.calibrated or pulse.optimizer_stepped
        if not self.calibrated:
            return Verdict.CLEAR
        self.window.append((pulse.scaler_skipped, pulse.loss_scale))
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
        if _pulse_of(snapshot).loss_scale is not None:
            bits = fp16_headroom_bits(snapshot.layer_output_max_abs)
            low = np.flatnonzero(bits < self.t.fp16_headroom_bits)
            self.low_headroom = tuple(snapshot.layers[i] for i in low if i < len(snapshot.layers))
        return None


def fp16_headroom_bits(max_abs: np.ndarray) -> np.ndarray:
    """log2(65504 / max|x|) per layer; +inf for all-zero outputs, NaN where undefined."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.log2(FP16_MAX / np.abs(np.asarray(max_abs, dtype=np.float64)))


# ---------------------------------------------------------------------------- per-layer


class LayerCondition:
    """A per-layer condition on Snapshots, sustained over ``unit_warning_samples`` samples.

    ``measure`` gives one value per layer (NaN where it does not apply) and ``bad`` tells
    which values are over the line. The warning names the layers over the line now.
    """

    def __init__(self, name: str, thresholds: Thresholds, *, threshold: float,
                 measure: Callable[[Snapshot], np.ndarray], above: bool,
                 applies: Callable[[Snapshot], bool], summary: str, description: str,
                 ) -> None:
        self.name = name
        self.threshold = threshold
        self.measure, self.above, self.applies = measure, above, applies
        self.summary, self.description = summary, description
        samples = thresholds.unit_warning_samples
        self.state = Sustained(samples, samples)

    def on_snapshot(self, snapshot: Snapshot) -> Result:
        if not self.applies(snapshot):
            return None
        values = np.asarray(self.measure(snapshot), dtype=np.float64)
        with np.errstate(invalid="ignore"):
            bad_mask = (values > self.threshold) if self.above else (values < self.threshold)
        bad = [i for i in np.flatnonzero(bad_mask & _finite(values)) if i < len(snapshot.layers)]
        layers = tuple(snapshot.layers[i] for i in bad)
        worst = (max if self.above else min)(values[bad]) if bad else math.nan

        def finding() -> Finding:
            return Finding(
                name=self.name, step=snapshot.step, time=snapshot.time,
                layers=layers, value=float(worst), threshold=self.threshold,
                summary=self.summary.format(n=len(layers), first=layers[0]),
                description=self.description.format(
                    layers=describe_layers(layers, values[bad]), threshold=self.threshold),
                **table_fields(self.name))

        return self.state.verdict(bool(bad), finding)


def dead_units(thresholds: Thresholds) -> LayerCondition:
    return LayerCondition(
        "DeadUnits", thresholds, threshold=thresholds.dead_ratio, above=True,
        measure=lambda s: s.activation_dead_ratio, applies=lambda s: True,
        summary="{n} layer(s) with mostly dead units, first {first}",
        description=("Fraction of exact-zero activations above {threshold:g} for several "
                     "samples in a row: {layers}. A dead ReLU unit's input is always negative, "
                     "so its output and gradient are 0 and it never recovers. See "
                     "gradwatch_activation_dead_ratio."))


def activation_saturation(thresholds: Thresholds) -> LayerCondition:
    return LayerCondition(
        "ActivationSaturation", thresholds, threshold=thresholds.saturation_ratio, above=True,
        measure=lambda s: s.activation_saturation_ratio, applies=lambda s: True,
        summary="{n} saturated sigmoid/tanh layer(s), first {first}",
        description=("Fraction of sigmoid/tanh outputs in the flat region above {threshold:g} "
                     "for several samples in a row: {layers}. There the derivative is near 0 "
                     "and the gradient to every layer below is cut. See "
                     "gradwatch_activation_saturation_ratio."))


def fp16_headroom(thresholds: Thresholds) -> LayerCondition:
    return LayerCondition(
        "Fp16HeadroomLow", thresholds, threshold=thresholds.fp16_headroom_bits, above=False,
        measure=lambda s: fp16_headroom_bits(s.layer_output_max_abs),
        applies=lambda s: _pulse_of(s).loss_scale is not None,
        summary="{n} layer(s) near the fp16 overflow, first {first}",
        description=("Under mixed precision, layer outputs within {threshold:g} bits "
                     "(log2(65504 / max|x|)) of the fp16 maximum for several samples in a row: "
                     "{layers}. The next growth overflows to Inf."))


# ---------------------------------------------------------------------------- vanishing


class GradientVanishing:
    """The depth profile of per-layer gradient norms collapsed toward the input.

    Value: geometric mean gradient norm of the input-side quarter of the layers over that of
    the output-side quarter; below ``vanishing_depth_ratio`` for ``vanishing_samples``
    samples in a row, and supported by update ratios below ``update_ratio_low`` in the
    affected layers (when update ratios are measured: an optimizer that still moves those
    layers, like Adam, is not stuck). Names the affected layers and the causes it can see.
    """

    name = "GradientVanishing"

    def __init__(self, thresholds: Thresholds) -> None:
        self.t = thresholds
        samples = thresholds.vanishing_samples
        self.state = Sustained(samples, samples)

    def on_snapshot(self, snapshot: Snapshot) -> Result:
        evidence = self._evidence(snapshot)
        return self.state.verdict(evidence is not None,
                                  lambda: self._finding(snapshot, *evidence))

    def _evidence(self, snapshot: Snapshot):
        norms = np.asarray(snapshot.grad_norm, dtype=np.float64)
        n = min(len(norms), len(snapshot.layers))
        present = _finite(norms[:n])
        # Layers whose forward never ran (e.g. an attention out_proj used through its weight)
        # have no known depth: they sit last in depth order, so keep them out of the profile.
        called = _finite(np.asarray(snapshot.activation_mean, dtype=np.float64))[:n]
        if len(called) == n and (present & called).sum() >= MIN_PROFILE_LAYERS:
            present &= called
        present = np.flatnonzero(present)
        if len(present) < MIN_PROFILE_LAYERS:
            return None  # too shallow to have a depth profile
        logs = np.log(np.maximum(norms[present], GRAD_NORM_FLOOR))
        quarter = max(1, len(present) // DEPTH_SIDES)
        reference = math.exp(logs[-quarter:].mean())
        ratio = math.exp(logs[:quarter].mean()) / reference
        if not ratio < self.t.vanishing_depth_ratio:
            return None
        affected = [int(i) for i in present
                    if norms[i] < self.t.vanishing_depth_ratio * reference]
        updates = np.asarray(snapshot.update_ratio, dtype=np.float64)
        measured = [i for i in affected if i < len(updates) and math.isfinite(updates[i])]
        if measured and not any(updates[i] < self.t.update_ratio_low for i in measured):
            return None  # the optimizer still moves them: not stuck
        return ratio, reference, affected

    def _finding(self, snapshot: Snapshot, ratio: float, reference: float,
                 affected: list[int]) -> Finding:
        layers = tuple(snapshot.layers[i] for i in affected)
        norms = np.asarray(snapshot.grad_norm, dtype=np.float64)
        updates = np.asarray(snapshot.update_ratio, dtype=np.float64)
        causes = self._causes(snapshot)
        update_text = ""
        if len(updates) == len(snapshot.layers):
            update_text = (" Their update ratios ||dW||/||W||: "
                           + describe_layers(layers, updates[affected]) + ".")
        return Finding(
            name=self.name, step=snapshot.step, time=snapshot.time,
            layers=layers, value=ratio, threshold=self.t.vanishing_depth_ratio,
            summary=(f"Gradients vanish toward the input: {len(layers)} lower layer(s) at "
                     f"{ratio:.2g}x the output side's gradient norm"),
            description=(
                f"Input-side gradient norms are {ratio:.2g}x the output side's ({reference:.3g})"
                f" for {self.t.vanishing_samples} samples in a row. Affected layers "
                f"(gradient norm): {describe_layers(layers, norms[affected])}.{update_text} "
                f"Likely causes seen: {'; '.join(causes) or 'none visible in the statistics'}. "
                "See the gradwatch_grad_norm depth profile."),
            **table_fields(self.name),
        )

    def _causes(self, snapshot: Snapshot) -> list[str]:
        t, layers = self.t, snapshot.layers
        causes = []
        saturation = np.asarray(snapshot.activation_saturation_ratio, dtype=np.float64)
        saturating = [i for i in np.flatnonzero(_finite(saturation)) if i < len(layers)]
        if saturating:
            flat = [i for i in saturating if saturation[i] > t.saturation_ratio]
            causes.append(
                f"{len(saturating)} layer(s) feed sigmoid/tanh-like activations, whose "
                "derivative (<= 0.25 for sigmoid) shrinks the gradient at every layer"
                + (f"; saturated: {describe_layers([layers[i] for i in flat], saturation[flat])}"
                   if flat else ""))
        dead = np.asarray(snapshot.activation_dead_ratio, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            dead_layers = [i for i in np.flatnonzero(dead > t.dead_ratio) if i < len(layers)]
        if dead_layers:
            causes.append("dead ReLUs in "
                          + describe_layers([layers[i] for i in dead_layers], dead[dead_layers]))
        variance = np.asarray(snapshot.activation_variance, dtype=np.float64)
        usable = np.flatnonzero(_finite(variance) & (variance > 0))
        if len(usable) >= MIN_VARIANCE_LAYERS:
            quarter = max(1, len(usable) // DEPTH_SIDES)
            shrink = (np.exp(np.log(variance[usable[-quarter:]]).mean())
                      / np.exp(np.log(variance[usable[:quarter]]).mean()))
            if shrink < t.activation_variance_shrink:
                causes.append(f"activation variance shrinks {1 / shrink:.3g}x across depth")
        return causes


def default_detectors(thresholds: Thresholds) -> list[object]:
    """Every built-in detector, configured from one Thresholds."""
    from .transformer_detectors import leading_detectors  # it imports this module
    return [
        NonFiniteValues(thresholds),
        GradientExplosion(thresholds),
        LossDivergence(thresholds),
        LossSpike(thresholds),
        GradientVanishing(thresholds),
        AmpOverflowStorm(thresholds),
        dead_units(thresholds),
        activation_saturation(thresholds),
        fp16_headroom(thresholds),
        *leading_detectors(thresholds),  # issue 17: transformer leading indicators
    ]
