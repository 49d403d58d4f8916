"""Inline SVG charts for the HTML report: one chart frame, driven by data.

Every chart of the report is a `Chart`: a plot area with an x and a y `Scale` (linear or
log10), axes with ticks, and marks added from data: lines, horizontal rules and bands,
vertical markers, rectangles (heatmap cells, alert spans). No JavaScript: tooltips are SVG
``<title>`` elements, so the report stays one self-contained file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

import numpy as np

#: Fills for values that are not numbers on a scale. The patterns are defined once per page
#: by `pattern_defs` (ids are document-wide, so every chart can reference them).
NONFINITE_FILL = "url(#gw-hatch-nonfinite)"
MISSING_FILL = "url(#gw-hatch-missing)"
NONFINITE_COLOUR = "#d62728"

# Viridis at nine evenly spaced points: perceptually uniform and readable in grey scale, so
# a dark cell always means a small value.
_VIRIDIS = ("#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c", "#28ae80", "#5ec962",
            "#addc30", "#fde725")
_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def pattern_defs() -> str:
    """A hidden SVG holding the hatch patterns every chart's special cells use."""
    def hatch(pattern_id: str, background: str, stroke: str) -> str:
        return (f'<pattern id="{pattern_id}" width="6" height="6" patternUnits="userSpaceOnUse"'
                f' patternTransform="rotate(45)"><rect width="6" height="6" fill="{background}"/>'
                f'<line x1="0" y1="0" x2="0" y2="6" stroke="{stroke}" stroke-width="3"/>'
                f'</pattern>')
    return ('<svg width="0" height="0" style="position:absolute" aria-hidden="true"><defs>'
            + hatch("gw-hatch-nonfinite", "#ffd6d6", NONFINITE_COLOUR)
            + hatch("gw-hatch-missing", "#f4f4f4", "#c8c8c8")
            + "</defs></svg>")


def colour_at(fraction: float) -> str:
    """The viridis colour at ``fraction`` in [0, 1] (clamped)."""
    position = min(max(fraction, 0.0), 1.0) * (len(_VIRIDIS) - 1)
    index = min(int(position), len(_VIRIDIS) - 2)
    weight = position - index
    low, high = _VIRIDIS[index], _VIRIDIS[index + 1]
    channels = (round(int(low[i:i + 2], 16) * (1 - weight) + int(high[i:i + 2], 16) * weight)
                for i in (1, 3, 5))
    return "#" + "".join(f"{c:02x}" for c in channels)


def format_value(value: float) -> str:
    """Short human form of a number, with NaN and infinities spelled out."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e7:
        return str(int(value))   # steps, counts: exact, never "1.23e+03"
    return f"{value:.3g}"


@dataclass(frozen=True)
class Scale:
    """A data interval mapped onto [0, 1], linearly or by log10."""

    lo: float
    hi: float
    log: bool = False

    @classmethod
    def fit(cls, values: Sequence[float] | np.ndarray, log: bool = False,
            include: Sequence[float] = ()) -> Scale:
        """The scale covering the finite ``values`` and ``include`` (e.g. threshold lines).

        A log scale spans whole decades; it falls back to linear when there is a finite
        value at or below zero, which a log axis cannot place.
        """
        data = np.asarray(values, dtype=float).ravel()
        data = np.concatenate([data[np.isfinite(data)], np.asarray(include, dtype=float)])
        if log and data.size and data.min() <= 0:
            log = False
        if not data.size:
            return cls(1e-3, 1.0, True) if log else cls(0.0, 1.0)
        lo, hi = float(data.min()), float(data.max())
        if log:
            lo, hi = 10.0 ** math.floor(math.log10(lo)), 10.0 ** math.ceil(math.log10(hi))
            return cls(lo, hi if hi > lo else lo * 10, True)
        if hi == lo:
            pad = abs(lo) * 0.1 or 1.0
            return cls(lo - pad, hi + pad)
        pad = (hi - lo) * 0.05
        return cls(lo - pad if lo < 0 or lo - pad >= 0 else 0.0, hi + pad)

    def fraction(self, value: float) -> float:
        """Position of ``value`` in [0, 1]; values off the scale are clamped to its ends."""
        if self.log:
            if value <= 0:
                return 0.0
            span = math.log10(self.hi) - math.log10(self.lo)
            position = (math.log10(value) - math.log10(self.lo)) / span
        else:
            position = (value - self.lo) / (self.hi - self.lo)
        return min(max(position, 0.0), 1.0)

    def ticks(self, most: int = 6, whole: bool = False) -> list[tuple[float, str]]:
        """Tick positions and labels: decades on a log scale, evenly spaced 1-2-5 steps on a
        linear one (whole numbers only when ``whole``, e.g. training steps)."""
        if self.log:
            first, last = round(math.log10(self.lo)), round(math.log10(self.hi))
            stride = max(1, math.ceil((last - first) / most))
            return [(10.0 ** e, "10" + str(e).translate(_SUPERSCRIPT))
                    for e in range(first, last + 1, stride)]
        raw = (self.hi - self.lo) / most
        magnitude = 10.0 ** math.floor(math.log10(raw))
        step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
        step = max(step, 1.0) if whole else step
        start = math.ceil(self.lo / step) * step
        count = int((self.hi - start) / step + 1e-9) + 1
        return [(start + i * step, f"{start + i * step:.6g}") for i in range(count)]


def label_length(text: str) -> int:
    """Pixel length of an axis label (11.5 px sans-serif: about 6.5 px a character)."""
    return math.ceil(6.5 * len(text))


@dataclass(frozen=True)
class LegendEntry:
    """A swatch (a colour or a pattern fill) and its label, above the plot."""

    fill: str
    label: str


class Chart:
    """One SVG chart: a frame with axes, plus marks placed in data coordinates.

    Args:
        x, y: the scales of the two axes.
        title: shown above the plot.
        x_label, y_label: axis titles.
        x_ticks, y_ticks: explicit (position, label) ticks, e.g. layer names; default: the
            scale's own ticks.
        width, height: of the whole SVG in pixels (it scales to its container's width); the
            height grows to fit the rotated y label along the plot (a one-row heatmap).
        left: margin for the y tick labels (wider for layer names).
    """

    def __init__(self, x: Scale, y: Scale, *, title: str, x_label: str, y_label: str,
                 x_ticks: Sequence[tuple[float, str]] | None = None,
                 y_ticks: Sequence[tuple[float, str]] | None = None,
                 width: int = 640, height: int = 260, left: int = 64) -> None:
        self.x, self.y = x, y
        self.title, self.x_label, self.y_label = title, x_label, y_label
        self.x_ticks = list(x.ticks() if x_ticks is None else x_ticks)
        self.y_ticks = list(y.ticks() if y_ticks is None else y_ticks)
        self.width = width
        self.left, self.right, self.top, self.bottom = left, 18, 46, 42
        self.height = max(height, self.top + self.bottom + label_length(y_label) + 8)
        self.marks: list[str] = []
        self.legend: list[LegendEntry] = []

    # Plot-area pixel coordinates of data values.
    def px(self, value: float) -> float:
        return self.left + self.x.fraction(value) * (self.width - self.left - self.right)

    def py(self, value: float) -> float:
        return self.height - self.bottom - self.y.fraction(value) * (
            self.height - self.top - self.bottom)

    def line(self, xs: Sequence[float], ys: Sequence[float], colour: str, label: str,
             dots: bool | None = None, dashed: bool = False) -> None:
        """A polyline through the finite points; non-finite ones get a red mark on top.

        Non-finite points break the line (so it never draws through a NaN), and each one is
        marked with a red triangle at the top edge whose tooltip gives the value.
        """
        xs, ys = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
        dots = len(xs) <= 40 if dots is None else dots
        segment: list[str] = []
        segments: list[list[str]] = []
        for x, y in zip(xs, ys):
            if math.isfinite(y):
                segment.append(f"{self.px(x):.1f},{self.py(y):.1f}")
                if dots:
                    self.marks.append(f'<circle cx="{self.px(x):.1f}" cy="{self.py(y):.1f}" '
                                      f'r="2.6" fill="{colour}"><title>{escape(label)} · '
                                      f'{format_value(x)}: {format_value(y)}</title></circle>')
            else:
                segments.append(segment)
                segment = []
                self.nonfinite_mark(x, f"{label} · {format_value(x)}: {format_value(y)}")
        segments.append(segment)
        dash = ' stroke-dasharray="5 3"' if dashed else ""
        for points in (s for s in segments if len(s) > 1):
            self.marks.append(f'<polyline points="{" ".join(points)}" fill="none" '
                              f'stroke="{colour}" stroke-width="1.7"{dash}/>')
        self.legend.append(LegendEntry(colour, label))

    def nonfinite_mark(self, x: float, tooltip: str) -> None:
        """A red triangle at the top edge above ``x``: a NaN or Inf no axis can place."""
        px, top = self.px(x), self.top
        self.marks.append(f'<path class="nonfinite" d="M{px - 5:.1f},{top - 8} h10 l-5,8 z" '
                          f'fill="{NONFINITE_COLOUR}"><title>{escape(tooltip)}</title></path>')

    def rule(self, y: float, colour: str, label: str) -> None:
        """A dashed horizontal line at ``y`` (a threshold), labelled at its right end."""
        py = self.py(y)
        label_y = py + 13 if py < self.top + 14 else py - 4   # below a line at the very top
        self.marks.append(
            f'<line x1="{self.left}" x2="{self.width - self.right}" y1="{py:.1f}" y2="{py:.1f}" '
            f'stroke="{colour}" stroke-width="1.2" stroke-dasharray="6 4"/>'
            f'<text x="{self.width - self.right - 4}" y="{label_y:.1f}" text-anchor="end" '
            f'class="rule-label" fill="{colour}">{escape(label)}</text>')

    def band(self, lo: float, hi: float, colour: str, label: str) -> None:
        """A shaded horizontal band between ``lo`` and ``hi`` (a healthy range)."""
        top, bottom = self.py(hi), self.py(lo)
        self.marks.insert(0, f'<rect x="{self.left}" y="{top:.1f}" '
                             f'width="{self.width - self.left - self.right}" '
                             f'height="{bottom - top:.1f}" fill="{colour}" opacity="0.18">'
                             f'<title>{escape(label)}</title></rect>')
        self.legend.append(LegendEntry(colour, label))

    def marker(self, x: float, colour: str, tooltip: str) -> None:
        """A vertical line at ``x`` (an alert), with a tooltip."""
        px = self.px(x)
        self.marks.append(f'<line class="marker" x1="{px:.1f}" x2="{px:.1f}" y1="{self.top}" '
                          f'y2="{self.height - self.bottom}" stroke="{colour}" stroke-width="1.4"'
                          f' opacity="0.75"><title>{escape(tooltip)}</title></line>')

    def rect(self, x0: float, x1: float, y0: float, y1: float, fill: str, tooltip: str,
             css_class: str = "", data: dict[str, str] | None = None) -> None:
        """A rectangle spanning [x0, x1] x [y0, y1] in data coordinates (a heatmap cell)."""
        left, right = self.px(x0), self.px(x1)
        top, bottom = self.py(y1), self.py(y0)
        attributes = "".join(f' data-{k}="{escape(v)}"' for k, v in (data or {}).items())
        css = f' class="{css_class}"' if css_class else ""
        self.marks.append(f'<rect{css}{attributes} x="{left:.2f}" y="{top:.2f}" '
                          f'width="{right - left:.2f}" height="{bottom - top:.2f}" '
                          f'fill="{fill}"><title>{escape(tooltip)}</title></rect>')

    def svg(self) -> str:
        plot_right, plot_bottom = self.width - self.right, self.height - self.bottom
        parts = [f'<svg class="chart" viewBox="0 0 {self.width} {self.height}" '
                 f'xmlns="http://www.w3.org/2000/svg" role="img" '
                 f'aria-label="{escape(self.title)}">',
                 f'<text x="{self.left}" y="16" class="chart-title">{escape(self.title)}</text>',
                 self._legend_svg(),
                 f'<rect x="{self.left}" y="{self.top}" width="{plot_right - self.left}" '
                 f'height="{plot_bottom - self.top}" fill="#fff" stroke="#d0d4da"/>']
        for value, label in self.y_ticks:
            py = self.py(value)
            parts.append(f'<line x1="{self.left}" x2="{plot_right}" y1="{py:.1f}" y2="{py:.1f}" '
                         f'class="gridline"/><text x="{self.left - 6}" y="{py + 4:.1f}" '
                         f'text-anchor="end" class="tick">{escape(label)}</text>')
        for value, label in self.x_ticks:
            px = self.px(value)
            parts.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{plot_bottom}" '
                         f'y2="{plot_bottom + 4}" stroke="#8a939e"/><text x="{px:.1f}" '
                         f'y="{plot_bottom + 16}" text-anchor="middle" class="tick">'
                         f'{escape(label)}</text>')
        parts += self.marks
        parts.append(f'<text x="{(self.left + plot_right) / 2:.1f}" y="{self.height - 6}" '
                     f'text-anchor="middle" class="axis-label">{escape(self.x_label)}</text>')
        parts.append(f'<text x="12" y="{(self.top + plot_bottom) / 2:.1f}" text-anchor="middle" '
                     f'class="axis-label" transform="rotate(-90 12 '
                     f'{(self.top + plot_bottom) / 2:.1f})">{escape(self.y_label)}</text>')
        parts.append("</svg>")
        return "".join(parts)

    def _legend_svg(self) -> str:
        parts, x = [], float(self.left)
        for entry in self.legend:
            parts.append(f'<rect x="{x:.0f}" y="26" width="12" height="10" fill="{entry.fill}"/>'
                         f'<text x="{x + 16:.0f}" y="35" class="legend">{escape(entry.label)}'
                         f'</text>')
            x += 28 + 6.2 * len(entry.label)
        return "".join(parts)
