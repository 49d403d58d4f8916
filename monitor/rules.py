"""Prometheus alerting and recording rules, generated from one ``Thresholds`` object.

The committed file ``deploy/prometheus/rules/gradwatch.rules.yml`` is ``render_rules()`` of the
default thresholds (a test keeps them equal); ``write_rules`` writes it for custom thresholds.

Alerts carry the labels the trainer itself pushes to Alertmanager (alertname, severity, run,
layer, rank), and nothing else, so the two sources group and deduplicate. Every alert
aggregates ``by (run, rank[, layer])`` to drop job/instance; Prometheus omits empty labels, so
rank (world size 1) and layer (run-wide alerts) are simply absent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml
from prometheus_client.utils import floatToGoString

from .thresholds import Thresholds

#: Prometheus scrape interval of deploy/prometheus/prometheus.yml, in seconds. Prometheus sees
#: per-layer statistics once per scrape, so "N sampled steps in a row" becomes N scrapes.
SCRAPE_INTERVAL_SECONDS = 15
#: Window for counter increases: long enough for 4+ scrapes, short enough to resolve soon.
COUNTER_WINDOW = "2m"
#: Window standing in for Thresholds.history_steps (Prometheus knows time, not steps).
HISTORY_WINDOW = "10m"
#: Latest quarter of HISTORY_WINDOW, for the loss growth test.
RECENT_WINDOW = "150s"
#: Scrape job of the trainers (prometheus.yml), for TrainerDown.
TRAINER_JOB = "gradwatch"
#: Runbook anchors: docs/runbook.md#<alertname lowercased>.
RUNBOOK = "docs/runbook.md"
#: Regimes of the gradwatch_regime one-hot gauge, in the order of gradwatch:regime:code.
REGIMES = ("healthy", "vanishing", "exploding", "nonfinite")
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

#: Label lists of the aggregations: what an alert keeps (the trainer's labels).
BY_RUN = "run, rank"
BY_RUN_LAYER = "run, rank, layer"
#: Input side: depth below half the layer count (depth 0 is the input side).
INPUT_SIDE_LAYERS = (
    "gradwatch_layer_depth < on (run, rank) group_left () (gradwatch_layers / 2)"
)
#: Go-template fragment naming the layer when the alert has one (run-wide alerts have none).
LAYER_TEXT = "{{ with $labels.layer }}, layer {{ . }}{{ end }}"
#: The run of a TrainerDown alert is known only if the target was ever scraped.
RUN_IF_KNOWN = "{{ with $labels.run }} (run {{ . }}){{ end }}"


@dataclass(frozen=True)
class Alert:
    """One alerting rule: a contract name and how it reads to the person paged."""

    name: str
    severity: str
    expr: str
    summary: str
    description: str
    for_: str = "0s"


def explosion_bucket_label(thresholds: Thresholds) -> str:
    """The ``le`` label of the explosion_norm bucket, spelled as prometheus_client spells it."""
    return floatToGoString(thresholds.explosion_norm)


def counted_in(counter: str, window: str) -> str:
    """Increase of ``counter`` over ``window``, counting series born inside the window whole.

    increase() needs two samples, so a rare-event counter that an exporter creates on its
    first event (at 1, not 0) would never show that event; a series absent ``window`` ago
    counts its full value instead.
    """
    return f"({counter} unless {counter} offset {window}) or increase({counter}[{window}])"


def recording_rules(thresholds: Thresholds) -> list[dict]:
    """Recording rules: what the alerts build on and what makes dashboards cheap."""
    le = explosion_bucket_label(thresholds)
    regime_code = " or ".join(
        f'gradwatch_regime{{regime="{regime}"}} * {code}' for code, regime in enumerate(REGIMES)
    )
    # count_values turns the depth into a label; zero-padding makes label order numeric order.
    padded_depth = 'count_values by (run, rank, layer) ("depth", gradwatch_layer_depth)'
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
        ("gradwatch:amp_skipped_steps:increase" + HISTORY_WINDOW,
         f"sum by ({BY_RUN}) "
         f"({counted_in('gradwatch_amp_skipped_steps_total', HISTORY_WINDOW)})"),
        ("gradwatch:grad_norm:input_side",
         f"max by ({BY_RUN_LAYER}) (gradwatch_grad_norm"
         f" and on ({BY_RUN_LAYER}) {INPUT_SIDE_LAYERS})"),
        ("gradwatch:grad_norm_output_side:max",
         f"max by ({BY_RUN}) (gradwatch_grad_norm"
         f" unless on ({BY_RUN_LAYER}) {INPUT_SIDE_LAYERS})"),
        ("gradwatch:grad_norm_depth_ratio",
         "gradwatch:grad_norm:input_side"
         f" / on ({BY_RUN}) group_left () gradwatch:grad_norm_output_side:max"),
        ("gradwatch:layer_depth:padded", padded_depth),
        *((f"gradwatch:{metric}:by_depth",
           f"max by ({BY_RUN_LAYER}) (gradwatch_{metric})"
           f" * on ({BY_RUN_LAYER}) group_left (depth) gradwatch:layer_depth:padded")
          for metric in DEPTH_ORDERED_METRICS),
        ("gradwatch:regime:code", f"sum by ({BY_RUN}) ({regime_code})"),
        ("gradwatch:steps_per_second:deriv" + COUNTER_WINDOW,
         f"max by ({BY_RUN}) (deriv(gradwatch_step[{COUNTER_WINDOW}]))"),
        ("gradwatch:seconds_since_last_step",
         f"time() - max by ({BY_RUN}) (gradwatch_last_step_timestamp_seconds)"),
    ]
    return [{"record": name, "expr": expr} for name, expr in rules]


def alerts(t: Thresholds) -> list[Alert]:
    """The seven contract alerts, with their numbers taken from ``t``."""
    vanishing_for = f"{int(t.vanishing_samples * SCRAPE_INTERVAL_SECONDS)}s"
    return [
        Alert(
            "NonFiniteValues", "critical",
            f"gradwatch:nonfinite:increase{COUNTER_WINDOW} > 0"
            f" or on ({BY_RUN}) gradwatch:nonfinite_steps:increase{COUNTER_WINDOW} > 0",
            "Non-finite values (NaN/Inf) in run {{ $labels.run }}" + LAYER_TEXT,
            "{{ $value | humanize }} non-finite values (or steps) in the last "
            f"{COUNTER_WINDOW} in run {{{{ $labels.run }}}}{LAYER_TEXT}; no layer means the loss "
            "or a step-level count. Usually an explosion that overflowed.",
        ),
        Alert(
            "GradientExplosion", "critical",
            f"gradwatch:steps_above_explosion_norm:increase{COUNTER_WINDOW} > 0",
            "Gradient explosion in run {{ $labels.run }}",
            f"{{{{ $value | humanize }}}} steps in the last {COUNTER_WINDOW} of run "
            f"{{{{ $labels.run }}}}{LAYER_TEXT} had a global gradient norm above "
            f"{floatToGoString(t.explosion_norm)}.",
        ),
        Alert(
            "GradientVanishing", "warning",
            f"gradwatch:grad_norm_depth_ratio < {t.vanishing_depth_ratio!r}",
            "Vanishing gradients in run {{ $labels.run }}" + LAYER_TEXT,
            f"An input-side layer of run {{{{ $labels.run }}}}{LAYER_TEXT} has a gradient norm "
            "{{ printf \"%.3g\" $value }} times the largest output-side layer's, below "
            f"{t.vanishing_depth_ratio!r}, for {vanishing_for}.",
            for_=vanishing_for,
        ),
        Alert(
            "LossDivergence", "critical",
            f"max by ({BY_RUN}) ("
            f"(gradwatch_loss > {t.loss_spike_factor!r}"
            f" * max_over_time(gradwatch_loss[{HISTORY_WINDOW}] offset {COUNTER_WINDOW})"
            f" or avg_over_time(gradwatch_loss[{RECENT_WINDOW}]) > {t.loss_growth_factor!r}"
            f" * min_over_time(gradwatch_loss[{HISTORY_WINDOW}]))"
            # Factors of a loss only make sense while it is positive.
            f" and min_over_time(gradwatch_loss[{HISTORY_WINDOW}]) > 0)",
            "Loss diverging in run {{ $labels.run }}",
            f"Loss of run {{{{ $labels.run }}}}{LAYER_TEXT} reached "
            f"{{{{ $value | humanize }}}} (latest "
            f"value or {RECENT_WINDOW} average): above "
            f"{t.loss_spike_factor!r}x its earlier {HISTORY_WINDOW} maximum, or its last "
            f"{RECENT_WINDOW} average above {t.loss_growth_factor!r}x its {HISTORY_WINDOW} "
            "minimum.",
        ),
        Alert(
            "AmpOverflowStorm", "warning",
            f"gradwatch:amp_skipped_steps:increase{HISTORY_WINDOW} >= {t.amp_skipped_steps!r}",
            "AMP overflow storm in run {{ $labels.run }}",
            f"The loss scaler of run {{{{ $labels.run }}}}{LAYER_TEXT} skipped "
            f"{{{{ $value | humanize }}}} steps in {HISTORY_WINDOW} (alert at "
            f"{t.amp_skipped_steps!r}): fp16 values keep overflowing.",
        ),
        Alert(
            "TrainingStalled", "warning",
            f"gradwatch:seconds_since_last_step > {t.stalled_seconds!r}",
            "Training stalled in run {{ $labels.run }}",
            f"Run {{{{ $labels.run }}}}{LAYER_TEXT} made no step for "
            "{{ $value | humanizeDuration }} while its metrics are still served (alert after "
            f"{t.stalled_seconds!r}s).",
        ),
        Alert(
            "TrainerDown", "critical",
            # The run label comes from the target's last hour of samples; a target never
            # scraped successfully alerts without one. absent() is not used: it has no run
            # and would fire on an idle stack with no trainer configured.
            f"max by (job, instance, {BY_RUN}) "
            f'(last_over_time(gradwatch_step{{job="{TRAINER_JOB}"}}[1h]))'
            f' and on (job, instance) up{{job="{TRAINER_JOB}"}} == 0'
            f' or on (job, instance) up{{job="{TRAINER_JOB}"}} == 0',
            "Trainer {{ $labels.instance }} is down" + RUN_IF_KNOWN,
            f"Prometheus cannot scrape {{{{ $labels.instance }}}}{RUN_IF_KNOWN}{LAYER_TEXT}; "
            "last step "
            "seen: {{ $value }}. Remove its file_sd entry when the "
            "run has finished.",
            for_="1m",
        ),
    ]


def leading_alerts(t: Thresholds) -> list[Alert]:
    """Issue 17: leading indicators of transformer instability and skip-on-spike, by level
    (the trainer's detectors also judge growth and drift, which need the sample history)."""
    leading_for = f"{int(t.leading_samples * SCRAPE_INTERVAL_SECONDS)}s"
    return [
        Alert(
            "AttentionLogitGrowth", "warning",
            f"max by ({BY_RUN_LAYER}) (gradwatch_attention_logit_max)"
            f" > {t.attention_logit_level!r}",
            "Attention logits growing in run {{ $labels.run }}" + LAYER_TEXT,
            f"The max attention logit of run {{{{ $labels.run }}}}{LAYER_TEXT} is "
            f"{{{{ $value | humanize }}}}, above {t.attention_logit_level!r} for {leading_for}: "
            "attention collapses before the loss diverges.",
            for_=leading_for,
        ),
        Alert(
            "OutputLogitDivergence", "warning",
            f"max by ({BY_RUN}) (abs(gradwatch_output_logit_logsumexp))"
            f" > {t.output_logsumexp_level!r}",
            "Output logits drifting in run {{ $labels.run }}",
            f"|log Z| of the output logits of run {{{{ $labels.run }}}}{LAYER_TEXT} is "
            f"{{{{ $value | humanize }}}}, above {t.output_logsumexp_level!r} for "
            f"{leading_for}.",
            for_=leading_for,
        ),
        Alert(
            "AdamUpdateDecorrelation", "warning",
            f"quantile by ({BY_RUN}) (0.5, gradwatch_update_grad_cosine)"
            f" < {t.update_grad_cosine_low!r}"
            f" or quantile by ({BY_RUN}) (0.5, gradwatch_adam_eps_dominated_ratio)"
            f" > {t.eps_dominated_ratio!r}",
            "Adam updates decorrelated in run {{ $labels.run }}",
            f"Run {{{{ $labels.run }}}}{LAYER_TEXT}: median update/gradient cosine below "
            f"{t.update_grad_cosine_low!r} or median eps-dominated ratio above "
            f"{t.eps_dominated_ratio!r} (value {{{{ printf \"%.3g\" $value }}}}) for {leading_for}.",
            for_=leading_for,
        ),
        Alert(
            "UpdateSkipped", "warning",
            f"sum by ({BY_RUN}) "
            f"({counted_in('gradwatch_skipped_updates_total', COUNTER_WINDOW)}) > 0",
            "Updates skipped in run {{ $labels.run }}",
            f"Skip-on-spike undid {{{{ $value | humanize }}}} outlier updates of run "
            f"{{{{ $labels.run }}}}{LAYER_TEXT} in the last {COUNTER_WINDOW}.",
        ),
    ]


def alerting_rule(alert: Alert) -> dict:
    """One alert in Prometheus' rule-file shape."""
    rule = {"alert": alert.name, "expr": alert.expr}
    if alert.for_ != "0s":
        rule["for"] = alert.for_
    rule["labels"] = {"severity": alert.severity}
    rule["annotations"] = {
        "summary": alert.summary,
        "description": alert.description,
        "runbook_url": f"{RUNBOOK}#{alert.name.lower()}",
    }
    return rule


def rule_groups(thresholds: Thresholds) -> dict:
    """The whole rule file as a dict.

    One group: rules of a group are evaluated in order, so every alert reads the recording
    rules of the same evaluation (separate groups would run on independent timers).
    """
    return {"groups": [{
        "name": "gradwatch",
        "rules": recording_rules(thresholds) + [
            alerting_rule(a) for a in alerts(thresholds) + leading_alerts(thresholds)],
    }]}


def render_rules(thresholds: Thresholds | None = None) -> str:
    """The rule file's text for ``thresholds`` (defaults when None)."""
    header = ("# Generated by monitor/rules.py from monitor/thresholds.py: do not edit.\n"
              "# Regenerate with monitor.rules.write_rules (gradwatch rules).\n")
    body = yaml.safe_dump(rule_groups(thresholds or Thresholds()), sort_keys=False,
                          width=200, allow_unicode=True)
    return header + body


def write_rules(path: str | Path = RULES_PATH, thresholds: Thresholds | None = None) -> Path:
    """Write the rule file for ``thresholds`` to ``path``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_rules(thresholds))
    return path
