"""Grafana dashboards, generated from one ``Thresholds`` object (grafana-foundation-sdk).

Two dashboards: training health (one row per concern of a run, a rank view of stragglers)
and layers (per-layer statistics ordered by depth, a depth x time map for 200+ layers). Every threshold line or band drawn is a ``Thresholds`` field, so
the dashboards agree with the detectors and the Prometheus rules. Per-layer panels read the
``gradwatch:<metric>:by_depth`` recording rules (monitor/ops/rules.py), whose zero-padded ``depth``
label sorts layers by depth, never alphabetically.

"Latest" panels read ``last_over_time`` over the dashboard's range, so they still show a run
after it ended; NaN and +-Inf (exported as such) get a colour of their own (NONFINITE_COLORS).

The committed JSON in dashboards/ is ``render_dashboards()`` of the default thresholds (a test
keeps them equal); ``write_dashboards`` writes them for custom thresholds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from grafana_foundation_sdk.builders import (
    barchart,
    common,
    dashboard,
    prometheus,
    stat,
    statetimeline,
    table,
    timeseries,
)
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_model
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import prometheus as prometheus_model

from ..records.alert_table import CRITICAL, INFO, RULE_NAMES, WARNING
from ..records.alert_table import spec as alert_spec
from ..records.regimes import REGIMES, code
from ..records.thresholds import Thresholds
from .rules import COUNTER_WINDOW, HISTORY_WINDOW, counted_in

DASHBOARDS_DIR = Path("dashboards")
DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
RUN = 'run=~"$run"'
LAYER = 'run=~"$run", layer=~"$layer"'
#: Colour and meaning of each regime code of gradwatch:regime:code (REGIMES order).
REGIME_COLORS = {"healthy": "green", "vanishing": "blue", "exploding": "orange",
                 "nonfinite": "dark-red"}
#: Colour of a non-finite value on every per-layer panel (a value that overflowed).
NONFINITE_COLORS = {"NaN": "purple", "+Inf": "dark-red", "-Inf": "dark-blue"}
#: Beyond these, a float is an infinity (JSON has no Inf; Grafana's ranges are inclusive).
HUGE = 1e300
#: Layer rows of the depth x time map on one screen (its height fits them at 1-2 px each).
MAP_ROWS = 1024
#: Grafana's grid is FULL_WIDTH columns wide: charts take half of it (two side by side),
#: small figures a quarter; the status row (regime, firing alerts, heartbeat) is lower.
FULL_WIDTH = 24
HALF_WIDTH, QUARTER_WIDTH = FULL_WIDTH // 2, FULL_WIDTH // 4
CHART_HEIGHT, STATUS_HEIGHT = 8, 6
#: The regime timeline's share of its row; the firing alerts' table takes the rest.
REGIME_WIDTH = 14
#: Height of the depth x time map: a full screen of layer rows.
MAP_HEIGHT = 24
#: Slant of the depth profiles' layer names, so that long names fit under their bars.
LABEL_ROTATION = -45
#: Series legend of a run (rank only shows when the world size is above 1).
RUN_LEGEND = "{{run}} {{rank}}"
#: Layers legend: the zero-padded depth first, so the legend reads in depth order.
DEPTH_LEGEND = "{{depth}} {{layer}}"


def query(expr: str, legend: str = RUN_LEGEND, ref: str = "A", *,
          instant_table: bool = False) -> prometheus.Dataquery:
    """A Prometheus target; ``instant_table`` for latest-value tables and profiles."""
    target = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DATASOURCE)
    if instant_table:
        return target.instant().format(prometheus_model.PromQueryFormat.TABLE)
    return target.legend_format(legend).range()


def steps(*pairs: tuple[float | None, str]) -> dashboard.ThresholdsConfig:
    """Absolute threshold steps; the first pair's value is None (from -infinity)."""
    return dashboard.ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE).steps(
        [model.Threshold(value=value, color=color) for value, color in pairs])


def nonfinite_mappings() -> list:
    """Value mappings giving NaN, +Inf and -Inf their own colour and text."""
    result = model.ValueMappingResult
    return [
        model.SpecialValueMap(model.DashboardSpecialValueMapOptions(
            match=model.SpecialValueMatch.NA_N,
            result=result(text="NaN", color=NONFINITE_COLORS["NaN"], index=0))),
        model.RangeMap(model.DashboardRangeMapOptions(
            from_val=HUGE, to=None,
            result=result(text="+Inf", color=NONFINITE_COLORS["+Inf"], index=1))),
        model.RangeMap(model.DashboardRangeMapOptions(
            from_val=None, to=-HUGE,
            result=result(text="-Inf", color=NONFINITE_COLORS["-Inf"], index=2))),
    ]


def latest(selector: str) -> str:
    """The last value of each series in the dashboard's range: still there after a run ended
    (an instant query of a finished run's stale series returns nothing)."""
    return f"last_over_time({selector}[$__range])"


def explain(t: Thresholds, *names: str) -> str:
    """Panel description: each threshold drawn, its value and its reason (Thresholds docs)."""
    reasons = Thresholds.documented()
    return " ".join(f"{name} = {getattr(t, name)!r}: {reasons[name][1]}" for name in names)


def log_scale() -> common.ScaleDistributionConfig:
    return common.ScaleDistributionConfig().type(common_model.ScaleDistribution.LOG).log(10)


def graph(title: str, *targets: prometheus.Dataquery, unit: str = "short", log: bool = False,
          lines: dashboard.ThresholdsConfig | None = None, band: bool = False,
          width: int = HALF_WIDTH, description: str | None = None,
          per_layer: bool = False) -> timeseries.Panel:
    """A time series panel; ``lines`` are drawn as threshold lines (or a band);
    ``per_layer`` panels name non-finite values in their colour."""
    panel = (timeseries.Panel().title(title).datasource(DATASOURCE).unit(unit)
             .height(CHART_HEIGHT).span(width).legend(common.VizLegendOptions().show_legend(True)
                                 .display_mode(common_model.LegendDisplayMode.LIST)
                                 .placement(common_model.LegendPlacement.BOTTOM)))
    for target in targets:
        panel = panel.with_target(target)
    if description:
        panel = panel.description(description)
    if log:
        panel = panel.scale_distribution(log_scale())
    if per_layer:
        panel = panel.mappings(nonfinite_mappings())
    if lines is not None:
        mode = (common_model.GraphThresholdsStyleMode.LINE_AND_AREA if band
                else common_model.GraphThresholdsStyleMode.DASHED)
        panel = panel.thresholds(lines).thresholds_style(
            common.GraphThresholdsStyleConfig().mode(mode))
    return panel


def variables(board: dashboard.Dashboard, with_layer: bool) -> dashboard.Dashboard:
    """Template variables: datasource, run (and layer)."""
    board = board.with_variable(
        dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus"))
    board = board.with_variable(
        dashboard.QueryVariable("run").label("Run").datasource(DATASOURCE)
        .query("label_values(gradwatch_step, run)").multi(True).include_all(True)
        .all_value(".*").refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED))
    if with_layer:
        board = board.with_variable(
            dashboard.QueryVariable("layer").label("Layer").datasource(DATASOURCE)
            .query(f"label_values(gradwatch_grad_norm{{{RUN}}}, layer)").multi(True)
            .include_all(True).all_value(".*")
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED))
    return board


#: The alert table's rule alerts: what the alert panels show (not other exporters' alerts).
FIRING_ALERTS = f'ALERTS{{alertstate="firing", alertname=~"{"|".join(RULE_NAMES)}", {RUN}}}'
SEVERITY_COLORS = {CRITICAL: "red", WARNING: "orange", INFO: "blue"}


def alert_mappings() -> list[model.ValueMap]:
    """Each alert name and severity in its severity's colour, from the alert table."""
    colours = {name: SEVERITY_COLORS[alert_spec(name).severity] for name in RULE_NAMES}
    return [model.ValueMap(options={
        value: model.ValueMappingResult(color=colour, index=index)
        for index, (value, colour) in enumerate((colours | SEVERITY_COLORS).items())})]


def alerts_description() -> str:
    """What each alert means and what to try, from the alert table."""
    return "Firing gradwatch alerts of the selected runs. " + " ".join(
        f"{name} ({alert_spec(name).severity}): {alert_spec(name).remedy} "
        f"[runbook]({alert_spec(name).runbook_url()})" for name in RULE_NAMES)


def alert_annotation() -> dict:
    """Firing alerts of the selected runs as annotations (Prometheus annotation fields the
    SDK does not model: step, titleFormat, textFormat, tagKeys)."""
    return {
        "name": "gradwatch alerts", "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "enable": True, "iconColor": "red", "step": "15s",
        "expr": FIRING_ALERTS,
        "titleFormat": "{{alertname}}", "textFormat": "run {{run}} {{layer}}",
        "tagKeys": "severity,run,layer", "useValueForTime": False,
    }


def new_board(title: str, uid: str, description: str, with_layer: bool) -> dashboard.Dashboard:
    board = (dashboard.Dashboard(title).uid(uid).description(description)
             .tags(["gradwatch"]).refresh("30s").time("now-1h", "now").timezone("browser")
             .link(dashboard.DashboardLink("gradwatch").type(model.DashboardLinkType.DASHBOARDS)
                   .tags(["gradwatch"]).as_dropdown(True)))
    return variables(board, with_layer)


def regime_panel() -> statetimeline.Panel:
    """The run's regime over time, coloured per REGIME_COLORS."""
    regime_map = model.ValueMap(options={
        str(code(name)): model.ValueMappingResult(text=name, color=REGIME_COLORS[name],
                                                  index=code(name))
        for name in REGIMES})
    return (statetimeline.Panel().title("Regime").datasource(DATASOURCE)
            .height(STATUS_HEIGHT).span(REGIME_WIDTH)
            .with_target(query(f"gradwatch:regime:code{{{RUN}}}"))
            .mappings([regime_map]).show_value(common_model.VisibilityMode.NEVER)
            .description("healthy | vanishing | exploding | nonfinite, as the trainer "
                         "judges it (gradwatch_regime)."))


def firing_alerts_panel() -> table.Panel:
    """The gradwatch alerts firing now, with their severity colour and runbook links."""
    return (table.Panel().title("Firing alerts").datasource(DATASOURCE)
            .height(STATUS_HEIGHT).span(FULL_WIDTH - REGIME_WIDTH)
            .with_target(query(FIRING_ALERTS, instant_table=True))
            .with_transformation(model.DataTransformerConfig(
                id_val="organize", options={"excludeByName": {
                    "Time": True, "Value": True, "__name__": True, "alertstate": True}}))
            .mappings(alert_mappings()).description(alerts_description()))


def loss_panel(t: Thresholds) -> timeseries.Panel:
    """The loss by rank, its level and the bar LossDivergence judges that level against."""
    return graph(
        "Loss by rank",
        query(f"gradwatch_loss{{{RUN}}}"),
        query(f"gradwatch_loss_recent_median{{{RUN}}}",
              RUN_LEGEND + f" level (last {t.loss_divergence_steps} steps)", "B"),
        query(f"gradwatch_loss_reference_median{{{RUN}}} * {t.loss_divergence_factor!r}",
              RUN_LEGEND + " divergence bar", "C"),
        log=True, description=(
            "The loss, its level (the median of its last loss_divergence_steps steps) and "
            "the bar LossDivergence judges that level against (the reference median times "
            f"loss_divergence_factor = {t.loss_divergence_factor!r}, with "
            f"{t.loss_divergence_sigmas!r} robust sigmas of log(loss) too); level and bar "
            "appear once the loss is judged (after loss_warmup_steps, also after a jump of "
            "the learning rate)."))


def training_health(t: Thresholds) -> dashboard.Dashboard:
    """Per run: regime, firing alerts, loss, gradient norm, non-finite values, AMP, liveness."""
    heartbeat = (stat.Panel().title("Time since last step").datasource(DATASOURCE).unit("s")
                 .height(STATUS_HEIGHT).span(QUARTER_WIDTH)
                 .with_target(query(f"gradwatch:seconds_since_last_step{{{RUN}}}"))
                 .thresholds(steps((None, "green"), (t.stalled_seconds, "red")))
                 .description(explain(t, "stalled_seconds")))
    board = new_board("gradwatch / Training health", "gradwatch-training-health",
                      "Per-run health of gradwatch-monitored trainings.", with_layer=False)
    panels = [
        regime_panel(), firing_alerts_panel(),
        loss_panel(t),
        graph("Global gradient norm (before clipping)",
              query(f"gradwatch_global_grad_norm{{{RUN}}}"),
              query(f"gradwatch_clipped_grad_norm{{{RUN}}}", RUN_LEGEND + " clipped", "B"),
              log=True, lines=steps((None, "green"), (t.explosion_norm, "red")),
              description=explain(t, "explosion_norm")),
        graph(f"Steps above explosion_norm ({COUNTER_WINDOW}, every step counted)",
              query(f"gradwatch:steps_above_explosion_norm:increase{COUNTER_WINDOW}{{{RUN}}}"),
              lines=steps((None, "green"), (1, "red"))),
        graph(f"Non-finite values ({COUNTER_WINDOW})",
              *(query(f"sum by (run, rank, source) "
                      f"({counted_in(f'{counter}{{{RUN}}}', COUNTER_WINDOW)})",
                      RUN_LEGEND + " {{source}}" + suffix, ref)
                for ref, counter, suffix in (("A", "gradwatch_nonfinite_total", ""),
                                             ("B", "gradwatch_nonfinite_steps_total", " steps")))),
        graph("AMP loss scale", query(f"gradwatch_amp_loss_scale{{{RUN}}}"), log=True),
        graph(f"AMP skipped steps ({HISTORY_WINDOW})",
              query(f"gradwatch:amp_skipped_steps:increase{HISTORY_WINDOW}{{{RUN}}}"),
              lines=steps((None, "green"), (t.amp_skipped_steps, "red")),
              description=explain(t, "amp_skipped_steps")),
        graph("Learning rate", query(f"gradwatch_learning_rate{{{RUN}}}",
                                     RUN_LEGEND + " {{optimizer}}/{{group}}"), log=True),
        graph("Steps per second", query(f"gradwatch:steps_per_second:deriv{COUNTER_WINDOW}"
                                        f"{{{RUN}}}"), width=QUARTER_WIDTH),
        heartbeat,
        graph("Step time by rank (stragglers)", query(f"gradwatch_step_seconds{{{RUN}}}"),
              query(f"max by (run) (gradwatch_step_seconds{{{RUN}}})"
                    f" / min by (run) (gradwatch_step_seconds{{{RUN}}})",
                    "{{run}} slowest / fastest", "B"),
              unit="s", width=FULL_WIDTH,
              description="Wall-clock time of each rank's latest step, and the ratio of the "
                          "slowest rank's to the fastest's: every rank waits for the slowest "
                          "at each all-reduce."),
        *leading_health_panels(t),
    ]
    for panel in panels:
        board = board.with_panel(panel)
    return board


def leading_health_panels(t: Thresholds) -> list[timeseries.Panel]:
    """Issue 17: output logits, skip-on-spike, attention per module."""
    level = t.output_logsumexp_level
    return [
        graph("Output logits: mean log Z, max and mean",
              query(f"gradwatch_output_logit_logsumexp{{{RUN}}}", RUN_LEGEND + " log Z"),
              query(f"gradwatch_output_logit_max{{{RUN}}}", RUN_LEGEND + " max", "B"),
              query(f"gradwatch_output_logit_mean{{{RUN}}}", RUN_LEGEND + " mean (shift)", "C"),
              lines=steps((None, "red"), (-level, "green"), (level, "red")),
              description=explain(t, "output_logsumexp_level", "output_logsumexp_drift")),
        graph(f"Skipped updates ({COUNTER_WINDOW}, skip-on-spike)",
              query(f"sum by (run, rank) "
                    f"({counted_in(f'gradwatch_skipped_updates_total{{{RUN}}}', COUNTER_WINDOW)})"),
              lines=steps((None, "green"), (1, "red"))),
        # attention modules are not layers (they own no parameters): no depth order
        graph("Attention logit max by module",
              query(f"gradwatch_attention_logit_max{{{RUN}}}", RUN_LEGEND + " {{layer}}"),
              log=True, lines=steps((None, "green"), (t.attention_logit_level, "red")),
              description=explain(t, "attention_logit_level", "attention_logit_growth_factor")),
        graph("Attention entropy by module (nats)",
              query(f"gradwatch_attention_entropy{{{RUN}}}", RUN_LEGEND + " {{layer}}")),
    ]


def leading_layer_panels(t: Thresholds) -> list[timeseries.Panel]:
    """Issue 17: update/gradient cosine and Adam eps-dominated ratio per layer."""
    return [
        graph("Update/gradient cosine",
              query(f"gradwatch:update_grad_cosine:by_depth{{{LAYER}}}", DEPTH_LEGEND),
              lines=steps((None, "red"), (t.update_grad_cosine_low, "green")),
              description=explain(t, "update_grad_cosine_low"), per_layer=True),
        graph("Adam eps-dominated ratio",
              query(f"gradwatch:adam_eps_dominated_ratio:by_depth{{{LAYER}}}", DEPTH_LEGEND),
              unit="percentunit", lines=steps((None, "green"), (t.eps_dominated_ratio, "red")),
              description=explain(t, "eps_dominated_ratio"), per_layer=True),
    ]


def depth_profile(title: str, metric: str, log: bool) -> barchart.Panel:
    """Latest value of a per-layer metric, one bar per layer, input layer first."""
    panel = (barchart.Panel().title(title).datasource(DATASOURCE)
             .height(CHART_HEIGHT).span(HALF_WIDTH)
             .with_target(query(latest(f"gradwatch:{metric}:by_depth{{{LAYER}}}"),
                                instant_table=True))
             .mappings(nonfinite_mappings())
             .with_transformation(model.DataTransformerConfig(
                 id_val="sortBy", options={"sort": [{"field": "depth"}]}))
             .x_field("layer").x_tick_label_rotation(LABEL_ROTATION)
             .description("Latest sampled step in the time range (still shown after the "
                          "run ended); bars in forward (depth) order."))
    return panel.scale_distribution(log_scale()) if log else panel


def layers(t: Thresholds) -> dashboard.Dashboard:
    """Per layer, ordered by depth: gradient norm map and profiles, activations, updates."""
    ratio = t.vanishing_depth_ratio
    grad_map = (statetimeline.Panel()
                .title("Gradient norm relative to the output side, by layer (depth x time)")
                .datasource(DATASOURCE).height(MAP_HEIGHT).span(FULL_WIDTH)
                # the output-side quarter's geometric mean: what GradientVanishing compares to
                .with_target(query(f"log10(gradwatch:grad_norm:by_depth{{{LAYER}}}"
                                   " / on (run, rank) group_left ()"
                                   " exp(gradwatch:grad_norm:log_mean_output_quarter"
                                   f"{{{RUN}}}))", DEPTH_LEGEND))
                .per_page(MAP_ROWS).row_height(1).merge_values(False)
                .legend(common.VizLegendOptions().show_legend(False))
                .color_scheme(dashboard.FieldColor().mode(model.FieldColorModeId.THRESHOLDS))
                .thresholds(steps((None, "blue"), (math.log10(ratio), "green"),
                                  (-math.log10(ratio), "red")))
                .mappings(nonfinite_mappings())
                .show_value(common_model.VisibilityMode.NEVER)
                .description("Rows are layers, input side on top; colour: log10 of the layer's "
                             "gradient norm over the output-side quarter's geometric mean. Blue below "
                             f"log10 vanishing_depth_ratio = {math.log10(ratio):g} (vanishing, see "
                             "docs/theory.md § Vanishing and exploding gradients), "
                             f"red above {-math.log10(ratio):g} (growing toward "
                             "the input: exploding), "
                             + ", ".join(f"{c} {v}" for v, c in NONFINITE_COLORS.items())
                             + ". " + explain(t, "vanishing_depth_ratio")))
    board = new_board("gradwatch / Layers", "gradwatch-layers",
                      "Per-layer statistics of one run, layers in forward (depth) order.",
                      with_layer=True)
    panels = [
        grad_map,
        depth_profile("Gradient norm by depth (latest)", "grad_norm", log=True),
        depth_profile("Activation variance by depth (latest)", "activation_variance", log=True),
        graph("Update ratio ||dW||/||W|| (healthy band shaded)",
              query(f"gradwatch:update_ratio:by_depth{{{LAYER}}}", DEPTH_LEGEND), log=True,
              lines=steps((None, "blue"), (t.update_ratio_low, "green"),
                          (t.update_ratio_high, "red")), band=True,
              description=explain(t, "update_ratio_low", "update_ratio_high"), per_layer=True),
        graph("Weight norm", query(f"gradwatch:weight_norm:by_depth{{{LAYER}}}", DEPTH_LEGEND),
              log=True, per_layer=True),
        graph("Saturated activations (sigmoid/tanh flat region)",
              query(f"gradwatch:activation_saturation_ratio:by_depth{{{LAYER}}}",
                    DEPTH_LEGEND), unit="percentunit",
              lines=steps((None, "green"), (t.saturation_ratio, "red")),
              description=explain(t, "saturation_ratio"), per_layer=True),
        graph("Dead units (exact zeros after ReLU)",
              query(f"gradwatch:activation_dead_ratio:by_depth{{{LAYER}}}", DEPTH_LEGEND),
              unit="percentunit", lines=steps((None, "green"), (t.dead_ratio, "red")),
              description=explain(t, "dead_ratio"), per_layer=True),
        *leading_layer_panels(t),
    ]
    for panel in panels:
        board = board.with_panel(panel)
    return board


def dashboard_json(board: dashboard.Dashboard) -> dict:
    """The dashboard as Grafana's JSON model, alert annotations included."""
    data = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    data["annotations"] = {"list": [alert_annotation()]}
    return data


def render_dashboards(thresholds: Thresholds | None = None) -> dict[str, str]:
    """File name -> JSON text of every dashboard for ``thresholds`` (defaults when None)."""
    t = thresholds or Thresholds()
    boards = {"gradwatch-training-health.json": training_health(t),
              "gradwatch-layers.json": layers(t)}
    return {name: json.dumps(dashboard_json(board), indent=2, sort_keys=True) + "\n"
            for name, board in boards.items()}


def write_dashboards(directory: str | Path = DASHBOARDS_DIR,
                     thresholds: Thresholds | None = None) -> list[Path]:
    """Write every dashboard into ``directory``; returns the paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_dashboards(thresholds).items():
        (directory / name).write_text(text)
        written.append(directory / name)
    return written
