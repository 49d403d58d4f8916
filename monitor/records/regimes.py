"""Regimes: the names of a run's state, their codes and the worst-regime rule, in one place.

A regime says which way a run is failing: an alert of the alert table carries one, the run's
regime is the worst of those active. The Prometheus sink exports it (``gradwatch_regime``),
the rules turn it into a code (``gradwatch:regime:code``) the dashboards colour, and the
report's verdict is the worst one a run reported. No torch, no numpy: anything may import it.
"""

from __future__ import annotations

from collections.abc import Iterable

HEALTHY, VANISHING, EXPLODING, NONFINITE = "healthy", "vanishing", "exploding", "nonfinite"
#: From best to worst; a regime's position is its code (``gradwatch:regime:code``).
REGIMES = (HEALTHY, VANISHING, EXPLODING, NONFINITE)


def code(regime: str) -> int:
    """The number of ``regime`` in ``gradwatch:regime:code`` (its rank, healthy 0).

    Raises:
        ValueError: for a name not in REGIMES.
    """
    return REGIMES.index(regime)


def worst(regimes: Iterable[str | None]) -> str:
    """The worst of ``regimes`` (nonfinite > exploding > vanishing > healthy); names that
    are not regimes (None: an alert without one) are ignored; healthy when none is left."""
    return max((r for r in regimes if r in REGIMES), key=REGIMES.index, default=HEALTHY)
