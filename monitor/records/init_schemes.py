"""The common initialisation schemes, and one weight's audit against them (plain figures).

``probes.weight_audit`` measures the weights (torch); ``judging.init_audit`` judges them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

#: The std of the small-std transformer inits (BERT, GPT-2), whatever the fan.
SMALL_STD = 0.02
#: GPT-2 scales its residual projections' std SMALL_STD by 1/sqrt(2 n_layers); up to 48 layers.
DEEPEST_SCALED_RESIDUAL = 48
#: Floor of a weight variance before a ratio or log: an all-zero weight is infinitely far
#: off every scheme, not a division by zero.
VARIANCE_FLOOR = 1e-300


def schemes(fan_in: int, fan_out: int) -> dict[str, float]:
    """The weight variance of each common initialisation scheme for this fan."""
    return {
        "PyTorch default": 1.0 / (3 * fan_in),
        "LeCun/1/sqrt(d)": 1.0 / fan_in,
        "Xavier": 2.0 / (fan_in + fan_out),
        "He": 2.0 / fan_in,
        "std 0.02": SMALL_STD ** 2,
        "GPT-2 scaled residual": SMALL_STD ** 2 / (2 * DEEPEST_SCALED_RESIDUAL),
    }


@dataclass(frozen=True)
class WeightAudit:
    """The audit of one weight tensor."""

    name: str  # qualified parameter name
    fan_in: int
    fan_out: int
    activation: str  # the activation module guessed to follow, or "none"
    variance: float
    xavier: float
    he: float
    expected: float  # the one of xavier/he that matches the activation
    symmetric: bool
    known: dict[str, float] = field(default_factory=dict)  # scheme -> its variance

    @property
    def nearest(self) -> str:
        """The common scheme whose variance is closest (in ratio) to this weight's; the
        small-std range between std 0.02 and its scaled residual form counts as one."""
        return min(self.known, key=lambda k: abs(math.log(self._ratio_to(self.known[k]))))

    @property
    def ratio(self) -> float:
        """Variance over the nearest scheme's (1.0 anywhere in the small-std range)."""
        if not self.known or self.variance <= 0:
            return math.nan
        low, high = self.known["GPT-2 scaled residual"], self.known["std 0.02"]
        if low <= self.variance <= high:
            return 1.0
        return self._ratio_to(self.known[self.nearest])

    def _ratio_to(self, variance: float) -> float:
        return max(self.variance, VARIANCE_FLOOR) / variance

    def detail(self) -> str:
        return (f"{self.name}: Var(W)={self.variance:.3g}, {self.ratio:.3g}x {self.nearest} "
                f"(fan_in {self.fan_in}, fan_out {self.fan_out}, then {self.activation})")
