"""Detectors of the leading signs of transformer instability, and of skipped updates.

They follow the protocol of ``judging.base`` (host data in, a verdict out) and judge
the statistics of ``monitor.attention`` and ``monitor.update_stats`` on Snapshots; a
missing statistic (a model without attention, a non-Adam optimizer) gives no verdict.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from ..records.findings import Finding, Result, describe_layers, table_fields
from ..records.snapshot import Pulse, Snapshot
from ..records.thresholds import Thresholds
from .base import Detector, Sustained


def _warning(name: str, snapshot: Snapshot, **fields) -> Finding:
    """A Finding about ``snapshot``'s step, its severity and remedy from the alert table."""
    return Finding(name=name, step=snapshot.step, time=snapshot.time, **table_fields(name),
                   **fields)


def _peak(values: np.ndarray) -> float:
    """The largest value, +Inf for NaN/Inf (a logit that overflowed is the largest)."""
    values = np.asarray(values, dtype=np.float64)
    return math.inf if not np.isfinite(values).all() else float(values.max())


class AttentionLogitGrowth:
    """The max pre-softmax attention logit above ``attention_logit_level`` or growing by
    ``attention_logit_growth_factor`` over ``leading_samples`` samples (once above half
    the level), for ``leading_samples`` samples in a row; the attention entropy collapses
    with it (Wortsman et al. 2023). Clears when it holds for no sample as long."""

    name = "AttentionLogitGrowth"

    def __init__(self, thresholds: Thresholds) -> None:
        self.t = thresholds
        samples = int(thresholds.leading_samples)
        self.recent: deque[float] = deque(maxlen=samples + 1)
        self.state = Sustained(samples, samples)

    def on_snapshot(self, snapshot: Snapshot) -> Result:
        if not snapshot.attention_layers:
            return None
        t = self.t
        peak = _peak(snapshot.attention_logit_max)
        self.recent.append(peak)
        reasons = []
        if peak > t.attention_logit_level:
            reasons.append(f"above {t.attention_logit_level:g}")
        first = self.recent[0]
        if (len(self.recent) == self.recent.maxlen and peak > t.attention_logit_level / 2
                and first > 0 and peak >= t.attention_logit_growth_factor * first):
            reasons.append(f"{peak / first:.3g}x in {len(self.recent) - 1} samples")
        return self.state.verdict(bool(reasons), lambda: self._finding(snapshot, peak, reasons))

    def _finding(self, snapshot: Snapshot, peak: float, reasons: list[str]) -> Finding:
        values = np.nan_to_num(np.asarray(snapshot.attention_logit_max), nan=math.inf)
        worst = np.argsort(-values)[:4]
        layers = tuple(snapshot.attention_layers[i] for i in worst)
        entropy = float(np.min(snapshot.attention_entropy))
        return _warning(
            self.name, snapshot, layers=layers, value=peak, threshold=self.t.attention_logit_level,
            summary=f"Attention logits up to {peak:.4g} at step {snapshot.step}: growing",
            description=(
                f"The max pre-softmax attention logit is {peak:.4g} ({'; '.join(reasons)}), "
                f"in {describe_layers(layers, values[worst])}; the lowest mean attention "
                f"entropy is {entropy:.3g} nats. Growing logits collapse attention onto one "
                "key (entropy toward 0) and precede loss divergence by many steps. See "
                "gradwatch_attention_logit_max and gradwatch_attention_entropy."),
        )


class OutputLogitDivergence:
    """The output logits' log-partition log Z far from 0 through their shared shift: |mean
    log Z| above ``output_logsumexp_level``, or, within the last ``history_steps`` samples,
    |log Z| up by more than ``output_logsumexp_drift`` nats of which the shift (the mean
    logit) carried as many, for ``leading_samples`` samples in a row.

    log Z = mean logit + logsumexp(logits - mean logit). The second term grows as the model
    becomes confident (a healthy classifier's log Z climbs 10 nats and more); the first is
    the shift that the softmax, and so the loss, cannot see: only it drifts without bound
    (what z-loss prevents). Judging the shift keeps confident healthy models quiet."""

    name = "OutputLogitDivergence"

    def __init__(self, thresholds: Thresholds) -> None:
        self.t = thresholds
        self.recent: deque[tuple[float, float]] = deque(maxlen=int(thresholds.history_steps))
        samples = int(thresholds.leading_samples)
        self.state = Sustained(samples, samples)

    def on_snapshot(self, snapshot: Snapshot) -> Result:
        log_z, shift = snapshot.output_logit_logsumexp, snapshot.output_logit_mean
        if math.isnan(log_z):
            return None
        t = self.t
        reasons = []
        if abs(log_z) > t.output_logsumexp_level:
            reasons.append(f"|log Z| above {t.output_logsumexp_level:g}")
        if self.recent and not math.isnan(shift):
            early_z, early_shift = min(self.recent, key=lambda r: abs(r[0]))
            away = math.copysign(1.0, log_z) * (shift - early_shift)
            if min(abs(log_z) - abs(early_z), away) > t.output_logsumexp_drift:
                reasons.append(f"the logits' shift moved {away:.3g} nats away from 0 (log Z "
                               f"{early_z:.3g} -> {log_z:.3g}) within {len(self.recent)} "
                               "samples")
        if math.isfinite(log_z) and math.isfinite(shift):
            self.recent.append((log_z, shift))
        return self.state.verdict(bool(reasons), lambda: self._finding(snapshot, reasons))

    def _finding(self, snapshot: Snapshot, reasons: list[str]) -> Finding:
        log_z = snapshot.output_logit_logsumexp
        return _warning(
            self.name, snapshot, layers=(), value=log_z, threshold=self.t.output_logsumexp_level,
            summary=f"Output log Z {log_z:.4g} at step {snapshot.step}: drifting",
            description=(
                f"The mean log-partition of the output logits is {log_z:.4g} "
                f"({'; '.join(reasons)}); the max output logit is "
                f"{snapshot.output_logit_max:.4g}, the mean {snapshot.output_logit_mean:.4g}. "
                "The softmax is invariant to a shift of the logits, so nothing stops them "
                "from drifting until they overflow or saturate. See "
                "gradwatch_output_logit_logsumexp."),
        )


class AdamUpdateDecorrelation:
    """Adam's feedback loop (arXiv 2304.09871): its second moment has collapsed toward eps
    (the median over layers of the eps-dominated ratio above ``eps_dominated_ratio``) and,
    since it collapsed, the gradient norm has grown ``eps_dominated_grad_growth`` fold (the
    median step norm of the last ``leading_samples`` samples against the lowest such median
    since the collapse), for ``leading_samples`` samples in a row.

    With sqrt(v_hat) under 10 eps, Adam's step is lr * m_hat / eps within a factor 11: SGD
    at a learning rate lr / eps, about a million times Adam's own, whose steps follow the
    gradient's size. A gradient that grows there grows the steps with it, and the steps grow
    the gradient: the loss spikes next. The collapse alone is no alarm: a run that fits its
    data exactly sits there with a falling or steady gradient (on the CPU reproduction:
    mu-centering, z-loss and label smoothing; no spike followed). Medians: one layer without
    gradient is not the model. The median update/gradient cosine is reported with it."""

    name = "AdamUpdateDecorrelation"

    def __init__(self, thresholds: Thresholds) -> None:
        self.t = thresholds
        samples = self.samples = int(thresholds.leading_samples)
        self.recent_norms: deque[list[float]] = deque(maxlen=samples)
        self.trough = math.inf  # lowest median gradient norm since the collapse
        self.state = Sustained(samples, samples)

    def on_snapshot(self, snapshot: Snapshot) -> Result:
        cosine = np.asarray(snapshot.update_grad_cosine, dtype=np.float64)
        eps = np.asarray(snapshot.adam_eps_dominated_ratio, dtype=np.float64)
        if not np.isfinite(cosine).any():
            return None
        t = self.t
        median_eps = float(np.median(eps[np.isfinite(eps)])) if np.isfinite(eps).any() else 0.0
        collapsed = median_eps > t.eps_dominated_ratio
        self._push_recent_norms(snapshot)
        if not collapsed:
            self.trough = math.inf
            return self.state.verdict(False, lambda: None)
        norm = self._recent_norm()
        if norm > 0:  # NaN (a window not yet full, no finite norm) and 0 are no level
            self.trough = min(self.trough, norm)
        growth = norm / self.trough if norm > 0 else 0.0
        return self.state.verdict(growth >= t.eps_dominated_grad_growth, lambda: self._finding(
            snapshot, median_eps, cosine, growth, norm))

    def _push_recent_norms(self, snapshot: Snapshot) -> None:
        """Adds this sample's finite step gradient norms."""
        self.recent_norms.append([p.global_grad_norm for p in snapshot.pulses
                                  if p.global_grad_norm is not None
                                  and math.isfinite(p.global_grad_norm)])

    def _recent_norm(self) -> float:
        """The median finite step gradient norm of the last ``leading_samples`` samples'
        steps (NaN until as many samples are in): one noisy step is no level. Asked only
        while the second moment has collapsed: a median per sample would cost more than the
        other detectors of a Snapshot together."""
        norms = [n for sample in self.recent_norms for n in sample]
        if len(self.recent_norms) < self.samples or not norms:
            return math.nan
        return float(np.median(norms))

    def _finding(self, snapshot: Snapshot, median_eps: float, cosine: np.ndarray,
                 growth: float, norm: float) -> Finding:
        low = [i for i in np.argsort(np.nan_to_num(cosine, nan=np.inf))[:4]
               if np.isfinite(cosine[i])]
        layers = tuple(snapshot.layers[i] for i in low)
        median_cosine = float(np.median(cosine[np.isfinite(cosine)]))
        return _warning(
            self.name, snapshot, layers=layers, value=growth,
            threshold=self.t.eps_dominated_grad_growth,
            summary=(f"Adam updates decorrelated at step {snapshot.step}: the gradient up "
                     f"{growth:.3g}x under a collapsed second moment"),
            description=(
                f"Adam's second moment has collapsed toward eps (median eps-dominated ratio "
                f"{median_eps:.3g}, above {self.t.eps_dominated_ratio:g}) and since then the "
                f"gradient norm has grown {growth:.3g}x, from {self.trough:.3g} to {norm:.3g} "
                f"(median over {self.samples} samples' steps). There Adam steps "
                "like SGD at a learning rate lr / eps: a growing gradient grows its steps, "
                "which grow the gradient, and a loss spike follows. Median update/gradient "
                f"cosine {median_cosine:.3g}, lowest in "
                f"{describe_layers(layers, cosine[low])}. What the loss does not hold (such "
                "as the output logits' shared shift, gradwatch_output_logit_mean) walks "
                "meanwhile. See gradwatch_adam_eps_dominated_ratio, "
                "gradwatch_global_grad_norm and gradwatch_update_grad_cosine."),
        )


class UpdateSkipped:
    """Skip-on-spike undid a step's update (an outlier loss or gradient norm). Clears after
    ``history_min_steps`` kept steps."""

    name = "UpdateSkipped"

    def __init__(self, thresholds: Thresholds) -> None:
        self.state = Sustained(1, int(thresholds.history_min_steps))

    def on_pulse(self, pulse: Pulse) -> Result:
        if pulse.update_skipped is None:
            return None
        return self.state.verdict(pulse.update_skipped, lambda: Finding(
            name=self.name, step=pulse.step, time=pulse.time, layers=(), **table_fields(self.name),
            value=math.nan if pulse.loss is None else pulse.loss, threshold=math.nan,
            summary=f"Update of step {pulse.step} skipped: outlier loss or gradient norm",
            description=(
                f"Step {pulse.step} had loss {pulse.loss} and global gradient norm "
                f"{pulse.global_grad_norm}, an outlier against the recent steps, so its "
                "optimizer update was undone on the device (skip-on-spike). Count: "
                "gradwatch_skipped_updates_total."),
        ))


def leading_detectors(thresholds: Thresholds) -> list[Detector]:
    """The detectors of this module, configured from one Thresholds."""
    return [AttentionLogitGrowth(thresholds), OutputLogitDivergence(thresholds),
            AdamUpdateDecorrelation(thresholds), UpdateSkipped(thresholds)]
