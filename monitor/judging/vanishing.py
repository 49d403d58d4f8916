"""GradientVanishing: the input side's gradients far below the output side's."""

from __future__ import annotations

import math

import numpy as np

from ..records.derived import depth_profile, gradient_driven_update_ratio
from ..records.findings import Finding, Result, describe_layers, table_fields
from ..records.snapshot import Snapshot
from ..records.thresholds import DEPTH_SIDES, GRAD_NORM_FLOOR, Thresholds
from .base import Sustained, finite_mask

#: Fewest layers with an activation variance whose two sides can be compared.
MIN_VARIANCE_LAYERS = 2


class GradientVanishing:
    """The depth profile of per-layer gradient norms collapsed toward the input.

    Value: geometric mean gradient norm of the input side of the depth profile over that of
    its output side (``records.derived.DepthProfile``: the layers whose forward ran, at
    least PROFILE_MIN_LAYERS); below ``vanishing_depth_ratio`` for ``vanishing_samples``
    samples in a row, with at least one affected layer its gradient barely moves (the part of
    its update ratio along the gradient, ``records.derived.gradient_driven_update_ratio``,
    below ``update_ratio_low`` or not measured: an optimizer that still moves them, like
    Adam, is not stuck; weight decay alone moving them is no sign of life). The Prometheus rule judges the same (tests/test_realistic_alerts.py).
    Names the affected layers and the causes it can see.
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
        profile = depth_profile(norms[:len(snapshot.layers)], snapshot.activation_mean)
        if profile is None:
            return None  # too shallow (or too few layers called) to have a depth profile
        logs = np.log(np.maximum(norms, GRAD_NORM_FLOOR))
        reference = math.exp(logs[profile.output_side].mean())
        ratio = math.exp(logs[profile.input_side].mean()) / reference
        if not ratio < self.t.vanishing_depth_ratio:
            return None
        affected = [int(i) for i in profile.members
                    if norms[i] < self.t.vanishing_depth_ratio * reference]
        moved = gradient_driven_update_ratio(snapshot.update_ratio, snapshot.update_grad_cosine)
        # a layer its gradient still moves (Adam does, small as the gradient is) is not
        # stuck; one weight decay alone moves is, and so may be one not measured
        stuck = [i for i in affected
                 if not (i < len(moved) and moved[i] >= self.t.update_ratio_low)]
        if not stuck:
            return None
        # moved, but not by their gradients (known where the cosine is): what the update
        # ratio alone would have hidden
        decayed = [i for i in stuck if i < len(snapshot.update_ratio)
                   and snapshot.update_ratio[i] >= self.t.update_ratio_low]
        return ratio, reference, affected, decayed

    def _finding(self, snapshot: Snapshot, ratio: float, reference: float,
                 affected: list[int], decayed: list[int]) -> Finding:
        layers = tuple(snapshot.layers[i] for i in affected)
        norms = np.asarray(snapshot.grad_norm, dtype=np.float64)
        updates = np.asarray(snapshot.update_ratio, dtype=np.float64)
        causes = self._causes(snapshot)
        update_text = ""
        if len(updates) == len(snapshot.layers):
            update_text = (" Their update ratios ||dW||/||W||: "
                           + describe_layers(layers, updates[affected]) + ".")
        if decayed:
            causes.append(
                "weight decay moves " + describe_layers([snapshot.layers[i] for i in decayed])
                + ", their gradients do not (their updates do not follow the gradient: "
                "cos(update, gradient) " + describe_layers(
                    [snapshot.layers[i] for i in decayed],
                    np.asarray(snapshot.update_grad_cosine)[decayed]) + ")")
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
        saturating = [i for i in np.flatnonzero(finite_mask(saturation)) if i < len(layers)]
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
        usable = np.flatnonzero(finite_mask(variance) & (variance > 0))
        if len(usable) >= MIN_VARIANCE_LAYERS:
            quarter = max(1, len(usable) // DEPTH_SIDES)
            shrink = (np.exp(np.log(variance[usable[-quarter:]]).mean())
                      / np.exp(np.log(variance[usable[:quarter]]).mean()))
            if shrink < t.activation_variance_shrink:
                causes.append(f"activation variance shrinks {1 / shrink:.3g}x across depth")
        return causes
