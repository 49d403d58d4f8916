"""Colours of the report's gradient-norm heatmap: anchored on the Thresholds, or relative.

Anchored (the default): a cell's hue is its regime, judged as the detectors judge it, and
its lightness its magnitude on a fixed log axis, so two runs' heatmaps compare at a glance:

- exploding (orange-red): the layer's norm above ``explosion_norm`` (alone it puts the
  global norm over that limit);
- vanishing (purple): below ``vanishing_depth_ratio`` times the geometric mean of the
  output-side quarter of the layers at that step (what GradientVanishing compares);
- healthy (green): anything else.

Relative: viridis over the run's own range of norms (structure within a run, not across).
"""

from __future__ import annotations

import colorsys
import math

import numpy as np

from ..records.thresholds import Thresholds
from .svg import MISSING_FILL, NONFINITE_FILL, Chart, LegendEntry, Scale, colour_at, format_value

COLOUR_MODES = ("thresholds", "relative")
BANDS = ("vanishing", "healthy", "exploding")
#: HSL hue (degrees) of each band; the non-finite hatch is pure red, apart from all three.
HUES = {"vanishing": 275.0, "healthy": 135.0, "exploding": 24.0}
#: The fixed magnitude axis of the anchored colours, in decades around explosion_norm.
DECADES_BELOW, DECADES_ABOVE = 10, 6
LIGHTEST, DARKEST = 0.86, 0.36   # HSL lightness of the smallest and the largest norm


def band_colour(band: str, fraction: float) -> str:
    """The colour of ``band`` at ``fraction`` in [0, 1] of the magnitude axis (dark = big)."""
    fraction = min(max(fraction, 0.0), 1.0)
    lightness = LIGHTEST + (DARKEST - LIGHTEST) * fraction
    rgb = colorsys.hls_to_rgb(HUES[band] / 360.0, lightness, 0.7)
    return "#" + "".join(f"{round(c * 255):02x}" for c in rgb)


def output_side_reference(matrix: np.ndarray) -> np.ndarray:
    """Per column: the geometric mean norm of the output-side quarter of the finite layers
    (NaN with fewer than 3: too shallow to have a depth profile, as for the detector)."""
    reference = np.full(matrix.shape[1], np.nan)
    for j, column in enumerate(matrix.T):
        present = column[np.isfinite(column)]
        if len(present) >= 3:
            quarter = max(1, len(present) // 4)
            reference[j] = math.exp(np.log(np.maximum(present[-quarter:], 1e-30)).mean())
    return reference


class ThresholdColours:
    """Cell colours anchored on ``thresholds`` (see the module docstring)."""

    mode = "thresholds"

    def __init__(self, thresholds: Thresholds) -> None:
        self.t = thresholds
        self.axis = Scale(thresholds.explosion_norm * 10.0 ** -DECADES_BELOW,
                          thresholds.explosion_norm * 10.0 ** DECADES_ABOVE, log=True)

    def band(self, value: float, reference: float) -> str:
        if value > self.t.explosion_norm:
            return "exploding"
        if value < self.t.vanishing_depth_ratio * reference:   # False for a NaN reference
            return "vanishing"
        return "healthy"

    def fill(self, value: float, reference: float) -> tuple[str, str]:
        """(fill, band) of a finite cell."""
        band = self.band(value, reference)
        return band_colour(band, self.axis.fraction(value)), band

    def legend(self) -> str:
        """One row per band over the shared magnitude axis, each where its values can be."""
        t = self.t
        rows = {"vanishing": (self.axis.lo, t.explosion_norm),
                "healthy": (self.axis.lo, t.explosion_norm),
                "exploding": (t.explosion_norm, self.axis.hi)}
        ratio = format_value(t.vanishing_depth_ratio)
        labels = {"vanishing": f"vanishing: < {ratio}× output side",
                  "healthy": "healthy",
                  "exploding": f"exploding: > explosion_norm {format_value(t.explosion_norm)}"}
        bar = Chart(self.axis, Scale(0, len(BANDS)), title="regime (hue, by the Thresholds) and "
                    "magnitude (lightness)", x_label="gradient L2 norm",
                    y_label="", y_ticks=[(len(BANDS) - i - 0.5, labels[b])
                                         for i, b in enumerate(BANDS)],
                    width=760, height=150, left=230)
        for i, band in enumerate(BANDS):
            row = len(BANDS) - i - 1
            start, stop = (self.axis.fraction(v) for v in rows[band])
            _ramp(bar, self.axis, lambda f, band=band: band_colour(band, f), row + 0.15,
                  row + 0.85, start, stop, f"{band}: ")
        bar.legend += _special_entries()
        return f'<div class="colour-legend">{bar.svg()}</div>'


class RelativeColours:
    """Viridis over the run's own range of norms (log scale)."""

    mode = "relative"

    def __init__(self, matrix: np.ndarray) -> None:
        self.scale = Scale.fit(matrix[matrix > 0], log=True)

    def fill(self, value: float, reference: float) -> tuple[str, str]:
        return colour_at(self.scale.fraction(value)), "relative"

    def legend(self) -> str:
        bar = Chart(self.scale, Scale(0, 1), title="colour scale (log, this run's range)",
                    x_label="gradient L2 norm", y_label="", y_ticks=[], width=560, height=100,
                    left=20)
        _ramp(bar, self.scale, colour_at, 0, 1)
        bar.legend += _special_entries() + [
            LegendEntry(colour_at(0), f"≤ {format_value(self.scale.lo)}")]
        return f'<div class="colour-legend">{bar.svg()}</div>'


def check_mode(mode: str) -> None:
    """Raises ValueError, naming the ``colours`` option, for a mode not in `COLOUR_MODES`."""
    if mode not in COLOUR_MODES:
        raise ValueError(f"colours must be one of {', '.join(COLOUR_MODES)}, got {mode!r}")


def heatmap_colours(mode: str, thresholds: Thresholds, matrix: np.ndarray):
    """The colouring of ``mode`` (a `COLOUR_MODES` name) for the cells of ``matrix``."""
    check_mode(mode)
    return ThresholdColours(thresholds) if mode == "thresholds" else RelativeColours(matrix)


def _special_entries() -> list[LegendEntry]:
    return [LegendEntry(NONFINITE_FILL, "NaN or ±Inf"), LegendEntry(MISSING_FILL, "not measured")]


def _ramp(bar: Chart, scale: Scale, colour, y0: float, y1: float, start: float = 0.0,
          stop: float = 1.0, label: str = "") -> None:
    """A colour bar on ``bar`` over [``start``, ``stop``] (fractions of ``scale``)."""
    edges = np.linspace(0, 1, 65)
    for lo, hi in zip(edges[:-1], edges[1:]):
        if lo >= start - 1e-9 and hi <= stop + 1e-9:
            bar.rect(_at(scale, lo), _at(scale, hi), y0, y1, colour((lo + hi) / 2),
                     f"{label}{format_value(_at(scale, lo))}–{format_value(_at(scale, hi))}")


def _at(scale: Scale, fraction: float) -> float:
    """The value at ``fraction`` of a log scale (inverse of Scale.fraction)."""
    return scale.lo * (scale.hi / scale.lo) ** fraction
