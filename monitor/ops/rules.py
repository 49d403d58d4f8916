"""Prometheus alerting and recording rules, generated from one ``Thresholds`` object and
the alert table (``monitor/records/alert_table.py``: severity, regime, headline, remedy, runbook).

The committed file ``deploy/prometheus/rules/gradwatch.rules.yml`` is ``render_rules()`` of the
default thresholds (a test keeps them equal); ``write_rules`` writes it for custom thresholds
and another runbook base URL.

Alert volume is bounded: every alert aggregates ``by (run)``, one alert per (run, alertname)
whatever the number of layers and ranks; its ``culprits`` annotations name the worst layers
(at most CULPRITS) and, for NaN/Inf, the rank it came from. The trainer pushes the same labels
(alertname, severity, regime, run) to Alertmanager, so the two copies deduplicate.
TrainerDown and TrainingStalled stay quiet for a run whose last scrape or push said
``gradwatch_run_finished`` 1. The loss rules judge the in-process detectors' own figures,
which the exporter publishes from the same trackers (records.loss_level): medians and robust
sigmas of log(loss) over steps, and the count of spikes by kind, so they judge as the
trainer does at any pace (a scrape sees one step in many: quantiles over a time window of
scraped losses are of a few losses at a slow pace).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.utils import floatToGoString

from ..records.alert_table import RUNBOOK_BASE_URL, check_runbook_base_url
from ..records.derived import PROFILE_MIN_LAYERS
from ..records.loss_level import WARNING_SPIKES
from ..records.alert_table import spec as alert_spec
from ..records.regimes import REGIMES, code
from ..records.thresholds import DEPTH_SIDES, GRAD_NORM_FLOOR, Thresholds

#: Prometheus scrape interval of deploy/prometheus/prometheus.yml, in seconds. Prometheus sees
#: per-layer statistics once per scrape, so "N sampled steps in a row" becomes N scrapes.
SCRAPE_INTERVAL_SECONDS = 15
#: Window for counter increases: long enough for 4+ scrapes, short enough to resolve soon.
COUNTER_WINDOW = "2m"
#: Window standing in for Thresholds.history_steps (Prometheus knows time, not steps).
HISTORY_WINDOW = "10m"
#: Window of a recent level (the gradient norm's median over it, AdamUpdateDecorrelation),
#: before which HISTORY_WINDOW is the reference. (The loss rules judge the exporter's figures
#: over steps instead: records.loss_level.)
RECENT_WINDOW = "2m"
#: Scrape job of the trainers (prometheus.yml), for TrainerDown.
TRAINER_JOB = "gradwatch"
#: Per-layer metrics that get a depth-labelled twin, gradwatch:<name>:by_depth, so dashboards
#: order layers by depth (the series sort by the zero-padded depth label).
DEPTH_ORDERED_METRICS = (
    "grad_norm",
    "weight_norm",
    "update_ratio",
    "activation_variance",
    "activation_saturation_ratio",
    "activation_dead_ratio",
    # issue 17
    "update_grad_cosine",
    "adam_eps_dominated_ratio",
)
RULES_PATH = Path("deploy/prometheus/rules/gradwatch.rules.yml")
#: Steps whose own gradients (before the all-reduce) were not finite: the origin rank.
LOCAL_NONFINITE_STEPS = 'gradwatch_nonfinite_steps_total{source="local_gradient"}'
#: Most layers (or ranks) an alert's culprits annotation names.
CULPRITS = 5

#: Label lists of the aggregations: what an alert keeps (the trainer's labels).
BY_RUN = "run, rank"
BY_RUN_LAYER = "run, rank, layer"
#: Go-template fragment naming the layer when the alert has one (run-wide alerts have none).
LAYER_TEXT = "{{ with $labels.layer }}, layer {{ . }}{{ end }}"


@dataclass(frozen=True)
class Alert:
    """One alerting rule: a name of the alert table, its condition and its details (the
    severity, regime, headline and remedy come from the table)."""

    name: str
    expr: str
    description: str
    for_: str = "0s"
    #: annotation name -> Go template naming the worst layers / ranks (at most CULPRITS)
    culprits: tuple[tuple[str, str], ...] = ()


def named_by(label: str, selector: str) -> str:
    """Go template listing, comma-separated and sorted, the ``label`` of each series
    ``selector`` returns; ``selector`` is a printf format of the run (one %s), limited to
    CULPRITS."""
    return (f"{{{{ range $i, $s := printf `topk({CULPRITS}, {selector})` $labels.run | query"
            f' | sortByLabel "{label}" }}}}'
            "{{ if $i }}, {{ end }}{{ $s.Labels." + label + " }}{{ end }}")


def explosion_bucket_label(thresholds: Thresholds) -> str:
    """The ``le`` label of the explosion_norm bucket, spelled as prometheus_client spells it."""
    return str(floatToGoString(thresholds.explosion_norm))


def counted_in(counter: str, window: str) -> str:
    """Increase of ``counter`` over ``window``, counting series born inside the window whole.

    increase() needs two samples, so a rare-event counter that an exporter creates on its
    first event (at 1, not 0) would never show that event; a series absent ``window`` ago
    counts its full value instead.
    """
    return f"({counter} unless {counter} offset {window}) or increase({counter}[{window}])"


#: The loss spikes LossSpike warns on (records.loss_level: a spike that repeats or comes
#: with a gradient-norm spike; a lone one is one hard batch), as the exporter counts them.
WARNING_SPIKE_STEPS = ('gradwatch_loss_spike_steps_total{kind=~"'
                       + "|".join(WARNING_SPIKES) + '"}')
#: Per run and rank, those spikes within COUNTER_WINDOW.
SPIKES_WARNED = f"gradwatch:loss_spike_warnings:increase{COUNTER_WINDOW}"
#: The loss's level over its reference: the exporter's step-counted medians (LossDivergence).
LEVEL_RISE = "(gradwatch_loss_recent_median / gradwatch_loss_reference_median)"


def loss_recording_rules() -> list[tuple[str, str]]:
    """The loss spikes that warn, counted over COUNTER_WINDOW (every step's, whatever the
    pace: the exporter counts them, so none falls between two scrapes)."""
    return [(SPIKES_WARNED,
             f"sum by ({BY_RUN}) ({counted_in(WARNING_SPIKE_STEPS, COUNTER_WINDOW)})")]


#: Per run and rank: the median over layers of the eps-dominated ratio, and the gradient
#: norm's median over RECENT_WINDOW now and its low over HISTORY_WINDOW (AdamUpdateDecorrelation).
ADAM_EPS_MEDIAN = "gradwatch:adam_eps_dominated_ratio:median"
ADAM_GRAD_LEVEL = f"gradwatch:global_grad_norm:median{RECENT_WINDOW}"
ADAM_GRAD_TROUGH = f"min_over_time({ADAM_GRAD_LEVEL}[{HISTORY_WINDOW}])"


def adam_recording_rules() -> list[tuple[str, str]]:
    """What AdamUpdateDecorrelation judges: the second moment's collapse, the gradient's level."""
    return [
        (ADAM_EPS_MEDIAN, f"quantile by ({BY_RUN}) (0.5, gradwatch_adam_eps_dominated_ratio)"),
        (ADAM_GRAD_LEVEL, f"max by ({BY_RUN}) "
                           f"(quantile_over_time(0.5, gradwatch_global_grad_norm[{RECENT_WINDOW}]))"),
    ]


#: The depth profile's members (run, rank, layer): records.derived.DepthProfile in PromQL.
PROFILE = "gradwatch:grad_norm:profile"
#: Per run and rank, how many layers the depth profile has.
PROFILE_LAYERS = "gradwatch:grad_norm:profile_layers"


def vanishing_recording_rules() -> list[tuple[str, str]]:
    """The depth profile as the in-process GradientVanishing makes it
    (``records.derived.depth_profile``): the layers whose forward ran (an activation record
    is exported for them) with a finite gradient norm; its sides the members whose depth is
    below a quarter of their count (input) or at least their count less a quarter (output),
    and the mean log gradient norm of each side."""
    quarter = f"clamp_min(floor({PROFILE_LAYERS} / {DEPTH_SIDES}), 1)"
    depth = "gradwatch_layer_depth"
    sides = {
        "input": f"{depth} < on ({BY_RUN}) group_left () {quarter}",
        "output": f"{depth} >= on ({BY_RUN}) group_left () ({PROFILE_LAYERS} - {quarter})",
    }
    return [
        # a NaN or Inf norm is no member (NonFiniteValues judges it): `< Inf` drops both
        (PROFILE, f"max by ({BY_RUN_LAYER}) (gradwatch_grad_norm < Inf)"
                  f" and on ({BY_RUN_LAYER}) gradwatch_activation_mean"),
        (PROFILE_LAYERS, f"count by ({BY_RUN}) ({PROFILE})"),
        *((f"gradwatch:grad_norm:log_mean_{side}_quarter",
           # an exact zero is total collapse (the detectors' floor); a run whose every norm
           # is non-finite has no profile: NaN then (the dashboards show the run's NaN, not
           # nothing; a NaN mean passes no comparison, so no alert reads it)
           f"avg by ({BY_RUN}) (ln(clamp_min({PROFILE}, {GRAD_NORM_FLOOR!r}))"
           f" and on ({BY_RUN_LAYER}) ({selector}))"
           f" or (max by ({BY_RUN}) (gradwatch_grad_norm) * NaN)")
          for side, selector in sides.items()),
    ]


def recording_rules(thresholds: Thresholds) -> list[dict[str, Any]]:
    """Recording rules: what the alerts build on and what makes dashboards cheap."""
    le = explosion_bucket_label(thresholds)
    regime_code = " or ".join(
        f'gradwatch_regime{{regime="{regime}"}} * {code(regime)}' for regime in REGIMES
    )
    # count_values turns the depth into a label; zero-padding makes label order numeric order.
    # by (run, layer): rank 0 exports the depth once (rank "all"), every rank's series join it
    padded_depth = 'count_values by (run, layer) ("depth", gradwatch_layer_depth)'
    for pad, digits in (("00", "([0-9])"), ("0", "([0-9][0-9])")):
        padded_depth = f'label_replace({padded_depth}, "depth", "{pad}$1", "depth", "{digits}")'
    rules = [
        ("gradwatch:steps_above_explosion_norm:increase" + COUNTER_WINDOW,
         f"sum by ({BY_RUN}) (increase(gradwatch_step_global_grad_norm_count[{COUNTER_WINDOW}]))"
         f" - sum by ({BY_RUN}) (increase("
         f'gradwatch_step_global_grad_norm_bucket{{le="{le}"}}[{COUNTER_WINDOW}]))'),
        ("gradwatch:nonfinite:increase" + COUNTER_WINDOW,
         f"sum by ({BY_RUN_LAYER}) "
         f"({counted_in('gradwatch_nonfinite_total', COUNTER_WINDOW)})"),
        ("gradwatch:nonfinite_steps:increase" + COUNTER_WINDOW,
         f"sum by ({BY_RUN}) ({counted_in('gradwatch_nonfinite_steps_total', COUNTER_WINDOW)})"),
        # the rank a NaN came from: its own gradients were not finite before the all-reduce
        ("gradwatch:nonfinite_origin:increase" + COUNTER_WINDOW,
         f"sum by ({BY_RUN}) ({counted_in(LOCAL_NONFINITE_STEPS, COUNTER_WINDOW)})"),
        ("gradwatch:amp_skipped_steps:increase" + HISTORY_WINDOW,
         f"sum by ({BY_RUN}) "
         f"({counted_in('gradwatch_amp_skipped_steps_total', HISTORY_WINDOW)})"),
        # the skips AmpOverflowStorm counts: the scaler's calibration at the start left out
        ("gradwatch:amp_overflow_steps:increase" + HISTORY_WINDOW,
         f"sum by ({BY_RUN}) "
         f"({counted_in('gradwatch_amp_overflow_steps_total', HISTORY_WINDOW)})"),
        *vanishing_recording_rules(),
        *loss_recording_rules(),
        *adam_recording_rules(),
        ("gradwatch:layer_depth:padded", padded_depth),
        *((f"gradwatch:{metric}:by_depth",
           f"max by ({BY_RUN_LAYER}) (gradwatch_{metric})"
           " * on (run, layer) group_left (depth) gradwatch:layer_depth:padded")
          for metric in DEPTH_ORDERED_METRICS),
        ("gradwatch:regime:code", f"sum by ({BY_RUN}) ({regime_code})"),
        ("gradwatch:steps_per_second:deriv" + COUNTER_WINDOW,
         f"max by ({BY_RUN}) (deriv(gradwatch_step[{COUNTER_WINDOW}]))"),
        ("gradwatch:seconds_since_last_step",
         f"time() - max by ({BY_RUN}) (gradwatch_last_step_timestamp_seconds)"),
    ]
    return [{"record": name, "expr": expr} for name, expr in rules]


def vanishing_layers(t: Thresholds, run: str = "") -> str:
    """Per layer (run, rank, layer) of the depth profile: its gradient norm over the
    output side's geometric mean, where that ratio is below ``vanishing_depth_ratio``, the
    input side's is too, the profile has at least PROFILE_MIN_LAYERS members, and its
    gradient barely moves the layer (or that is not measured): the in-process
    GradientVanishing's condition. ``run``: only that run's series (a Go printf verb in
    culprit templates)."""
    only = f'{{run="{run}"}}' if run else ""
    output_side = f"gradwatch:grad_norm:log_mean_output_quarter{only}"
    ratio = repr(t.vanishing_depth_ratio)
    update = f"max by ({BY_RUN_LAYER}) (gradwatch_update_ratio{only})"
    return (f"{PROFILE}{only}"
            f" / on ({BY_RUN}) group_left () exp({output_side}) < {ratio}"
            f" and on ({BY_RUN}) (exp(gradwatch:grad_norm:log_mean_input_quarter{only}"
            f" - {output_side}) < {ratio})"
            f" and on ({BY_RUN}) ({PROFILE_LAYERS}{only} >= {PROFILE_MIN_LAYERS})"
            # moved by its gradient: the update ratio's part along it (weight decay moves
            # the weights along themselves: records.derived.gradient_driven_update_ratio)
            # (the update ratio itself where the cosine is not measured)
            f" unless on ({BY_RUN_LAYER}) (({update} * on ({BY_RUN_LAYER}) clamp_min(max by"
            f" ({BY_RUN_LAYER}) (gradwatch_update_grad_cosine{only}), 0) or {update})"
            f" >= {t.update_ratio_low!r})")


def alerts(t: Thresholds) -> list[Alert]:
    """The alert table's rule alerts, with their numbers taken from ``t``."""
    return gradient_alerts(t) + unit_alerts(t) + loss_alerts(t) + liveness_alerts(t)


def gradient_alerts(t: Thresholds) -> list[Alert]:
    """Non-finite values, exploding and vanishing gradients."""
    vanishing_for = f"{t.vanishing_samples * SCRAPE_INTERVAL_SECONDS}s"
    return [
        Alert(
            "NonFiniteValues",
            f"max by (run) (gradwatch:nonfinite:increase{COUNTER_WINDOW}) > 0"
            f" or on (run) max by (run) (gradwatch:nonfinite_steps:increase{COUNTER_WINDOW}) > 0",
            "{{ $value | humanize }} non-finite values (or steps) in the last "
            f"{COUNTER_WINDOW} in run {{{{ $labels.run }}}}{LAYER_TEXT}; no layer means the loss "
            "or a step-level count. Usually an explosion that overflowed.",
            culprits=(("layers", named_by("layer", "sum by (layer) (gradwatch:nonfinite:increase"
                                          f'{COUNTER_WINDOW}{{run="%s", layer!=""}}) > 0')),
                      ("origin_ranks", named_by("rank", "gradwatch:nonfinite_origin:increase"
                                                f'{COUNTER_WINDOW}{{run="%s"}} > 0'))),
        ),
        Alert(
            "GradientExplosion",
            f"max by (run) (gradwatch:steps_above_explosion_norm:increase{COUNTER_WINDOW}) > 0",
            f"{{{{ $value | humanize }}}} steps in the last {COUNTER_WINDOW} of run "
            f"{{{{ $labels.run }}}}{LAYER_TEXT} had a global gradient norm above "
            f"{explosion_bucket_label(t)}.",
            culprits=(("layers", named_by("layer", 'gradwatch_grad_norm{run="%s"}')),),
        ),
        Alert(
            "GradientVanishing",
            # the layers far below the output side, while the quarters' ratio is below the
            # threshold and the optimizer barely moves them (or update ratios are not measured)
            f"min by (run) ({vanishing_layers(t)})",
            f"Run {{{{ $labels.run }}}}{LAYER_TEXT}: an input-side layer's gradient norm is "
            "{{ printf \"%.3g\" $value }}x the output-side quarter's geometric mean, and "
            f"the input-side quarter below {t.vanishing_depth_ratio!r}x it, for "
            f"{vanishing_for}.",
            for_=vanishing_for,
            culprits=(("layers", named_by("layer", vanishing_layers(t, run="%[1]s"))),),
        ),
    ]


#: The per-layer shares of units that pass no gradient (records.conditions: DeadUnits,
#: ActivationSaturation): alert -> (the exported share, its Thresholds field, what it means).
UNIT_SHARES = {
    "DeadUnits": ("gradwatch_activation_dead_ratio", "dead_ratio",
                  "Its share of exact-zero activations: dead ReLU units, whose input is "
                  "always negative, pass no gradient and never recover."),
    "ActivationSaturation": ("gradwatch_activation_saturation_ratio", "saturation_ratio",
                             "Its share of sigmoid/tanh outputs in the flat region, where "
                             "the derivative is near 0 and the gradient to every layer "
                             "below is cut."),
}


def unit_alerts(t: Thresholds) -> list[Alert]:
    """A layer's share of units that pass no gradient above its threshold, held for
    ``unit_warning_samples`` scrape intervals (in-process: as many sampled steps in a row,
    judging.layer_conditions); one alert per run, the layers over the line named."""
    held = f"{t.unit_warning_samples * SCRAPE_INTERVAL_SECONDS}s"
    out = []
    for name, (metric, field, meaning) in UNIT_SHARES.items():
        level = getattr(t, field)
        over = f"{metric} > {level!r}"
        out.append(Alert(
            name, f"max by (run) ({over})",
            f"Run {{{{ $labels.run }}}}{LAYER_TEXT}: a layer's share is "
            f"{{{{ printf \"%.3g\" $value }}}}, above {level!r} for {held}. {meaning}",
            for_=held,
            culprits=(("layers", named_by("layer", over.replace(
                metric, f'{metric}{{run="%s"}}'))),)))
    return out


def loss_alerts(t: Thresholds) -> list[Alert]:
    """The loss's level and spikes (the exporter's step-counted figures, judged as the
    detectors judge them), and the AMP loss scaler's overflow storms."""
    return [
        Alert(
            "LossDivergence",
            f"max by (run) ({LEVEL_RISE} > {t.loss_divergence_factor!r}"
            f" and ln{LEVEL_RISE} > {t.loss_divergence_sigmas!r}"
            " * gradwatch_loss_reference_log_sigma)",
            f"The median loss of run {{{{ $labels.run }}}}{LAYER_TEXT} over its last "
            f"{t.loss_divergence_steps!r} steps is {{{{ printf \"%.3g\" $value }}}}x its median "
            f"of the up to {t.history_steps!r} steps before (alert above "
            f"{t.loss_divergence_factor!r}x and {t.loss_divergence_sigmas!r} robust sigmas of "
            "log(loss)): a sustained rise.",
        ),
        Alert(
            "LossSpike",
            f"max by (run) ({SPIKES_WARNED}) > 0",
            f"{{{{ $value | humanize }}}} loss spikes of run {{{{ $labels.run }}}}{LAYER_TEXT} "
            f"in the last {COUNTER_WINDOW} repeated a spike of the {t.loss_spike_repeat_steps!r} "
            "steps before or came with a spike of the global gradient norm (a spike: above "
            f"{t.loss_spike_factor!r}x the median of the last {t.history_steps!r} steps and "
            f"{t.loss_noise_sigmas!r} robust sigmas of log(loss)); a lone spike with a steady "
            "gradient norm is one hard batch, no warning.",
        ),
        Alert(
            "AmpOverflowStorm",
            f"max by (run) (gradwatch:amp_overflow_steps:increase{HISTORY_WINDOW})"
            f" >= {t.amp_skipped_steps!r}",
            f"The loss scaler of run {{{{ $labels.run }}}}{LAYER_TEXT} skipped "
            f"{{{{ $value | humanize }}}} steps in {HISTORY_WINDOW} (alert at "
            f"{t.amp_skipped_steps!r}): fp16 values keep overflowing.",
        ),
    ]


def liveness_alerts(t: Thresholds) -> list[Alert]:
    """A trainer that stopped stepping, or that Prometheus cannot scrape."""
    return [
        Alert(
            "TrainingStalled",
            # a clean end is no stall (the Pushgateway keeps the last push of a kept run)
            f"max by (run) (gradwatch:seconds_since_last_step"
            f" unless on ({BY_RUN}) gradwatch_run_finished == 1) > {t.stalled_seconds!r}",
            f"Run {{{{ $labels.run }}}}{LAYER_TEXT} made no step for "
            "{{ $value | humanizeDuration }} while its metrics are still served (alert after "
            f"{t.stalled_seconds!r}s).",
            culprits=(("ranks", named_by("rank", 'gradwatch:seconds_since_last_step{run="%s"}'
                                         f" > {t.stalled_seconds!r}")),),
        ),
        Alert(
            "TrainerDown",
            # Per run: the targets down whose last hour of samples shows a run that did not
            # end cleanly (gradwatch_run_finished 1, kept by its last scrape); a target down
            # with no run seen in the last hour alerts alone, without a run. absent() is not
            # used: it has no run and would fire on an idle stack with no trainer configured.
            f"count by (run) (max by (job, instance, {BY_RUN}) ("
            f'last_over_time(gradwatch_step{{job="{TRAINER_JOB}"}}[1h])'
            f" unless on (job, instance, {BY_RUN})"
            f' last_over_time(gradwatch_run_finished{{job="{TRAINER_JOB}"}}[1h]) == 1)'
            f' and on (job, instance) up{{job="{TRAINER_JOB}"}} == 0)'
            f' or (up{{job="{TRAINER_JOB}"}} == 0 unless on (job, instance)'
            f' last_over_time(gradwatch_step{{job="{TRAINER_JOB}"}}[1h])'
            # a finished target left in file_sd pages nothing for a day
            f' unless on (job, instance)'
            f' last_over_time(gradwatch_run_finished{{job="{TRAINER_JOB}"}}[1d]) == 1)',
            "Prometheus cannot scrape {{ with $labels.run }}{{ $value }} target(s) of run "
            "{{ . }}, which did not end cleanly{{ else }}{{ $labels.instance }}, with no run "
            "seen in the last hour{{ end }}" + LAYER_TEXT + ". A clean end sets gradwatch_run_finished "
            "and pages nothing; remove the file_sd entry of a target that is gone.",
            for_="1m",
            culprits=(("instances", named_by(
                "instance", f'last_over_time(gradwatch_step{{job="{TRAINER_JOB}", run="%s"}}[1h])'
                f' and on (job, instance) up{{job="{TRAINER_JOB}"}} == 0')),),
        ),
    ]


def leading_alerts(t: Thresholds) -> list[Alert]:
    """Leading indicators of transformer instability and skip-on-spike, by level (the
    trainer's detectors also judge growth and drift, which need the sample history); one
    alert per run, the worst modules named."""
    leading_for = f"{t.leading_samples * SCRAPE_INTERVAL_SECONDS}s"
    attention = f"gradwatch_attention_logit_max > {t.attention_logit_level!r}"
    return [
        Alert(
            "AttentionLogitGrowth",
            f"max by (run) ({attention})",
            f"The max attention logit of run {{{{ $labels.run }}}}{LAYER_TEXT} is "
            f"{{{{ $value | humanize }}}}, above {t.attention_logit_level!r} for {leading_for}: "
            "attention collapses before the loss diverges.",
            for_=leading_for,
            culprits=(("layers", named_by("layer", attention.replace(
                "gradwatch_attention_logit_max", 'gradwatch_attention_logit_max{run="%s"}'))),),
        ),
        Alert(
            "OutputLogitDivergence",
            f"max by (run) (abs(gradwatch_output_logit_logsumexp))"
            f" > {t.output_logsumexp_level!r}",
            f"|log Z| of the output logits of run {{{{ $labels.run }}}}{LAYER_TEXT} is "
            f"{{{{ $value | humanize }}}}, above {t.output_logsumexp_level!r} for "
            f"{leading_for}.",
            for_=leading_for,
        ),
        Alert(
            "AdamUpdateDecorrelation",
            # the collapse alone is what a run that fits its data exactly shows too: the
            # gradient's growth under it is the forecast (HISTORY_WINDOW stands in for "since
            # the collapse")
            f"max by (run) ({ADAM_GRAD_LEVEL} / ({ADAM_GRAD_TROUGH} > 0)"
            f" > {t.eps_dominated_grad_growth!r}"
            f" and min_over_time({ADAM_EPS_MEDIAN}[{HISTORY_WINDOW}])"
            f" > {t.eps_dominated_ratio!r})",
            f"Run {{{{ $labels.run }}}}{LAYER_TEXT}: the median share of Adam elements whose "
            f"second moment is eps-dominated stayed above {t.eps_dominated_ratio!r} for "
            f"{HISTORY_WINDOW}, and the gradient norm (its {RECENT_WINDOW} median) grew "
            f"{{{{ printf \"%.3g\" $value }}}}x from its low in that time, for {leading_for}: "
            "Adam steps like SGD at lr / eps, so the growth feeds itself.",
            for_=leading_for,
        ),
        Alert(
            "UpdateSkipped",
            f"max by (run) (sum by ({BY_RUN}) "
            f"({counted_in('gradwatch_skipped_updates_total', COUNTER_WINDOW)})) > 0",
            f"Skip-on-spike undid {{{{ $value | humanize }}}} outlier updates of run "
            f"{{{{ $labels.run }}}}{LAYER_TEXT} in the last {COUNTER_WINDOW}.",
        ),
    ]


#: Go-template spelling of the alert table's summary fields.
SUMMARY_FIELDS = {"run": "{{ $labels.run }}", "layer": LAYER_TEXT,
                  "run_or_instance": "{{ with $labels.run }}run {{ . }}{{ else }}"
                                     "{{ $labels.instance }}{{ end }}"}


def summary_template(name: str) -> str:
    """The alert table's headline of ``name`` as a Prometheus annotation template."""
    return alert_spec(name).summary.format(**SUMMARY_FIELDS)


def alerting_rule(alert: Alert, runbook_base_url: str = RUNBOOK_BASE_URL) -> dict[str, Any]:
    """One alert in Prometheus' rule-file shape, its table row filling in the rest."""
    spec = alert_spec(alert.name)
    rule: dict[str, Any] = {"alert": alert.name, "expr": alert.expr}
    if alert.for_ != "0s":
        rule["for"] = alert.for_
    rule["labels"] = {"severity": spec.severity} | (
        {"regime": spec.regime} if spec.regime else {})
    rule["annotations"] = {
        "summary": summary_template(alert.name),
        "description": alert.description,
        "remedy": spec.remedy,
        "runbook_url": spec.runbook_url(runbook_base_url),
    } | dict(alert.culprits)
    return rule


def rule_groups(thresholds: Thresholds,
                runbook_base_url: str = RUNBOOK_BASE_URL) -> dict[str, Any]:
    """The whole rule file as a dict.

    One group: rules of a group are evaluated in order, so every alert reads the recording
    rules of the same evaluation (separate groups would run on independent timers).
    """
    return {"groups": [{
        "name": "gradwatch",
        "rules": recording_rules(thresholds) + [
            alerting_rule(a, runbook_base_url)
            for a in alerts(thresholds) + leading_alerts(thresholds)],
    }]}


def render_rules(thresholds: Thresholds | None = None,
                 runbook_base_url: str = RUNBOOK_BASE_URL) -> str:
    """The rule file's text for ``thresholds`` (defaults when None)."""
    header = ("# Generated by monitor/ops/rules.py from monitor/records/thresholds.py and\n"
              "# monitor/records/alert_table.py: do not edit.\n"
              "# Regenerate with gradwatch.monitor.ops.rules.write_rules (gradwatch rules).\n")
    body = yaml.safe_dump(rule_groups(thresholds or Thresholds(), runbook_base_url),
                          sort_keys=False, width=200, allow_unicode=True)
    return header + body


def write_rules(path: str | Path = RULES_PATH, thresholds: Thresholds | None = None,
                runbook_base_url: str = RUNBOOK_BASE_URL) -> Path:
    """Write the rule file for ``thresholds`` to ``path``, its runbook links under
    ``runbook_base_url``; returns the path.

    Raises:
        ValueError: a runbook_base_url that is not an absolute http(s) URL.
    """
    check_runbook_base_url(runbook_base_url)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_rules(thresholds, runbook_base_url))
    return path
