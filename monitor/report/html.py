"""`gradwatch report`: one self-contained HTML page that diagnoses a run at a glance.

The page shows, from the run's TensorBoard event files: the gradient-norm heatmap over depth
and step (coloured by regime bands fixed by the Thresholds: vanishing and exploding cells
have their own hues, the same in every report; `heatmap_colours`),
loss and global gradient norm on log scales with the explosion thresholds, update ratios and
activation statistics by depth, and the alert timeline with remedies. Inline CSS and SVG
only: it opens offline, from a file, in any browser.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path

import numpy as np

from ..records.snapshot import NONFINITE_SOURCES
from ..records.thresholds import Thresholds
from .heatmap_colours import COLOUR_MODES, check_mode, heatmap_colours, output_side_reference
from .run_record import NoGradwatchData, RunRecord, Series, find_runs, load_run
from .svg import MISSING_FILL, NONFINITE_FILL, Chart, LegendEntry, Scale, format_value, pattern_defs

__all__ = ["COLOUR_MODES", "NoGradwatchData", "RunRecord", "find_runs", "load_run",
           "render_report", "write_report", "write_reports"]

REPORT_NAME = "gradwatch-report.html"
#: Heatmap size limits: deeper models are shown as contiguous depth groups, longer runs as
#: evenly spaced sampled steps (the latest always included).
MAX_HEATMAP_ROWS = 96
MAX_HEATMAP_COLUMNS = 160
#: Per-step charts keep at most this many points (the min and max of each bucket).
MAX_LINE_POINTS = 1500
SEVERITY_COLOURS = {"critical": "#d62728", "warning": "#ff7f0e", "info": "#1f77b4"}
REGIME_COLOURS = {"healthy": "#2ca02c", "vanishing": "#9467bd", "exploding": "#ff7f0e",
                  "nonfinite": "#d62728"}
# Colours of the sampled steps in a depth profile, earliest (light) to latest (dark).
STEP_COLOURS = ("#c6dbef", "#6baed6", "#2171b5", "#08306b")


@dataclass(frozen=True)
class DepthProfile:
    """A per-layer statistic drawn against depth, with the thresholds that judge it."""

    statistic: str
    title: str
    log: bool
    band: tuple[str, str] | None = None   # Thresholds fields of a healthy range
    rule: str | None = None               # Thresholds field of a warning level
    unit_interval: bool = False           # a fraction: always drawn on [0, 1]


@dataclass(frozen=True)
class StepChart:
    """Per-step figures on a log scale, with the spike level of the first one."""

    title: str
    y_label: str
    lines: tuple[tuple[str, str, bool], ...]   # (series name, colour, dashed)
    spike_factor: str                          # Thresholds field: x recent basis is a spike
    rules: tuple[str, ...] = ()                # Thresholds fields drawn as horizontal lines
    basis: str = "max"                         # "max" or "median" of the recent window


STEP_CHARTS = (
    StepChart("Loss", "loss", (("loss", "#1f77b4", False),), "loss_spike_factor",
              basis="median"),
    StepChart("Global gradient norm", "L2 norm",
              (("global_grad_norm", "#1f77b4", False), ("clipped_grad_norm", "#2ca02c", True)),
              "explosion_spike_factor", rules=("explosion_norm",)),
)
DEPTH_PROFILES = (
    DepthProfile("update_ratio", "Update ratio ‖ΔW‖/‖W‖ by depth", log=True,
                 band=("update_ratio_low", "update_ratio_high")),
    DepthProfile("activation_variance", "Activation variance by depth", log=True),
    DepthProfile("activation_saturation_ratio", "Saturated fraction (sigmoid/tanh flat region)",
                 log=False, rule="saturation_ratio", unit_interval=True),
    DepthProfile("activation_dead_ratio", "Dead fraction (exact zeros, e.g. dead ReLU)",
                 log=False, rule="dead_ratio", unit_interval=True),
)


def write_report(run_dir: str | os.PathLike, out_path: str | os.PathLike | None = None,
                 thresholds: Thresholds | None = None, colours: str = "thresholds") -> Path:
    """Writes the HTML report of one run; returns its path.

    Args:
        run_dir: the run directory (where the event files are), e.g.
            ``lightning_logs/version_0``.
        out_path: where to write (default ``<run_dir>/gradwatch-report.html``).
        thresholds: the numbers drawn as threshold lines and colour bands (default
            ``Thresholds()``).
        colours: the heatmap's colours: ``"thresholds"`` (regime bands fixed by the
            thresholds, the same in every run) or ``"relative"`` (this run's range).

    Raises:
        NoGradwatchData: (a ValueError) ``run_dir`` holds no gradwatch data.
        ValueError: an unknown ``colours``.
    """
    check_mode(colours)
    record = load_run(run_dir)
    out = Path(out_path) if out_path is not None else Path(run_dir) / REPORT_NAME
    out.write_text(render_report(record, thresholds or Thresholds(), colours), encoding="utf-8")
    return out


def write_reports(path: str | os.PathLike, thresholds: Thresholds | None = None,
                  colours: str = "thresholds") -> list[Path]:
    """Writes a report into every run directory at or below ``path`` that has gradwatch data.

    Raises:
        NoGradwatchData: no run at or below ``path`` has gradwatch data.
        ValueError: an unknown ``colours``.
    """
    check_mode(colours)
    written = []
    for run_dir in find_runs(path):
        try:
            written.append(write_report(run_dir, thresholds=thresholds, colours=colours))
        except NoGradwatchData:
            continue  # e.g. a sibling run logged without TrainingDiagnostics
    if not written:
        raise NoGradwatchData(f"{path}: no run with gradwatch data at or below it")
    return written


def render_report(record: RunRecord, thresholds: Thresholds, colours: str = "thresholds") -> str:
    """The report page of ``record`` as an HTML string (``colours`` as in `write_report`)."""
    check_mode(colours)
    captions = {
        "thresholds": "Each cell is one layer's gradient L2 norm at one sampled step. Hue: "
        "the regime by the thresholds (the same in every report): purple rows near the input "
        "are vanishing gradients, orange-red cells exploding ones; lightness: the norm, darker "
        "is larger.",
        "relative": "Each cell is one layer's gradient L2 norm at one sampled step, coloured "
        "over this run's own range (log scale): compare layers and steps within this run, "
        "not across runs."}
    sections = [
        _section("Gradient norm by depth and step", gradient_heatmap(record, thresholds, colours),
                 captions[colours]),
        _section("Loss and global gradient norm", _grid(per_step_charts(record, thresholds)),
                 "Every step, log scales. Dashed: the levels the detectors judge by; vertical "
                 "lines: alerts firing."),
        _section("Updates and activations by depth", _grid(
            [depth_profile(record, profile, thresholds) for profile in DEPTH_PROFILES]),
            "Input layer on the left. Lines: sampled steps from the earliest (light) to the "
            "latest (dark)."),
        _section("Alerts", alert_timeline(record)),
    ]
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>gradwatch report: {escape(record.name)}</title><style>{CSS}</style>"
            f"</head><body>{pattern_defs()}<main>{_header(record)}{''.join(sections)}"
            f'<footer>Generated by gradwatch from {escape(str(record.path))}. Thresholds: '
            f"{escape(_thresholds_used(thresholds))}.</footer></main></body></html>")


# --- header ---------------------------------------------------------------------------------

def _header(record: RunRecord) -> str:
    steps = record.steps
    step_text = f"{steps[0]}–{steps[-1]} ({len(steps)} steps)" if len(steps) else "none"
    verdict = record.verdict
    firing = sum(1 for a in record.alerts if a.get("status") == "firing")
    facts = [("steps", step_text), ("layers", str(len(record.layers))),
             ("sampled steps", str(len(record.sampled_steps))),
             ("alerts fired", str(firing))]
    nonfinite = {source: len(record.nonfinite_steps(source))
                 for source in NONFINITE_SOURCES + ("loss",)}
    counts = ", ".join(f"{source} {count}" for source, count in nonfinite.items() if count)
    if counts:
        facts.append(("steps with non-finite values", counts))
    if record.replaced_runs:   # a reused folder: say whose events these are
        facts.append(("earlier runs in this folder", f"{record.replaced_runs}, replaced by "
                      f"this one from step {record.steps[0] if len(record.steps) else 0}"))
    facts_html = "".join(f"<div><dt>{escape(k)}</dt><dd>{escape(v)}</dd></div>" for k, v in facts)
    why = ("worst regime reported by the alerts" if record.alerts else "no alerts recorded")
    if counts:
        why += "; non-finite values recorded"
    return (f'<header><div><p class="eyebrow">gradwatch report</p>'
            f"<h1>{escape(record.name)}</h1><dl>{facts_html}</dl></div>"
            f'<div class="verdict" style="--regime:{REGIME_COLOURS[verdict]}">'
            f'<span class="verdict-label">verdict</span><strong id="verdict" '
            f'data-regime="{verdict}">{verdict.replace("nonfinite", "non-finite")}</strong>'
            f"<span>{why}</span></div></header>")


# --- gradient heatmap -----------------------------------------------------------------------

def gradient_heatmap(record: RunRecord, thresholds: Thresholds, colours: str = "thresholds",
                     max_rows: int = MAX_HEATMAP_ROWS,
                     max_columns: int = MAX_HEATMAP_COLUMNS) -> str:
    """The layer x sampled-step heatmap of gradient norms, with its colour legend.

    Columns sit at their steps on a linear step axis (a cell spans half-way to its
    neighbours), so irregular sampling (denser after an anomaly) keeps the ticks even.
    """
    per_layer = record.statistics["grad_norm"]
    if np.isnan(per_layer).all():
        return _empty("No per-layer gradient norms were recorded.")
    columns = subsample_columns(per_layer.shape[1], max_columns)
    per_layer, steps = per_layer[:, columns], record.sampled_steps[columns]
    reference = output_side_reference(per_layer)
    matrix, groups = group_rows(per_layer, record.layers, max_rows)
    nonfinite_steps = set(record.nonfinite_steps("gradient").tolist())
    colouring = heatmap_colours(colours, thresholds, matrix)

    rows = len(groups)
    cell_height = max(3.0, min(26.0, 560.0 / rows))
    # A group is labelled on the axis by its first (input-side) layer, in full in tooltips.
    y_ticks = _layer_ticks([first for first, _ in groups], most=int(rows * cell_height / 13),
                           offset=0.5)
    left = min(250, 34 + 6 * max(len(label) for _, label in y_ticks))
    edges = cell_edges(steps)
    x = Scale(edges[0], edges[-1])
    chart = Chart(x, Scale(0, rows), title="Gradient norm per layer", x_label="step",
                  y_label="depth (input at the bottom)", x_ticks=x.ticks(10, whole=True),
                  y_ticks=y_ticks, width=1120, height=int(rows * cell_height) + 88, left=left)
    for i, (first, last) in enumerate(groups):
        label = first if first == last else f"{first}…{last}"
        for j, step in enumerate(steps):
            value = matrix[i, j]
            # No value at a step with non-finite gradients: the norm was NaN (not written).
            nan_norm = np.isnan(value) and step in nonfinite_steps
            if np.isfinite(value):
                fill, band = colouring.fill(value, reference[j])
            else:
                fill = NONFINITE_FILL if nan_norm or np.isinf(value) else MISSING_FILL
                band = "nonfinite" if fill == NONFINITE_FILL else "missing"
            shown = "NaN: non-finite gradients" if nan_norm else format_value(value)
            chart.rect(edges[j], edges[j + 1], i, i + 1, fill,
                       f"{label} · step {step} · grad norm {shown} ({band})", css_class="cell",
                       data={"layer": label, "step": str(step), "value": repr(float(value)),
                             "band": band})
    notes = []
    if len(groups) < len(record.layers):
        notes.append(f"{len(record.layers)} layers shown as {len(groups)} contiguous depth "
                     f"groups (each cell: the group's combined norm).")
    if len(steps) < len(record.sampled_steps):
        notes.append(f"{len(steps)} of {len(record.sampled_steps)} sampled steps shown, evenly "
                     f"spaced, the latest included.")
    return (chart.svg() + colouring.legend()
            + "".join(f'<p class="note">{escape(n)}</p>' for n in notes))


def cell_edges(steps: np.ndarray) -> np.ndarray:
    """Edges of the cells centred on ``steps``: half-way between neighbours, and as wide
    again at both ends (one step wide for a lone step)."""
    centres = np.asarray(steps, dtype=float)
    if len(centres) == 1:
        return centres + [-0.5, 0.5]
    middles = (centres[:-1] + centres[1:]) / 2
    return np.concatenate([[2 * centres[0] - middles[0]], middles,
                           [2 * centres[-1] - middles[-1]]])


def group_rows(matrix: np.ndarray, layers: Sequence[str],
               max_rows: int) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """At most ``max_rows`` rows: contiguous depth groups, each the combined L2 norm.

    Returns the grouped matrix and each group's (first, last) layer. The norm of a group is
    exact (the square root of the sum of squares); a group is non-finite if any member is,
    and has no value only if none of its members has one.
    """
    if len(layers) <= max_rows:
        return matrix, [(layer, layer) for layer in layers]
    bounds = np.linspace(0, len(layers), max_rows + 1).round().astype(int)
    grouped, groups = [], []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        block = matrix[start:stop]
        recorded = ~np.isnan(block)
        norm = np.sqrt((np.where(recorded, block, 0.0) ** 2).sum(axis=0))
        grouped.append(np.where(recorded.any(axis=0), norm, np.nan))
        groups.append((layers[start], layers[stop - 1]))
    return np.vstack(grouped), groups


def subsample_columns(count: int, max_columns: int) -> np.ndarray:
    """Indices of at most ``max_columns`` evenly spaced columns, the last one included."""
    if count <= max_columns:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, max_columns).round().astype(int))


# --- per-step charts ------------------------------------------------------------------------

def per_step_charts(record: RunRecord, thresholds: Thresholds) -> list[str]:
    """Loss and global gradient norm over steps, with spike levels, rules and alert markers."""
    window = int(thresholds.history_steps)
    charts = []
    for spec in STEP_CHARTS:
        present = [(record.series[name], name, colour, dashed)
                   for name, colour, dashed in spec.lines if name in record.series]
        if not present:
            charts.append(_empty(f"{spec.title}: not recorded."))
            continue
        factor = getattr(thresholds, spec.spike_factor)
        spike = spike_level(present[0][0], factor, window, spec.basis)
        rules = [(name, getattr(thresholds, name)) for name in spec.rules]
        y = Scale.fit(np.concatenate([s.values for s, *_ in present] + [spike.values]),
                      log=True, include=[level for _, level in rules])
        title = spec.title if y.log else f"{spec.title} (linear: values ≤ 0)"
        x = Scale.fit(record.steps)
        chart = Chart(x, y, title=title, x_label="step", y_label=spec.y_label,
                      x_ticks=x.ticks(whole=True), width=540, height=280)
        for series, name, colour, dashed in present:
            thinned = thin(series)
            chart.line(thinned.steps, thinned.values, colour, name, dashed=dashed)
        thinned = thin(spike)
        chart.line(thinned.steps, thinned.values, "#9aa3ad",
                   f"spike level ({factor:g}× {spec.basis} of last {window})", dots=False,
                   dashed=True)
        for name, level in rules:
            chart.rule(level, "#d62728", f"{name} {format_value(level)}")
        _mark_alerts(chart, record.alerts)
        charts.append(chart.svg())
    return charts


def spike_level(series: Series, factor: float, window: int, basis: str = "max") -> Series:
    """``factor`` x the max (or median) of the previous ``window`` finite values: the spike
    detectors' level, defined from the second step on."""
    values = np.where(np.isfinite(series.values), series.values, np.nan)
    if len(values) < 2:
        return Series(series.steps[:0], values[:0])
    padded = np.concatenate([np.full(window - 1, np.nan), values[:-1]])
    windows = np.lib.stride_tricks.sliding_window_view(padded, window)
    recorded = ~np.isnan(windows)
    if basis == "median":
        with warnings.catch_warnings():  # windows with nothing recorded yet: NaN, as for max
            warnings.simplefilter("ignore", RuntimeWarning)
            level = np.nanmedian(windows, axis=1) * factor
    else:
        level = np.where(recorded.any(axis=1),
                         np.where(recorded, windows, -np.inf).max(axis=1), np.nan) * factor
    return Series(series.steps[1:], level)


def thin(series: Series, most: int = MAX_LINE_POINTS) -> Series:
    """At most about ``most`` points: the min and max of each bucket of steps, so spikes and
    dips stay visible; non-finite points are all kept."""
    if len(series.steps) <= most:
        return series
    keep = set(np.flatnonzero(~np.isfinite(series.values)).tolist())
    finite = np.where(np.isfinite(series.values), series.values, np.nan)
    for bucket in np.array_split(np.arange(len(finite)), most // 2):
        if not np.isnan(finite[bucket]).all():
            keep |= {int(bucket[np.nanargmin(finite[bucket])]),
                     int(bucket[np.nanargmax(finite[bucket])])}
    index = np.asarray(sorted(keep), dtype=int)
    return Series(series.steps[index], series.values[index])


def _mark_alerts(chart: Chart, alerts: Sequence[dict]) -> None:
    for alert in alerts:
        if alert.get("status") == "firing" and isinstance(alert.get("step"), int):
            chart.marker(alert["step"], _severity_colour(alert),
                         f"step {alert['step']}: {alert.get('name', 'alert')}")


# --- depth profiles -------------------------------------------------------------------------

def depth_profile(record: RunRecord, profile: DepthProfile, thresholds: Thresholds) -> str:
    """One statistic against depth at up to four sampled steps, with its thresholds."""
    matrix = record.statistics[profile.statistic]
    measured = np.flatnonzero((~np.isnan(matrix)).any(axis=0))
    if not measured.size:
        return _empty(f"{profile.title}: not recorded in this run.")
    picked = measured[subsample_columns(len(measured), len(STEP_COLOURS))]
    levels = [getattr(thresholds, name) for name in (profile.band or ())]
    levels += [getattr(thresholds, profile.rule)] if profile.rule else []
    y = (Scale(0.0, 1.0) if profile.unit_interval
         else Scale.fit(matrix[:, picked], log=profile.log, include=levels))
    depth = np.arange(len(record.layers))
    chart = Chart(Scale(0, max(len(record.layers) - 1, 1)), y, title=profile.title,
                  x_label="depth (input on the left)", y_label=profile.statistic,
                  x_ticks=_layer_ticks(record.layers, most=4, offset=0.0, longest=18),
                  width=540, height=280)
    if profile.band:
        chart.band(*levels[:2], "#2ca02c",
                   f"healthy {format_value(levels[0])}–{format_value(levels[1])}")
    if profile.rule:
        chart.rule(levels[-1], "#d62728", f"{profile.rule} {format_value(levels[-1])}")
    colours = STEP_COLOURS[len(STEP_COLOURS) - len(picked):]
    for column, colour in zip(picked, colours):
        values = matrix[:, column]
        recorded = ~np.isnan(values)   # a layer without a value is a gap, not a NaN mark
        chart.line(depth[recorded], values[recorded], colour,
                   f"step {record.sampled_steps[column]}")
    return chart.svg()


# --- alerts ---------------------------------------------------------------------------------

def alert_timeline(record: RunRecord) -> str:
    """Alert spans over steps (firing to resolved) and the table of events with remedies."""
    if not record.alerts:
        return '<p class="empty" id="no-alerts">No alerts: nothing crossed a threshold.</p>'
    rows = "".join(_alert_row(a) for a in record.alerts)
    table = ('<table class="alerts"><thead><tr><th>step</th><th>status</th><th>alert</th>'
             "<th>layers</th><th>value / threshold</th><th>remedy</th></tr></thead>"
             f"<tbody>{rows}</tbody></table>")
    spans = alert_spans(record.alerts, int(record.steps[-1])) if len(record.steps) else []
    if not spans:   # events without a usable step: the table is all there is to show
        return table
    names = list(dict.fromkeys(name for name, *_ in spans))
    first, last = int(record.steps[0]), int(record.steps[-1])
    x = Scale(first, max(last, first + 1))
    chart = Chart(x, Scale(0, len(names)), title="Alert timeline", x_label="step", y_label="",
                  x_ticks=x.ticks(whole=True),
                  y_ticks=[(len(names) - i - 0.5, n) for i, n in enumerate(names)],
                  width=1120, height=88 + 26 * len(names),
                  left=min(260, 20 + 7 * max(len(n) for n in names)))
    minimum_width = (max(last, first + 1) - first) * 0.004   # a one-step alert stays visible
    for name, start, stop, alert in spans:
        row = len(names) - names.index(name) - 1
        chart.rect(start, max(stop, start + minimum_width), row + 0.2, row + 0.8,
                   _severity_colour(alert),
                   f"{name} · steps {start}–{stop} · {alert.get('summary', '')}")
    chart.legend += [LegendEntry(c, s) for s, c in SEVERITY_COLOURS.items()]
    return chart.svg() + table


def alert_spans(alerts: Sequence[dict], last_step: int) -> list[tuple[str, int, int, dict]]:
    """(name, first step, last step, firing event) of each firing: until the matching
    resolved event (same name and layers), or the last step while still firing."""
    open_spans: dict[tuple, tuple[int, dict]] = {}
    spans = []
    for alert in alerts:
        if not isinstance(alert.get("step"), int):
            continue
        key = (str(alert.get("name")), tuple(_alert_layers(alert)), str(alert.get("rank")))
        if alert.get("status") == "firing" and key not in open_spans:
            open_spans[key] = (alert["step"], alert)
        elif alert.get("status") == "resolved" and key in open_spans:
            start, firing = open_spans.pop(key)
            spans.append((key[0], start, alert["step"], firing))
    spans += [(key[0], start, last_step, firing)
              for key, (start, firing) in open_spans.items()]
    return sorted(spans, key=lambda span: span[1])


def _alert_row(alert: dict) -> str:
    layers = _alert_layers(alert)
    layers_text = ", ".join(layers[:4]) + (f" and {len(layers) - 4} more" if len(layers) > 4
                                           else "")
    value, threshold = alert.get("value"), alert.get("threshold")
    figures = " / ".join(format_value(float(v)) if isinstance(v, (int, float)) else "–"
                         for v in (value, threshold))
    severity = str(alert.get("severity", ""))
    return (f'<tr class="alert-row {escape(str(alert.get("status", "")))}">'
            f"<td>{escape(str(alert.get('step', '')))}</td>"
            f'<td><span class="badge" style="--c:{_severity_colour(alert)}">'
            f"{escape(severity)}</span> {escape(str(alert.get('status', '')))}</td>"
            f"<td><strong>{escape(str(alert.get('name', '')))}</strong>"
            f"<div>{escape(str(alert.get('summary', '')))}</div>"
            f"<div class='muted'>{escape(str(alert.get('description', '')))}</div></td>"
            f"<td>{escape(layers_text)}</td><td>{escape(figures)}</td>"
            f"<td>{escape(str(alert.get('remedy', '')))}</td></tr>")


def _alert_layers(alert: dict) -> list[str]:
    layers = alert.get("layers")
    if layers is None:
        return []
    return [str(layer) for layer in layers] if isinstance(layers, list) else [str(layers)]


def _severity_colour(alert: dict) -> str:
    return SEVERITY_COLOURS.get(str(alert.get("severity")), "#7f7f7f")


# --- page helpers ---------------------------------------------------------------------------

def _layer_ticks(labels: Sequence[str], most: int, offset: float,
                 longest: int = 30) -> list[tuple[float, str]]:
    """Ticks at ``index + offset`` with the shortened names of at most ``most`` regularly
    spaced labels (offset 0.5 puts them at the centres of heatmap cells)."""
    return [(i + offset, _shorten(labels[i], longest)) for i in _every_kth(len(labels), most)]


def _every_kth(count: int, most: int) -> range:
    """Indices 0, k, 2k, ... with the stride k that gives at most ``most`` of them: regular
    spacing keeps tick labels from colliding."""
    return range(0, count, max(1, -(-count // max(most, 1))))


def _shorten(label: str, most: int = 30) -> str:
    return label if len(label) <= most else label[:most // 2 - 1] + "…" + label[-(most // 2):]


def _section(title: str, body: str, caption: str = "") -> str:
    caption_html = f'<p class="caption">{escape(caption)}</p>' if caption else ""
    return f"<section><h2>{escape(title)}</h2>{caption_html}{body}</section>"


def _grid(charts: Sequence[str]) -> str:
    return '<div class="grid">' + "".join(f'<div class="card">{c}</div>' for c in charts) + "</div>"


def _empty(message: str) -> str:
    return f'<p class="empty">{escape(message)}</p>'


def _thresholds_used(thresholds: Thresholds) -> str:
    names = ("explosion_norm", "vanishing_depth_ratio", "explosion_spike_factor",
             "loss_spike_factor", "history_steps",
             "update_ratio_low", "update_ratio_high", "saturation_ratio", "dead_ratio")
    return ", ".join(f"{n} = {getattr(thresholds, n):g}" for n in names)


CSS = """
:root { color-scheme: light; --ink: #1d2733; --muted: #5f6b7a; --line: #e3e7ec; }
* { box-sizing: border-box; }
body { margin: 0; background: #f5f7fa; color: var(--ink);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 24px 40px; }
header { display: flex; justify-content: space-between; gap: 24px; align-items: stretch;
  background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 18px 22px; }
.eyebrow { margin: 0; color: var(--muted); text-transform: uppercase; letter-spacing: .08em;
  font-size: 12px; }
h1 { margin: 2px 0 10px; font-size: 24px; }
dl { display: flex; flex-wrap: wrap; gap: 8px 28px; margin: 0; }
dt { color: var(--muted); font-size: 12px; }
dd { margin: 0; font-weight: 600; }
.verdict { min-width: 200px; border-radius: 8px; padding: 12px 16px; color: #fff;
  background: var(--regime); display: flex; flex-direction: column; justify-content: center; }
.verdict strong { font-size: 26px; text-transform: capitalize; }
.verdict span { font-size: 12px; opacity: .9; }
.verdict .verdict-label { text-transform: uppercase; letter-spacing: .08em; }
section { background: #fff; border: 1px solid var(--line); border-radius: 10px;
  margin-top: 18px; padding: 16px 22px; }
h2 { margin: 0 0 4px; font-size: 17px; }
.caption, .note, .muted { color: var(--muted); }
.caption { margin: 0 0 10px; }
.note { margin: 4px 0 0; font-size: 12px; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(460px, 1fr)); gap: 14px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 6px; }
svg.chart { width: 100%; height: auto; display: block; }
rect.cell, .colour-legend rect { shape-rendering: crispEdges; }   /* no seams between cells */
.colour-legend { max-width: 760px; }
.chart-title { font-weight: 600; font-size: 13px; fill: var(--ink); }
.tick, .legend, .rule-label { font-size: 11px; fill: var(--muted); }
.rule-label { font-weight: 600; }
.axis-label { font-size: 11.5px; fill: var(--ink); }
line.gridline { stroke: #eef1f4; }
.empty { color: var(--muted); font-style: italic; padding: 12px; background: #f8fafb;
  border-radius: 6px; }
table.alerts { width: 100%; border-collapse: collapse; margin-top: 12px; font-size: 13px; }
.alerts th { text-align: left; color: var(--muted); font-weight: 600;
  border-bottom: 2px solid var(--line); padding: 6px 8px; }
.alerts td { border-bottom: 1px solid var(--line); padding: 8px; vertical-align: top; }
.alerts .muted { font-size: 12px; }
.alert-row.resolved { opacity: .7; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; color: #fff;
  background: var(--c); font-size: 11px; font-weight: 600; }
footer { color: var(--muted); font-size: 12px; margin-top: 18px; }
"""
