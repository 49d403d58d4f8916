"""LossSpike and LossDivergence: the loss against its robust recent level.

The figures (the histories, their medians and robust sigmas, the re-basing on a jump of the
learning rate, the warm-up, the kind of each spike) are decided in records.loss_level, the
same trackers the Prometheus exporter runs, so the rules judge what these detectors judge.
"""

from __future__ import annotations

import math

from ..records.alert_table import spec as alert_spec
from ..records.findings import Finding, Result
from ..records.loss_level import (  # noqa: F401 (robust_level, RollingLevel: re-exported)
    GRADIENT_SPIKE, REPEAT, DivergenceTracker, Rise, RollingLevel, Spike, SpikeTracker,
    robust_level)
from ..records.snapshot import Pulse
from ..records.thresholds import Thresholds
from .base import RATIO_FLOOR, Sustained


def _finding(name: str, pulse: Pulse, threshold: float, summary: str, description: str,
             ) -> Finding:
    spec = alert_spec(name)
    return Finding(
        name=name, severity=spec.severity, step=pulse.step, time=pulse.time,
        layers=(), value=pulse.loss, threshold=threshold, regime=spec.regime,
        summary=summary, description=description + " See gradwatch_loss next to "
        "gradwatch_global_grad_norm: a loss that rises with the gradient norm is an "
        "exploding regime.", remedy=spec.remedy)


class LossSpike:
    """A loss spike that repeats or comes with a gradient-norm spike: a warning.

    A spike (records.loss_level.SpikeTracker): log(loss) more than ``log(loss_spike_factor)``
    and ``loss_noise_sigmas`` robust sigmas above the median of the last ``history_steps``
    non-spike steps. One hard or outlier batch raises its own loss but leaves the weights
    where they were (the next step is back at the median): a lone spike with a steady
    gradient norm warns nothing. An instability shows as a repeat (another spike within
    ``loss_spike_repeat_steps`` steps) or comes with a large gradient (the step that moves
    the weights far): those warn. Judged after ``loss_warmup_steps``; clears after
    ``history_min_steps`` calm steps.
    """

    name = "LossSpike"

    def __init__(self, thresholds: Thresholds) -> None:
        self.t = thresholds
        self.tracker = SpikeTracker(thresholds)
        self.state = Sustained(1, thresholds.history_min_steps)

    def on_pulse(self, pulse: Pulse) -> Result:
        spike = self.tracker.update(pulse)
        if spike is None:
            return None
        return self.state.verdict(spike.warns, lambda: self._spike_finding(pulse, spike))

    def _spike_finding(self, pulse: Pulse, spike: Spike) -> Finding:
        ratio = math.exp(spike.rise)
        why = (f"another spike {spike.since_last} steps before: it repeats"
               if spike.kind == REPEAT else
               f"the global gradient norm is {spike.norm_ratio:.3g}x its median too"
               if spike.kind == GRADIENT_SPIKE else "")
        return _finding(
            self.name, pulse, self.t.loss_spike_factor,
            f"Loss {pulse.loss:.4g} at step {pulse.step}: a spike {ratio:.3g}x the median",
            f"The loss is {ratio:.3g}x the median of the last {spike.history} steps "
            f"({math.exp(spike.median):.4g}), {spike.rise / max(spike.sigma, RATIO_FLOOR):.3g} "
            f"robust sigmas of log(loss) above it, and {why}: an instability, not one hard "
            "batch (which leaves the next step at the median).")


class LossDivergence:
    """The loss's level rose and stays up: critical.

    Level: the median of the last ``loss_divergence_steps`` losses (over half of them must
    be high: the persistence). Reference: the median of up to ``history_steps`` losses before
    them. Divergence: log(level / reference) above ``log(loss_divergence_factor)`` and above
    ``loss_divergence_sigmas`` robust sigmas of the reference window's log(loss)
    (records.loss_level.DivergenceTracker). While it fires the reference stays where the
    loss stood before the rise, so the alert clears when the loss is back, not when the
    window has forgotten. Judged after ``loss_warmup_steps``.
    """

    name = "LossDivergence"

    def __init__(self, thresholds: Thresholds) -> None:
        self.t = thresholds
        self.tracker = DivergenceTracker(thresholds)
        self.state = Sustained(1, thresholds.history_min_steps)

    def on_pulse(self, pulse: Pulse) -> Result:
        rise = self.tracker.update(pulse)
        if rise is None:
            return None
        return self.state.verdict(rise.diverging, lambda: self._rise_finding(pulse, rise))

    def _rise_finding(self, pulse: Pulse, rise: Rise) -> Finding:
        t, up = self.t, rise.level - rise.reference
        ratio = math.exp(up)
        return _finding(
            self.name, pulse, t.loss_divergence_factor,
            f"Loss diverging at step {pulse.step}: its level is {ratio:.3g}x where it stood",
            f"The median loss of the last {rise.recent} steps ({math.exp(rise.level):.4g}) is "
            f"{ratio:.3g}x the median of the {rise.before} steps before "
            f"({math.exp(rise.reference):.4g}), above {t.loss_divergence_factor:g}x and "
            f"{up / max(rise.sigma, RATIO_FLOOR):.3g} robust sigmas of log(loss): the rise is "
            "sustained, not a spike.")
