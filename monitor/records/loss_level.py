"""The loss's robust level counted in steps: what LossSpike and LossDivergence judge, decided
once here so that the Prometheus exporter publishes the same figures and counts.

The detectors see every step; a scrape sees one step in many (15 at 1 s a step, 3 at 5 s),
so quantiles over a time window of scraped losses are of a few losses at a slow pace, and
noisy on the heavy-tailed losses near a floor. The exporter runs these same trackers on
every Pulse (monitor/sinks/prometheus.py) and publishes their references (medians, robust
sigmas) and the spikes they judged, so the rules judge as the trainer does at any pace.
Plain Python, no torch or numpy: it runs every step, on ~100 values.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from .derived import lr_jumped
from .snapshot import Pulse
from .thresholds import GRAD_NORM_FLOOR, IQR_PER_SIGMA, Thresholds

#: A step within this fraction of the bar (in log) of the level reused from a few steps ago
#: is judged again on the exact window: the approximation is off by far less.
EXACT_LEVEL_MARGIN = 0.5

#: The kinds of loss spike (gradwatch_loss_spike_steps' ``kind`` label). A spike is one
#: step's loss far above where the loss stands. LONE: one hard or outlier batch raises its own
#: loss but leaves the weights where they were (the next step is back at the median): no
#: warning. REPEAT: another spike within loss_spike_repeat_steps steps before it, and
#: GRADIENT_SPIKE: the step's global gradient norm spiked too (the step that moves the
#: weights far): an instability shows so, and LossSpike warns.
LONE, REPEAT, GRADIENT_SPIKE = "lone", "repeat", "gradient_spike"
SPIKE_KINDS = (LONE, REPEAT, GRADIENT_SPIKE)
WARNING_SPIKES = (REPEAT, GRADIENT_SPIKE)


def robust_level(log_values: Iterable[float]) -> tuple[float, float]:
    """Median and robust sigma (IQR / 1.349, the sigma of a normal with that IQR) of log
    values (linear interpolation between ranks, as Prometheus' quantile_over_time)."""
    ordered = sorted(log_values)
    last = len(ordered) - 1

    def quantile(q: float) -> float:
        rank = q * last
        low = int(rank)
        high = min(low + 1, last)
        return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)

    return quantile(0.5), (quantile(0.75) - quantile(0.25)) / IQR_PER_SIGMA


class RollingLevel:
    """Recent log values with their median and robust sigma (``robust_level``).

    The level moves slowly, so ``level(exact=False)`` reuses the figures of up to
    ``REFRESH`` appends ago: a sort per step would cost more than the other detectors
    together. The trackers ask for the exact figures whenever a step comes near their bar,
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


class _LossSteps:
    """What both trackers share: a positive, finite loss after the warm-up, judged against a
    baseline that a jump of the learning rate re-bases.

    A jump of the lr (a warm restart, a step up: records.derived.LR_JUMP) moves the loss to a
    new level by design: SGDR raises it ~25,000x at each restart and the loss rises
    several-fold over tens of steps (momentum builds the larger steps up) before it
    recovers. That is the start of training again: the losses before the jump are no
    reference for those after it, and the first ``loss_warmup_steps`` after it are no
    baseline, as those of the run's start are not. So the jump re-bases (``rebase``): the
    histories start again, and the warm-up too.
    """

    def __init__(self, thresholds: Thresholds) -> None:
        self.t = thresholds
        self.seen = 0
        self.learning_rates: tuple[tuple[float, ...], ...] = ()

    def rebase(self) -> None:
        """Forget the baseline (each tracker its own histories)."""

    def log_loss(self, pulse: Pulse) -> float | None:
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


@dataclass(frozen=True)
class Spike:
    """One step's loss judged against the history (log figures). ``kind`` None: no spike."""

    rise: float  # log(loss) - median
    median: float
    sigma: float
    history: int  # steps in the history
    kind: str | None = None
    #: the step's global gradient norm over the median of the history's norms, when judged
    norm_ratio: float | None = None
    #: steps since the spike before, when it is a repeat
    since_last: int | None = None

    @property
    def warns(self) -> bool:
        return self.kind in WARNING_SPIKES


#: A step judged and found no spike.
CALM: Final = Spike(0.0, 0.0, 0.0, 0)


class SpikeTracker(_LossSteps):
    """LossSpike's figures: each step's log(loss) against the median of the last
    ``history_steps`` non-spike steps (the spikes stay out of the history, so a burst does
    not raise the bar), and the kind of each spike.

    A spike: log(loss) more than ``log(loss_spike_factor)`` and ``loss_noise_sigmas`` robust
    sigmas above that median, after ``loss_warmup_steps`` with ``history_min_steps`` of
    history. A gradient-norm spike is judged by the same two bars, on the global gradient
    norm (before clipping) against the norms of the history's steps: a step whose gradient
    is as far off its level as a spiking loss is off its own.
    """

    def __init__(self, thresholds: Thresholds) -> None:
        super().__init__(thresholds)
        self.bar = math.log(thresholds.loss_spike_factor)
        self.rebase()

    def rebase(self) -> None:
        self.history = RollingLevel(self.t.history_steps)
        self.norms = RollingLevel(self.t.history_steps)
        self.last_spike: int | None = None

    @property
    def judging(self) -> bool:
        return not self.warming_up and len(self.history) >= self.t.history_min_steps

    def update(self, pulse: Pulse) -> Spike | None:
        """The step's verdict: None when its loss cannot be judged, CALM when it is no
        spike (or not judged yet), else the Spike with its kind."""
        value = self.log_loss(pulse)
        if value is None:
            return None
        norm = pulse.global_grad_norm
        log_norm = (math.log(max(norm, GRAD_NORM_FLOOR))
                    if norm is not None and math.isfinite(norm) and not pulse.amp_skipped
                    else None)
        if self.judging:
            median, sigma = self.history.level()
            if value - median > self.bar * EXACT_LEVEL_MARGIN:
                median, sigma = self.history.level(exact=True)
                rise = value - median
                if rise > self.bar and rise > self.t.loss_noise_sigmas * sigma:
                    return self._spike(pulse.step, rise, median, sigma, log_norm)
        self.history.append(value)
        if log_norm is not None:
            self.norms.append(log_norm)
        return CALM

    def _spike(self, step: int, rise: float, median: float, sigma: float,
               log_norm: float | None) -> Spike:
        norm_ratio, kind = None, LONE
        if log_norm is not None and len(self.norms) >= self.t.history_min_steps:
            norm_median, norm_sigma = self.norms.level(exact=True)
            norm_rise = log_norm - norm_median
            norm_ratio = math.exp(norm_rise)
            if norm_rise > self.bar and norm_rise > self.t.loss_noise_sigmas * norm_sigma:
                kind = GRADIENT_SPIKE
        since = None if self.last_spike is None else step - self.last_spike
        if kind == LONE and since is not None and since <= self.t.loss_spike_repeat_steps:
            kind = REPEAT
        self.last_spike = step
        return Spike(rise, median, sigma, len(self.history), kind, norm_ratio,
                     since if kind == REPEAT else None)

    def reference(self) -> tuple[float, float] | None:
        """(median loss, robust sigma of log(loss)) of the history, exact; None while the
        loss is not judged (the warm-up, too little history)."""
        if not self.judging:
            return None
        median, sigma = robust_level(self.history.values)
        return math.exp(median), sigma


@dataclass(frozen=True)
class Rise:
    """The loss's current level against where it stood (log figures)."""

    level: float
    reference: float
    sigma: float
    recent: int  # steps in the level's window
    before: int  # steps in the reference's
    diverging: bool


#: A step judged and found nowhere near a divergence.
STEADY: Final = Rise(0.0, 0.0, 0.0, 0, 0, False)


class DivergenceTracker(_LossSteps):
    """LossDivergence's figures. Level: the median of the last ``loss_divergence_steps``
    losses (over half of them must be high: the persistence). Reference: the median of up to
    ``history_steps`` losses before them. Divergence: log(level / reference) above
    ``log(loss_divergence_factor)`` and ``loss_divergence_sigmas`` robust sigmas of the
    reference window's log(loss). While it diverges, and for ``history_min_steps`` steps
    after, the reference stays where the loss stood before the rise, so the divergence ends
    when the loss is back, not when the window has forgotten.
    """

    def __init__(self, thresholds: Thresholds) -> None:
        super().__init__(thresholds)
        self.bar = math.log(thresholds.loss_divergence_factor)
        self.recent: deque[float] = deque(maxlen=thresholds.loss_divergence_steps)
        self.before = RollingLevel(thresholds.history_steps)
        self.calm = thresholds.history_min_steps  # judged steps since the last diverging

    def rebase(self) -> None:
        self.recent.clear()
        self.before = RollingLevel(self.t.history_steps)

    @property
    def judging(self) -> bool:
        return not self.warming_up and len(self.before) >= self.t.history_min_steps

    def update(self, pulse: Pulse) -> Rise | None:
        """The step's verdict: None when its loss cannot be judged, else the Rise (STEADY
        when no recent loss comes near the bar, or not judged yet)."""
        value = self.log_loss(pulse)
        if value is None:
            return None
        if len(self.recent) == self.recent.maxlen and self.calm >= self.t.history_min_steps:
            self.before.append(self.recent[0])
        self.recent.append(value)
        rise = self._rise()
        self.calm = 0 if rise.diverging else self.calm + 1
        return rise

    def _rise(self) -> Rise:
        if not self.judging:
            return STEADY
        reference, sigma = self.before.level()
        if max(self.recent) - reference <= self.bar * EXACT_LEVEL_MARGIN:  # none near it
            return STEADY
        level, _ = robust_level(self.recent)
        reference, sigma = self.before.level(exact=True)
        rise = level - reference
        diverging = rise > self.bar and rise > self.t.loss_divergence_sigmas * sigma
        return Rise(level, reference, sigma, len(self.recent), len(self.before), diverging)

    def levels(self) -> tuple[float, float, float] | None:
        """(recent median loss, reference median loss, robust sigma of the reference's
        log(loss)), exact; None while the loss is not judged."""
        if not self.judging:
            return None
        reference, sigma = robust_level(self.before.values)
        return math.exp(robust_level(self.recent)[0]), math.exp(reference), sigma


#: The gauges of LossFigures.gauges (gradwatch_<name>), in the order exported.
LOSS_GAUGES = ("loss_median", "loss_log_sigma", "loss_recent_median", "loss_reference_median",
               "loss_reference_log_sigma")


class LossFigures:
    """Both trackers fed every step, and the spikes counted by kind: what the Prometheus
    exporter publishes, so the loss rules judge the detectors' own figures."""

    def __init__(self, thresholds: Thresholds) -> None:
        self.spikes = SpikeTracker(thresholds)
        self.rise = DivergenceTracker(thresholds)
        self.spike_steps = dict.fromkeys(SPIKE_KINDS, 0)

    def update(self, pulse: Pulse) -> None:
        spike = self.spikes.update(pulse)
        if spike is not None and spike.kind is not None:
            self.spike_steps[spike.kind] += 1
        self.rise.update(pulse)

    def gauges(self) -> dict[str, float]:
        """gradwatch_<name> -> value of LOSS_GAUGES, exact; those of a tracker that does not
        judge the loss yet (its warm-up, after the run's start or a jump of the lr) left out."""
        out: dict[str, float] = {}
        reference, levels = self.spikes.reference(), self.rise.levels()
        if reference is not None:
            out.update(zip(LOSS_GAUGES[:2], reference))
        if levels is not None:
            out.update(zip(LOSS_GAUGES[2:], levels))
        return out
