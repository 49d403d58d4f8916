"""The built-in detectors, configured from one Thresholds."""

from __future__ import annotations

from ..records.thresholds import Thresholds
from .amp import AmpOverflowStorm
from .base import Detector
from .explosion import GradientExplosion
from .layer_conditions import activation_saturation, dead_units, fp16_headroom
from .loss import LossDivergence, LossSpike
from .nonfinite import NonFiniteValues
from .transformer import leading_detectors
from .vanishing import GradientVanishing


def default_detectors(thresholds: Thresholds) -> list[Detector]:
    """Every built-in detector, configured from one Thresholds."""
    return [
        NonFiniteValues(thresholds),
        GradientExplosion(thresholds),
        LossDivergence(thresholds),
        LossSpike(thresholds),
        GradientVanishing(thresholds),
        AmpOverflowStorm(thresholds),
        dead_units(thresholds),
        activation_saturation(thresholds),
        fp16_headroom(thresholds),
        *leading_detectors(thresholds),  # issue 17: transformer leading indicators
    ]
