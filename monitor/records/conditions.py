"""What each alert raised on both sides judges, said once.

An alert of the alert table raised in-process AND by the Prometheus rules is one condition
implemented twice: by its detector (monitor/judging) over Pulses and Snapshots, and by its
rule (monitor/ops/rules.py) over the exported series. Both read their numbers from
``Thresholds`` and their shared figures from ``records.derived`` (the depth profile, clip
engagement, AMP skips); this table says what the condition is and every deliberate way the
two copies may disagree, with its reason. tests/test_realistic_alerts.py replays recorded runs
through both and fails on any disagreement not listed here. No torch, no numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

from .alert_table import IN_PROCESS, RULES, TABLE


@dataclass(frozen=True)
class Difference:
    """A deliberate disagreement: the side that may fire alone, when, and why."""

    fires_alone: str  # IN_PROCESS or RULES
    when: str
    why: str


@dataclass(frozen=True)
class Condition:
    """One alert's condition: the figure judged against which thresholds, how long it must
    hold on each side, and the deliberate differences between the sides."""

    name: str
    judged: str
    thresholds: tuple[str, ...]
    persistence: str
    differences: tuple[Difference, ...] = ()


#: Why a detector that needs the history of every step can fire alone.
STEP_HISTORY = ("the detector keeps every step's (or sample's) history; a scrape sees the "
                "latest figure only, so the rule judges the level and not the shape")

#: What the loss rules judge: the exporter runs the detectors' own trackers on every Pulse.
LOSS_FIGURES = ("records.loss_level, the same trackers on both sides: the detector's own, the "
                "exporter's for the rule")

#: How each side counts the persistence of a per-layer share (DeadUnits,
#: ActivationSaturation): the detector counts sampled steps, the rule scrape intervals.
#: Prometheus knows time, not the sampling period (every_n_steps steps), so the same count
#: holds more samples at a fast pace and fewer at a slow one.
SAMPLES_NOT_SCRAPES = "a scrape reads the latest Snapshot; unit_warning_samples scrape intervals hold "
UNIT_PACE = (
    Difference(IN_PROCESS, "unit_warning_samples samples in a row over the line pass in "
               "less time than as many scrape intervals (a fast trainer: 1 s a step, a "
               "sample every 10 steps), and the share then falls back",
               SAMPLES_NOT_SCRAPES + "more Snapshots than unit_warning_samples"),
    Difference(RULES, "unit_warning_samples scrape intervals pass with fewer samples "
               "(a slow trainer: 5 s a step, a sample every 10 steps), all over the line",
               SAMPLES_NOT_SCRAPES + "fewer Snapshots than unit_warning_samples"),
)

CONDITIONS: tuple[Condition, ...] = (
    Condition(
        "NonFiniteValues",
        "a NaN/Inf in the loss, a gradient, an activation or a parameter (an AMP-skipped "
        "step's overflowed gradients left out: records.snapshot.Snapshot.judged_nonfinite)",
        (), "the first one"),
    Condition(
        "GradientExplosion",
        "the global gradient norm above explosion_norm",
        ("explosion_norm",), "one step (the rule: one step within COUNTER_WINDOW)",
        (Difference(IN_PROCESS, "a spike explosion_spike_factor x the recent max, or "
                    "explosion_growth_steps steps of explosion_growth_factor growth, below "
                    "explosion_norm", STEP_HISTORY),)),
    Condition(
        "GradientVanishing",
        "the depth profile (records.derived.DepthProfile: layers whose forward ran, with a "
        "finite gradient norm, at least PROFILE_MIN_LAYERS): its input side's geometric-mean "
        "gradient norm below vanishing_depth_ratio x its output side's, with an affected "
        "layer (norm below that fraction of the output side's) whose update ratio along its "
        "gradient (records.derived.gradient_driven_update_ratio: weight decay's move left "
        "out) is below update_ratio_low or not measured",
        ("vanishing_depth_ratio", "update_ratio_low", "vanishing_samples"),
        "vanishing_samples Snapshots in a row (the rule: as many scrape intervals)",
        (Difference(RULES, "the run is deeper than the exporter's max_layers",
                    "the rule sees the exported layers only (the most offending are kept)"),)),
    Condition(
        "DeadUnits",
        "a layer's share of exact-zero activations (Snapshot.activation_dead_ratio; the "
        "rule: gradwatch_activation_dead_ratio) above dead_ratio",
        ("dead_ratio", "unit_warning_samples"),
        "unit_warning_samples Snapshots in a row (the rule: as many scrape intervals)",
        UNIT_PACE),
    Condition(
        "ActivationSaturation",
        "a layer's share of sigmoid/tanh outputs in the flat region "
        "(Snapshot.activation_saturation_ratio; the rule: "
        "gradwatch_activation_saturation_ratio) above saturation_ratio",
        ("saturation_ratio", "unit_warning_samples"),
        "unit_warning_samples Snapshots in a row (the rule: as many scrape intervals)",
        UNIT_PACE),
    Condition(
        "LossDivergence",
        "the median loss of the last loss_divergence_steps steps above "
        "loss_divergence_factor x the median of up to history_steps steps before them, and "
        "log of that rise above loss_divergence_sigmas robust sigmas of their log(loss), "
        "after loss_warmup_steps with at least history_min_steps of history; a jump of the "
        "learning rate (records.derived.lr_jumped: a warm restart, a step up; not a ramp) "
        "re-bases the baseline. Figures over steps: " + LOSS_FIGURES + " "
        "(gradwatch_loss_recent_median, gradwatch_loss_reference_median, "
        "gradwatch_loss_reference_log_sigma)",
        ("loss_divergence_factor", "loss_divergence_sigmas", "loss_divergence_steps",
         "loss_warmup_steps", "history_min_steps"),
        "over half of the recent window high (its median); the rule: on the step a scrape "
        "reads",
        (Difference(IN_PROCESS, "the level is over the line only on steps no scrape reads "
                    "(fewer steps than a scrape interval holds, or the run stops before the "
                    "next scrape)",
                    "the rule reads the figures of the latest step at each scrape; the "
                    "detector judges every step"),)),
    Condition(
        "LossSpike",
        "one step's loss above loss_spike_factor x the median of the last history_steps "
        "non-spike steps and loss_noise_sigmas robust sigmas of log(loss) above it, that "
        "repeats a spike of the loss_spike_repeat_steps steps before or comes with a spike of "
        "the global gradient norm (the same two bars, against the median of its history's "
        "norms); a lone spike with a steady gradient norm is one hard batch, no warning; a "
        "jump of the learning rate re-bases the baseline. Figures over steps: "
        + LOSS_FIGURES + " (the rule counts the spikes it judged that warn: "
        "gradwatch_loss_spike_steps_total of kind repeat or gradient_spike)",
        ("loss_spike_factor", "loss_noise_sigmas", "loss_spike_repeat_steps",
         "loss_warmup_steps", "history_min_steps"),
        "one step (the rule: one step within COUNTER_WINDOW)"),
    Condition(
        "AmpOverflowStorm",
        "amp_skipped_steps steps the GradScaler skipped within history_steps, its skips "
        "before the first applied step (calibrating its initial scale) left out "
        "(Pulse.scaler_overflowed; the rule: gradwatch_amp_overflow_steps_total)",
        ("amp_skipped_steps", "history_steps"), "the count over the window"),
    Condition(
        "AttentionLogitGrowth",
        "the max attention logit above attention_logit_level",
        ("attention_logit_level", "leading_samples"), "leading_samples samples in a row",
        (Difference(IN_PROCESS, "growth by attention_logit_growth_factor below "
                    "attention_logit_level", STEP_HISTORY),)),
    Condition(
        "OutputLogitDivergence",
        "|log Z| of the output logits above output_logsumexp_level",
        ("output_logsumexp_level", "leading_samples"), "leading_samples samples in a row",
        (Difference(IN_PROCESS, "a drift of output_logsumexp_drift nats below "
                    "output_logsumexp_level", STEP_HISTORY),)),
    Condition(
        "AdamUpdateDecorrelation",
        "the median eps-dominated share above eps_dominated_ratio while the gradient norm "
        "grew eps_dominated_grad_growth x from its low since",
        ("eps_dominated_ratio", "eps_dominated_grad_growth", "leading_samples"),
        "leading_samples samples in a row"),
    Condition(
        "UpdateSkipped",
        "skip-on-spike undid a step's update", (), "one step"),
)

CONDITION: dict[str, Condition] = {c.name: c for c in CONDITIONS}
#: The alerts both sides raise: each has a Condition (tested).
SHARED_NAMES = tuple(s.name for s in TABLE if IN_PROCESS in s.sources and RULES in s.sources)


def markdown_conditions() -> str:
    """The conditions as Markdown, for docs/alerts.md (a test keeps the docs equal to it)."""
    rows = ["| alert | judged (both sides) | holds for | may fire alone |", "|---|---|---|---|"]
    for c in CONDITIONS:
        alone = "; ".join(f"{d.fires_alone}: {d.when} ({d.why})" for d in c.differences)
        rows.append(f"| {c.name} | {c.judged} | {c.persistence} | {alone} |")
    return "\n".join(rows) + "\n"
