"""Thresholds: the one source of truth for every number the monitor judges by.

Detectors, the generated Prometheus rules and the generated Grafana dashboards all read this
object, so they never disagree. Each field carries its reason in ``metadata["why"]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields


def _t(default: float, why: str, *, low: float = 0.0, high: float = math.inf) -> float:
    return field(default=default, metadata={"why": why, "low": low, "high": high})


@dataclass(frozen=True)
class Thresholds:
    """Numbers the statistics and detectors use. Override any of them by keyword.

    Raises:
        ValueError: a value that is not a finite number in its allowed range, naming the field.
    """

    sigmoid_flat: float = _t(
        0.018,
        "sigmoid(x) < 0.018 or > 0.982 means |x| > 4, where its derivative s(1-s) < 0.018: "
        "the flat region that cuts the gradient (THEORY 2).",
        high=0.5,
    )
    tanh_flat: float = _t(
        0.97,
        "|tanh(x)| > 0.97 means |x| > 2.1, where its derivative 1 - y^2 < 0.06 (THEORY 2).",
        high=1.0,
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"Thresholds.{f.name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"Thresholds.{f.name} must be finite, got {value!r}")
            low, high = f.metadata["low"], f.metadata["high"]
            if not low <= value <= high:
                raise ValueError(f"Thresholds.{f.name} must be in [{low}, {high}], got {value!r}")

    @classmethod
    def documented(cls) -> dict[str, tuple[float, str]]:
        """Every threshold with its default and its reason, for docs and generators."""
        return {f.name: (f.default, f.metadata["why"]) for f in fields(cls)}
