"""Figures decided once from a step's host data, and carried on its Pulse or Snapshot.

Sinks only write what they are handed: whether clipping engaged, whether the GradScaler
skipped the step, a depth group's update ratio, which layers make the depth profile are
decided here, by pure functions over plain floats and numpy arrays, so the Prometheus
exposition, TensorBoard, forensics bundles and the detectors cannot judge them
differently. No torch here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .thresholds import DEPTH_SIDES

#: Relative margin below the unclipped norm that counts as "clipping reduced the norm": the
#: clipped norm is re-measured in float32, so an untouched norm can differ by rounding.
CLIP_TOLERANCE = 1e-6


def scaler_skipped(loss_scale: float | None, optimizer_stepped: bool) -> bool:
    """A step whose optimizer step the AMP GradScaler skipped (its gradients overflowed)."""
    return loss_scale is not None and not optimizer_stepped


#: A learning rate more than this many times the last step's jumped: a warm restart or a step
#: up starts training over at a new level, so the loss before it is no baseline. A ramp (a
#: linear or exponential warm-up) moves the lr by far less a step (a linear one by (t+1)/t),
#: and the loss it drives is judged as it goes: an overshooting warm-up is a divergence.
LR_JUMP = 2.0


def lr_jumped(before: tuple[tuple[float, ...], ...], now: tuple[tuple[float, ...], ...]
              ) -> bool:
    """Whether any param group's learning rate (per optimizer, per group, as a Pulse carries
    them) jumped from ``before`` to ``now`` (``LR_JUMP``)."""
    if now == before:  # most steps: one comparison in C, no generator (judged every step)
        return False
    return any(new > old * LR_JUMP
               for groups_before, groups_now in zip(before, now)
               for old, new in zip(groups_before, groups_now))


def scaler_overflowed(skipped_by_scaler: bool, calibrating: bool) -> bool:
    """A step the GradScaler skipped once calibrated: an overflow storm's count. Its skips
    before the first applied step are it calibrating: it starts at 2^16 and halves until
    the gradients fit in fp16, by design and once (a healthy run with gradients of ~32 skips
    its first 5 steps so)."""
    return skipped_by_scaler and not calibrating


def amp_skipped(loss: float | None, skipped_by_scaler: bool) -> bool:
    """A step the GradScaler skipped with a finite loss: its overflowed gradients are the
    scaler's business (it lowers the scale and retries), not a divergence."""
    return skipped_by_scaler and loss is not None and math.isfinite(loss)


def clip_engaged(global_grad_norm: float | None, clipped_grad_norm: float | None,
                 skipped_by_scaler: bool = False) -> bool | None:
    """Whether gradient clipping reduced the global norm (beyond CLIP_TOLERANCE); None when
    clipping is not tracked or no gradient was seen, False on a step the GradScaler skipped
    (its overflowed gradients were never applied)."""
    if clipped_grad_norm is None or global_grad_norm is None:
        return None
    if skipped_by_scaler:
        return False
    return clipped_grad_norm < global_grad_norm * (1 - CLIP_TOLERANCE)


def group_update_ratio(update_norm: np.ndarray, updated_weight_norm: np.ndarray) -> float:
    """||delta W|| / ||W|| of a group of updated layers as ONE parameter set:
    sqrt(sum ||delta W_l||^2) / sqrt(sum ||W_l||^2), from each layer's update norm and the
    norm of its updated parameters before the step (a partly frozen layer counts only what
    the optimizer moved).

    A big layer weighs by its size, as in the ratio of the whole group; an average of the
    layers' ratios would let a tiny bias outvote a frozen-but-for-its-bias block. NaN for
    no layer; a NaN or Inf norm (a layer whose values overflowed) propagates.
    """
    update_norm = np.asarray(update_norm, dtype=np.float64)
    weights = np.asarray(updated_weight_norm, dtype=np.float64)
    if not len(update_norm):
        return math.nan
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return float(np.sqrt(np.sum(update_norm ** 2)) / np.sqrt(np.sum(weights ** 2)))


#: Fewest layers in a depth profile: an input side, an output side and one layer between
#: (a two-layer model has no depth for a gradient to vanish through).
PROFILE_MIN_LAYERS = 3


@dataclass(frozen=True)
class DepthProfile:
    """The layers GradientVanishing compares, as positions in depth order.

    Its members are the layers whose forward ran in the sampled step (they have an
    activation record) with a finite gradient norm: a layer used only through its weight
    (an attention out_proj) has no known depth and sits last, so it would pose as the
    output side. Its sides are the members whose depth position is below ``quarter``
    (input) or at least ``len(members) - quarter`` (output), ``quarter`` being
    1 / DEPTH_SIDES of the members (at least one). The Prometheus rule computes the same
    from ``gradwatch_activation_mean``'s presence and ``gradwatch_layer_depth``
    (monitor/ops/rules.py, tests/test_realistic_alerts.py).
    """

    members: np.ndarray
    input_side: np.ndarray
    output_side: np.ndarray


def depth_profile(grad_norm: np.ndarray, activation_mean: np.ndarray) -> DepthProfile | None:
    """The depth profile of one Snapshot's per-layer gradient norms and activation means (in
    depth order); None when it has fewer than PROFILE_MIN_LAYERS members."""
    norms = np.asarray(grad_norm, dtype=np.float64)
    called = ~np.isnan(np.asarray(activation_mean, dtype=np.float64))
    n = min(len(norms), len(called))
    members = np.flatnonzero(np.isfinite(norms[:n]) & called[:n])
    if len(members) < PROFILE_MIN_LAYERS:
        return None
    quarter = max(1, len(members) // DEPTH_SIDES)
    sides = members[members < quarter], members[members >= len(members) - quarter]
    if not all(len(side) for side in sides):
        return None  # a side of non-finite norms only: NonFiniteValues' business
    return DepthProfile(members, *sides)


def gradient_driven_update_ratio(update_ratio: np.ndarray, update_grad_cosine: np.ndarray
                                 ) -> np.ndarray:
    """Per layer, the part of ||dW|| / ||W|| that follows the gradient: the update ratio
    times cos(W_before - W_after, grad), at least 0.

    Weight decay moves every layer along its own weights (by lr x wd / (1 - momentum) a
    step under SGD), whatever its gradient: a layer whose gradient vanished still shows an
    update ratio of ~2.5e-4 under the textbook SGD recipe (lr 0.05, momentum 0.9, wd 5e-4),
    but that update does not follow its gradient (cosine ~0). The projection on the gradient
    is what the gradient moves, under SGD (cosine ~1) and Adam (clearly positive while it
    follows the gradient) alike. Where the cosine is not measured (or undefined: no update),
    the update ratio itself, the best figure left; NaN where that is not measured either.
    """
    ratio = np.asarray(update_ratio, dtype=np.float64)
    cosine = np.asarray(update_grad_cosine, dtype=np.float64)
    if cosine.shape != ratio.shape:
        return ratio
    return np.where(np.isnan(cosine), ratio, ratio * np.maximum(cosine, 0.0))
