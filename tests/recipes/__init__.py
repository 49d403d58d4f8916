"""The recipe corpus the detectors are judged on: healthy trainings across optimizers,
schedules, regularisers, precisions and architectures that must stay quiet, and unstable
ones that must be caught (see docs/detection.md). ``CI`` is the subset the default test run
judges: it covers every detector; ``make detect-bench`` judges them all."""

from __future__ import annotations

from . import dense, generative, sequence, unstable, vision
from .recipe import Recipe

RECIPES: dict[str, Recipe] = {
    r.name: r for family in (dense, vision, sequence, generative, unstable)
    for r in family.RECIPES}
CI: dict[str, Recipe] = {name: r for name, r in RECIPES.items() if r.ci}
