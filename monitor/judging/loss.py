"""LossSpike and LossDivergence: the loss against its robust recent level."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable

from ..records.alert_table import spec as alert_spec
from ..records.derived import lr_jumped
from ..records.findings import Finding, Result
from ..records.snapshot import Pulse
from ..records.thresholds import IQR_PER_SIGMA, Thresholds
from .base import RATIO_FLOOR, Sustained

#: A step within this fraction of the bar (in log) of the level reused from a few steps ago
#: level is judged again on the exact window: the approximation is off by far less.
EXACT_LEVEL_MARGIN = 0.5


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
    """What the two loss detectors share: a positive, finite loss after the warm-up, judged
    against a baseline that a raised learning rate re-bases.

    A raised lr (a warm-up, a warm restart, any scheduled increase) moves the loss to a new
    level by design: SGDR raises it ~25,000x at each restart and the loss rises several-fold
    over tens of steps (momentum builds the larger steps up) before it recovers. That is the
    start of training again: the losses before the raise are no reference for those after
    it, and the first ``loss_warmup_steps`` after it are no baseline, as those of the run's
    start are not. So the raise re-bases (``rebase``): the histories start again, and the
    warm-up too.
    """

    name = ""

    def __init__(self, thresholds: Thresholds) -> None:
        self.t = thresholds
        self.state = Sustained(1, thresholds.history_min_steps)
        self.seen = 0
        self.learning_rates: tuple[tuple[float, ...], ...] = ()

    def rebase(self) -> None:
        """Forget the baseline (each detector its own histories)."""

    def _log_loss(self, pulse: Pulse) -> float | None:
        """log(loss) raised to ``loss_floor``, or None when this loss cannot be judged
        (absent, non-finite, <= 0: ratios of a loss only make sense while it is positive).
        A learning rate that jumped re-bases first."""
        if lr_jumped(self.learning_rates, pulse.learning_rates):
            self.seen = 0
            self.rebase()
        self.learning_rates = pulse.learning_rates or self.learning_rates
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

    def rebase(self) -> None:
        self.history = RollingLevel(self.t.history_steps)

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

    def rebase(self) -> None:
        self.recent.clear()
        self.before = RollingLevel(self.t.history_steps)

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
