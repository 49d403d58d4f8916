"""Per-layer conditions of the activations: dead units, saturation, fp16 headroom."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ..records.findings import Finding, Result, describe_layers, table_fields
from ..records.snapshot import Snapshot
from ..records.thresholds import Thresholds
from .amp import fp16_headroom_bits
from .base import Sustained, finite_mask, pulse_of


class LayerCondition:
    """A per-layer condition on Snapshots, sustained over ``unit_warning_samples`` samples.

    ``measure`` gives one value per layer (NaN where it does not apply) and ``bad`` tells
    which values are over the line. The warning names the layers over the line now.
    """

    def __init__(self, name: str, thresholds: Thresholds, *, threshold: float,
                 measure: Callable[[Snapshot], np.ndarray], above: bool,
                 applies: Callable[[Snapshot], bool], summary: str, description: str,
                 ) -> None:
        self.name = name
        self.threshold = threshold
        self.measure, self.above, self.applies = measure, above, applies
        self.summary, self.description = summary, description
        samples = thresholds.unit_warning_samples
        self.state = Sustained(samples, samples)

    def on_snapshot(self, snapshot: Snapshot) -> Result:
        if not self.applies(snapshot):
            return None
        values = np.asarray(self.measure(snapshot), dtype=np.float64)
        with np.errstate(invalid="ignore"):
            bad_mask = (values > self.threshold) if self.above else (values < self.threshold)
        bad = [i for i in np.flatnonzero(bad_mask & finite_mask(values)) if i < len(snapshot.layers)]
        layers = tuple(snapshot.layers[i] for i in bad)
        worst = (max if self.above else min)(values[bad]) if bad else math.nan

        def finding() -> Finding:
            return Finding(
                name=self.name, step=snapshot.step, time=snapshot.time,
                layers=layers, value=float(worst), threshold=self.threshold,
                summary=self.summary.format(n=len(layers), first=layers[0]),
                description=self.description.format(
                    layers=describe_layers(layers, values[bad]), threshold=self.threshold),
                **table_fields(self.name))

        return self.state.verdict(bool(bad), finding)


def dead_units(thresholds: Thresholds) -> LayerCondition:
    return LayerCondition(
        "DeadUnits", thresholds, threshold=thresholds.dead_ratio, above=True,
        measure=lambda s: s.activation_dead_ratio, applies=lambda s: True,
        summary="{n} layer(s) with mostly dead units, first {first}",
        description=("Fraction of exact-zero activations above {threshold:g} for several "
                     "samples in a row: {layers}. A dead ReLU unit's input is always negative, "
                     "so its output and gradient are 0 and it never recovers. See "
                     "gradwatch_activation_dead_ratio."))


def activation_saturation(thresholds: Thresholds) -> LayerCondition:
    return LayerCondition(
        "ActivationSaturation", thresholds, threshold=thresholds.saturation_ratio, above=True,
        measure=lambda s: s.activation_saturation_ratio, applies=lambda s: True,
        summary="{n} saturated sigmoid/tanh layer(s), first {first}",
        description=("Fraction of sigmoid/tanh outputs in the flat region above {threshold:g} "
                     "for several samples in a row: {layers}. There the derivative is near 0 "
                     "and the gradient to every layer below is cut. See "
                     "gradwatch_activation_saturation_ratio."))


def fp16_headroom(thresholds: Thresholds) -> LayerCondition:
    return LayerCondition(
        "Fp16HeadroomLow", thresholds, threshold=thresholds.fp16_headroom_bits, above=False,
        measure=lambda s: fp16_headroom_bits(s.layer_output_max_abs),
        applies=lambda s: pulse_of(s).loss_scale is not None,
        summary="{n} layer(s) near the fp16 overflow, first {first}",
        description=("Under mixed precision, layer outputs within {threshold:g} bits "
                     "(log2(65504 / max|x|)) of the fp16 maximum for several samples in a row: "
                     "{layers}. The next growth overflows to Inf."))
