"""Learning-rate schedules as people write them: ``step -> multiplier of the base lr``."""

from __future__ import annotations

import math
from collections.abc import Callable

Schedule = Callable[[int], float]


def constant(step: int) -> float:
    return 1.0


def step_decay(every: int, factor: float = 0.1) -> Schedule:
    return lambda step: factor ** (step // every)


def linear_warmup(warmup: int) -> Schedule:
    return lambda step: min(1.0, (step + 1) / warmup)


def warmup_cosine(warmup: int, steps: int, floor: float = 0.0) -> Schedule:
    """Linear warm-up, then a cosine down to ``floor`` at ``steps``."""
    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        done = min(step, steps) - warmup
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * done / (steps - warmup)))
    return schedule


def warm_restarts(period: int, floor: float = 0.0, growth: int = 1) -> Schedule:
    """SGDR (torch's CosineAnnealingWarmRestarts): a cosine from 1 down to ``floor`` over
    ``period`` steps, then back to 1 at once; each period ``growth`` times the last."""
    def schedule(step: int) -> float:
        start, length = 0, period
        while step >= start + length:
            start, length = start + length, length * growth
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * (step - start) / length))
    return schedule


def one_cycle(steps: int, peak_at: float = 0.3, start: float = 0.04,
              end: float = 1e-4) -> Schedule:
    """torch's OneCycleLR (cosine annealing): from ``start`` up to 1 at ``peak_at`` of the
    run, then down to ``end``."""
    peak = int(steps * peak_at)

    def schedule(step: int) -> float:
        if step < peak:
            return start + (1 - start) * 0.5 * (1 - math.cos(math.pi * step / peak))
        progress = min(1.0, (step - peak) / (steps - peak))
        return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * progress))
    return schedule


def warmup_stable_decay(warmup: int, steps: int, decay_share: float = 0.2) -> Schedule:
    """WSD (MiniCPM): linear warm-up, a long constant stretch, then a linear decay to 0 over
    the last ``decay_share`` of the run."""
    decay_from = int(steps * (1 - decay_share))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if step < decay_from:
            return 1.0
        return max(0.0, (steps - step) / (steps - decay_from))
    return schedule
