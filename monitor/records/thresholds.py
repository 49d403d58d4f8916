"""Thresholds: the one source of truth for every number the monitor judges by.

Detectors, the generated Prometheus rules and the generated Grafana dashboards all read this
object, so they never disagree. Each field carries its reason in ``metadata["why"]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import cast

from .validation import check_int, check_number

# Fixed numbers the detectors and the generated rules share (not tunable: no judgement in them)
#: sigma of a normal distribution from its interquartile range: IQR / IQR_PER_SIGMA.
IQR_PER_SIGMA = 1.349
#: Floor of a gradient norm before its log: an exact zero is total collapse, not -inf.
GRAD_NORM_FLOOR = 1e-30
#: The depth profile's sides are the input-side and output-side 1 / DEPTH_SIDES of the
#: layers (a quarter, at least one layer each).
DEPTH_SIDES = 4


def _t(default: float, why: str, *, low: float = 0.0, high: float = math.inf) -> float:
    return field(default=default, metadata={"why": why, "low": low, "high": high})


def _count(default: int, why: str, *, low: int, high: int) -> int:
    """A threshold that counts steps or samples: an integer in [low, high]."""
    return field(default=default, metadata={"why": why, "low": low, "high": high,
                                            "integer": True})


@dataclass(frozen=True)
class Thresholds:
    """Numbers the statistics and detectors use. Override any of them by keyword.

    Raises:
        ValueError: a value that is not a finite number in its allowed range, naming the field.
    """

    sigmoid_flat: float = _t(
        0.018,
        "sigmoid(x) < 0.018 or > 0.982 means |x| > 4, where its derivative s(1-s) < 0.018: "
        "the flat region that cuts the gradient (see docs/theory.md § Sigmoid saturation).",
        high=0.5,
    )
    tanh_flat: float = _t(
        0.97,
        "|tanh(x)| > 0.97 means |x| > 2.1, where its derivative 1 - y^2 < 0.06 (see "
        "docs/theory.md § Sigmoid saturation).",
        high=1.0,
    )
    vanishing_depth_ratio: float = _t(
        1e-3,
        "Gradient norm of the input-side layers below this fraction of the output-side "
        "layers': 0.25^5 ~ 1e-3 is five sigmoid layers' worth of decay (see docs/theory.md "
        "§ Sigmoid saturation).",
        high=1.0,
    )
    vanishing_samples: int = _count(
        3, "Sampled steps in a row the depth profile must stay collapsed before alerting: "
        "one sample can be a transient.", low=1, high=1000)
    activation_variance_shrink: float = _t(
        0.1, "Activation variance of the output-side layers below this fraction of the "
        "input-side layers': the forward-pass face of vanishing, since Var(activation) "
        "should stay about the same across depth (see docs/theory.md § Xavier and He "
        "initialisation).", high=1.0)
    update_ratio_low: float = _t(
        1e-4,
        "||dW||/||W|| below this means the layer is barely learning; ~1e-3 is typical of "
        "healthy SGD/Adam training (see docs/theory.md § Update-to-weight ratio).",
    )
    update_ratio_high: float = _t(
        1e-2, "||dW||/||W|| above this means the layer is being thrown around (see "
        "docs/theory.md § Update-to-weight ratio).")
    explosion_norm: float = _t(
        1e4, "Global gradient norm above this is exploding in absolute terms, whatever "
        "the history.", low=1e-12)
    explosion_spike_factor: float = _t(
        10.0, "Global norm above this many times the max of the recent window is a spike "
        "(Megatron's rule of thumb, see docs/theory.md § Loss spikes).", low=1.0)
    explosion_growth_factor: float = _t(
        2.0, "Global norm growing by at least this factor per step over explosion_growth_steps "
        "steps is exponential growth (see docs/theory.md § Vanishing and exploding "
        "gradients).", low=1.0)
    explosion_growth_steps: int = _count(
        4, "Consecutive growing steps that make exponential growth.", low=2, high=1000)
    history_steps: int = _count(
        100, "Steps of recent history that spikes are judged against (see docs/theory.md § "
        "Loss spikes).",
        low=2, high=100_000)
    history_min_steps: int = _count(
        10, "Steps of history needed before a spike can be judged against it: the first "
        "steps of training are no baseline.", low=1, high=100_000)
    loss_floor: float = _t(
        1e-6, "Losses below this are judged as this: near zero (a fitted batch, float32 "
        "rounding) a tenfold rise of 1e-9 is noise, not divergence.", low=0.0, high=1.0)
    loss_warmup_steps: int = _count(
        100, "Steps before the loss is judged: the first steps (warm-up, Adam's early "
        "overshoot) are no baseline, nor are the first steps after a raised learning rate "
        "(a warm restart starts training again).", low=0, high=100_000)
    loss_spike_factor: float = _t(
        3.0, "One step's loss above this many times the rolling median (and loss_noise_sigmas "
        "above it) is a spike: a warning when it repeats (loss_spike_repeat_steps) or the "
        "step's global gradient norm spikes by the same two bars against its own median; a "
        "lone spike with a steady gradient norm is one hard batch, counted but no warning.",
        low=1.0)
    loss_noise_sigmas: float = _t(
        6.0, "Robust z-score of log(loss) (distance from the rolling median over the IQR's "
        "sigma, IQR / 1.349) above which one step is a spike (OLMo: 6 sigma).", low=1.0)
    loss_spike_repeat_steps: int = _count(
        10, "A loss spike within this many steps after another is a repeat: a warning. One "
        "hard or outlier batch raises its own loss but leaves the weights where they were, "
        "so the next steps are back at the median; an instability the step began shows again "
        "in the losses of the next steps, computed on the weights it moved (momentum and "
        "Adam's first moment carry a step's gradient for ~1 / (1 - beta1) = 10 steps at "
        "beta1 = 0.9).", low=1, high=100_000)
    loss_divergence_factor: float = _t(
        1.5, "The median loss of the last loss_divergence_steps steps above this many times "
        "the median of the history before them is divergence: a critical alert (a rise "
        "from 1.1 to 1.9 is one, so is 0.01 to 0.1).", low=1.0)
    loss_divergence_sigmas: float = _t(
        2.0, "The rise of log(loss) that is divergence must also exceed this many robust "
        "sigmas of the history's log(loss), so the noise of small batches is no rise.",
        low=0.0)
    loss_divergence_steps: int = _count(
        20, "Steps whose median is the loss's current level: over half of them must be "
        "high, which is the persistence before a page.", low=2, high=10_000)
    saturation_ratio: float = _t(
        0.5, "Fraction of saturated sigmoid/tanh outputs above which a layer is saturated.",
        high=1.0)
    dead_ratio: float = _t(
        0.9, "Fraction of exact-zero ReLU outputs above which a layer is mostly dead.", high=1.0)
    unit_warning_samples: int = _count(
        5, "Sampled steps in a row before a saturation or dead-unit warning.", low=1, high=1000)
    amp_skipped_steps: int = _count(
        5, "Skipped (overflowed) AMP steps within history_steps that make an overflow storm; "
        "a scaler skips one now and then by design.", low=1, high=100_000)
    fp16_headroom_bits: float = _t(
        2.0, "log2(65504 / max|x|) below this: fp16 activations within 4x of overflow.",
        high=16)
    init_variance_factor: float = _t(
        8.0, "Weight variance off the Xavier/He expectation by more than this factor, either "
        "way, is a bad initialisation (see docs/theory.md § Xavier and He initialisation).",
        low=1.0)
    stalled_seconds: float = _t(
        300.0, "No step for this long while the trainer is up: TrainingStalled.", low=1.0)
    escalation_steps: int = _count(
        5, "Steps fully sampled after a non-finite value appears on an unsampled step.",
        low=1, high=10_000)
    # leading indicators of transformer instability (issue 17)
    attention_logit_level: float = _t(
        100.0, "Max pre-softmax attention logit above this is attention-logit growth (the "
        "level QK-Clip caps logits at; healthy models stay in the tens).", low=1.0)
    attention_logit_growth_factor: float = _t(
        4.0, "Max attention logit growing by this factor over leading_samples samples (and "
        "above half of attention_logit_level) is steady growth.", low=1.0)
    output_logsumexp_level: float = _t(
        100.0, "|mean log Z| of the output logits above this is output-logit divergence: "
        "bf16 logits that large are spaced 0.5 apart, so the softmax is quantised. Not "
        "lower: log Z carries the logits' arbitrary shared shift (pretrained models without "
        "z-loss sit tens of nats from 0), which the drift rule judges instead.", low=1.0)
    output_logsumexp_drift: float = _t(
        10.0, "|log Z| drifting by this many nats within history_steps sampled steps, carried "
        "by the logits' shared shift (their mean; confidence moves log Z too, not the shift), "
        "is output-logit divergence.", low=0.1)
    update_grad_cosine_low: float = _t(
        0.05, "Dashboards' band: a median over layers of cos(update, gradient) below this "
        "means the updates no longer follow the gradient (context of AdamUpdateDecorrelation; "
        "alone no alarm: healthy runs fall below it near convergence).", high=1.0)
    eps_dominated_ratio: float = _t(
        0.5, "Median over layers of the fraction of Adam elements with sqrt(v_hat) <= 10 eps "
        "above this: eps, not the gradient, sets the steps (with eps_dominated_grad_growth: "
        "AdamUpdateDecorrelation).",
        high=1.0)
    eps_dominated_grad_growth: float = _t(
        4.0, "Gradient norm grown this many fold (median over leading_samples samples' "
        "steps) since Adam's second moment collapsed (eps_dominated_ratio): Adam then steps "
        "like SGD at lr / eps, so the growth feeds itself (AdamUpdateDecorrelation; a run "
        "that only sits collapsed stays within 2.2x on the CPU reproduction's twins).",
        low=1.0)
    leading_samples: int = _count(
        3, "Sampled steps in a row a leading indicator must hold before alerting.", low=1,
        high=1000)

    def __post_init__(self) -> None:
        for f in fields(self):
            low, high = f.metadata["low"], f.metadata["high"]
            if f.metadata.get("integer"):
                check_int(f"Thresholds.{f.name}", getattr(self, f.name), low=low, high=high)
            else:
                check_number(f"Thresholds.{f.name}", getattr(self, f.name), low=low, high=high)

    @classmethod
    def from_file(cls, path: str) -> Thresholds:
        """Thresholds with the overrides of a YAML or JSON mapping file (field: value).

        Raises:
            ValueError: the file is not a mapping, names an unknown field, or a bad value.
        """
        import yaml

        with open(path, encoding="utf-8") as stream:
            overrides = yaml.safe_load(stream) or {}
        if not isinstance(overrides, dict):
            raise ValueError(f"{path}: expected a mapping of threshold names to numbers")
        unknown = sorted(set(overrides) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"{path}: unknown thresholds {unknown}")
        return cls(**overrides)

    @classmethod
    def documented(cls) -> dict[str, tuple[float, str]]:
        """Every threshold with its default and its reason, for docs and generators."""
        return {f.name: (cast(float, f.default), f.metadata["why"]) for f in fields(cls)}
