"""Host-side records of training steps: what everything downstream of the probes reads.

No torch here: detectors and sinks see plain floats and numpy arrays only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .derived import amp_skipped, clip_engaged, scaler_overflowed, scaler_skipped

#: Sources of non-finite values, in the order of the ``nonfinite`` arrays' first axis.
NONFINITE_SOURCES = ("gradient", "activation", "parameter")
#: Kinds of non-finite values, in the order of the ``nonfinite`` arrays' last axis.
NONFINITE_KINDS = ("nan", "posinf", "neginf")


@dataclass(frozen=True)
class Pulse:
    """The always-on figures of ONE optimizer step (every step, sampled or not).

    Values are None where not measured (no loss or gradients seen in the step, clipping not
    tracked, no GradScaler); NaN and Inf are real values.

    Attributes:
        step: the global step (optimizer steps done before this one).
        time: wall-clock time (seconds since the epoch) when the step ended.
        loss: the loss backpropagated in the step (the sum of the micro-batch losses as
            passed to backward, i.e. the mean loss under gradient accumulation).
        global_grad_norm: L2 norm over all gradients before clipping.
        clipped_grad_norm: L2 norm over all gradients after clipping, when tracked.
        loss_scale: the AMP GradScaler's scale after its update.
        optimizer_stepped: whether at least one optimizer step ran (False for a step that a
            GradScaler skipped because of overflowed gradients).
        learning_rates: per optimizer (in the order watched), the lr of each param group.
        local_gradients_finite: under DDP with gradwatch's communication hook, whether THIS
            rank's gradients were finite before the all-reduce (False on the rank a NaN
            came from).
        update_skipped: with skip-on-spike on, whether the step's optimizer update was
            undone because its loss or gradient norm was an outlier (None: off).
        scaler_calibrating: no optimizer step was applied before this one in the run (the
            GradScaler's skips then are it calibrating its initial scale).
        scaler_skipped: decided from the above (monitor/records/derived.py), not passed: the AMP
            GradScaler skipped the optimizer step (its gradients overflowed).
        scaler_overflowed: decided, not passed: a skip that is no calibration (an overflow
            of a scaler already calibrated): what AmpOverflowStorm and its rule count.
        amp_skipped: decided, not passed: the GradScaler skipped the step with a finite
            loss (its overflowed gradients are the scaler's business, not a divergence).
        grad_clip_engaged: decided from the above, not passed: whether clipping reduced
            the global norm (None: clipping not tracked or no gradients).
    """

    step: int
    time: float
    loss: float | None
    global_grad_norm: float | None
    clipped_grad_norm: float | None = None
    loss_scale: float | None = None
    optimizer_stepped: bool = True
    learning_rates: tuple[tuple[float, ...], ...] = ()
    local_gradients_finite: bool | None = None
    update_skipped: bool | None = None
    scaler_calibrating: bool = False
    scaler_skipped: bool = field(init=False)
    scaler_overflowed: bool = field(init=False)
    amp_skipped: bool = field(init=False)
    grad_clip_engaged: bool | None = field(init=False)

    def __post_init__(self) -> None:
        # decided once here, where every Pulse is built, so no sink re-judges them
        by_scaler = scaler_skipped(self.loss_scale, self.optimizer_stepped)
        skipped = amp_skipped(self.loss, by_scaler)
        object.__setattr__(self, "scaler_skipped", by_scaler)
        object.__setattr__(self, "scaler_overflowed",
                           scaler_overflowed(by_scaler, self.scaler_calibrating))
        object.__setattr__(self, "amp_skipped", skipped)
        object.__setattr__(self, "grad_clip_engaged", clip_engaged(
            self.global_grad_norm, self.clipped_grad_norm, skipped))


@dataclass(frozen=True)
class Snapshot:
    """Full per-layer statistics of one sampled step.

    Every per-layer array has one entry per layer, in forward (depth) order, input first.
    NaN marks "not defined at this step": a layer without gradient (frozen, unused), a layer
    that was not updated, or whose forward did not run.

    Attributes:
        run, rank, step, time: where and when.
        layers: qualified module names, depth order.
        grad_norm: L2 norm of each layer's gradients before clipping.
        weight_norm: L2 norm of each layer's parameters before the optimizer step.
        update_ratio: ||W_after - W_before|| / ||W_before|| over the layer's updated params.
        activation_mean, activation_variance: of the layer's activation (the output of the
            activation module that directly follows it, else of the layer itself), over all
            micro-batches of the step; variance is the population variance.
        activation_saturation_ratio: fraction of activation values in the flat region of a
            sigmoid/tanh-like activation; NaN where the activation does not saturate.
        activation_dead_ratio: fraction of activation values that are exactly zero.
        activation_max_abs: max |x| of the activation.
        layer_output_max_abs: max |x| of the layer's own output (before its activation), used
            for fp16 headroom.
        nonfinite: int array [source, layer, kind] of non-finite element counts, sources per
            NONFINITE_SOURCES, kinds per NONFINITE_KINDS.
        nonfinite_origin: the first module, in forward call order, whose output held a
            non-finite value at this step ("" if none or not traced).
        pulses: every step's Pulse since the previous Snapshot, this step included (the
            latest 1024 of them: capture.ring.MAX_RING_ROWS).
        overhead_seconds: the monitor's cumulative own time on the training thread.
        world: with several ranks, on regular samples, the global view: activation figures
            over every rank's batch (and non-finite activation counts summed), rank -1.
            Gradient, weight and update figures are global in every Snapshot already.
        update_grad_cosine: per layer, cos(W_before - W_after, grad) of the updated params.
        adam_eps_dominated_ratio: per layer, the fraction of Adam second-moment elements
            with sqrt(v_hat) <= 10 eps (NaN for other optimizers).
        attention_layers: the modules that computed attention, in the order first seen.
        attention_logit_max, attention_entropy: per attention module, the max pre-softmax
            logit and the mean softmax entropy of its rows (nats).
        output_logit_logsumexp, output_logit_max: of the output logits (``lm_head`` or the
            last Linear): the mean log-partition log Z over the batch, and the max logit.
        update_norm: per layer, ||W_after - W_before|| over the layer's updated params (NaN
            where not updated), the numerator of ``update_ratio``.
        updated_weight_norm: per layer, ||W_before|| over the layer's updated params (NaN
            where not updated), the denominator of ``update_ratio``: with ``update_norm``,
            what a group of layers' update ratio is computed from
            (``derived.group_update_ratio``).
        output_logit_mean: the mean output logit (over the batch and the vocabulary): the
            shared shift of the logits, which the cross-entropy loss cannot see.
    """

    run: str
    rank: int
    step: int
    time: float
    layers: tuple[str, ...]
    grad_norm: np.ndarray
    weight_norm: np.ndarray
    update_ratio: np.ndarray
    activation_mean: np.ndarray
    activation_variance: np.ndarray
    activation_saturation_ratio: np.ndarray
    activation_dead_ratio: np.ndarray
    activation_max_abs: np.ndarray
    layer_output_max_abs: np.ndarray
    nonfinite: np.ndarray
    nonfinite_origin: str
    pulses: tuple[Pulse, ...]
    overhead_seconds: float
    world: Snapshot | None = None
    update_grad_cosine: np.ndarray = field(default_factory=lambda: np.zeros(0))
    adam_eps_dominated_ratio: np.ndarray = field(default_factory=lambda: np.zeros(0))
    attention_layers: tuple[str, ...] = ()
    attention_logit_max: np.ndarray = field(default_factory=lambda: np.zeros(0))
    attention_entropy: np.ndarray = field(default_factory=lambda: np.zeros(0))
    output_logit_logsumexp: float = math.nan
    output_logit_max: float = math.nan
    update_norm: np.ndarray = field(default_factory=lambda: np.zeros(0))
    updated_weight_norm: np.ndarray = field(default_factory=lambda: np.zeros(0))
    output_logit_mean: float = math.nan

    @property
    def pulse(self) -> Pulse:
        """This step's own Pulse."""
        return self.pulses[-1]

    def judged_nonfinite(self) -> np.ndarray:
        """[source, layer, kind] counts, without the gradients of an AMP-skipped step (the
        GradScaler skipped it: its non-finite gradients are fp16 calibration, not damage)."""
        counts = np.nan_to_num(np.asarray(self.nonfinite, dtype=np.float64))
        if counts.ndim != 3:
            return np.zeros((len(NONFINITE_SOURCES), 0, 3))
        if self.pulses and self.pulses[-1].amp_skipped:
            counts = counts.copy()
            counts[NONFINITE_SOURCES.index("gradient")] = 0
        return counts
