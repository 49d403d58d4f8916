"""A recipe of the corpus: a named training, what it claims to be, and how it is judged.

A healthy recipe must train (its claim) and raise no warning or critical alert, in-process
or through the shipped rules. An unstable one must fail without gradwatch's help (its
claim: NaN, loss at chance, divergence) and be caught by one of ``catches``, before its
first NaN where it has one.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ..realistic import CADENCES, Recording, Setup

#: A claim checks a finished training (and its model) is what the recipe says it is.
Claim = Callable[[Recording, Setup], None]
#: The judges: the engine in the training process, and the shipped rules replayed at each
#: trainer pace of ``realistic.CADENCES``.
IN_PROCESS = "in-process"
RULE_JUDGES = {f"rules {pace}": seconds for pace, seconds in CADENCES.items()}
RULES_1S, RULES_5S = RULE_JUDGES


@dataclass(frozen=True)
class Recipe:
    """``misses``: judge -> the mechanism by which the current detectors get this recipe
    wrong there (a false alarm on a healthy recipe, a miss on an unstable one); its test is
    an xfail(strict=True) that fails the moment a fix lands."""

    name: str
    family: str
    make: Callable[[], Setup]
    claim: Claim
    catches: frozenset[str] = frozenset()
    #: what the rules catch it by where that differs (in-process-only alerts have no metric)
    rule_catches: frozenset[str] | None = None
    steps: int = 600
    ci: bool = False
    misses: Mapping[str, str] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        return not self.catches

    @property
    def caught_by_rules(self) -> frozenset[str]:
        return self.catches if self.rule_catches is None else self.rule_catches


def healthy(name: str, family: str, make: Callable[[], Setup], claim: Claim,
            **options) -> Recipe:
    return Recipe(name, family, make, claim, **options)


def unstable(name: str, family: str, make: Callable[[], Setup], claim: Claim,
             catches: set[str], **options) -> Recipe:
    return Recipe(name, family, make, claim, frozenset(catches), **options)


# ------------------------------------------------------------------ claims

def _mean(values: list[float]) -> float:
    return statistics.fmean(values)


def loss_falls(by: float) -> Claim:
    """Trains: finite throughout, and the last 50 steps' mean loss ``by`` times below the
    first 20 steps'."""
    def claim(record: Recording, setup: Setup) -> None:
        assert record.first_nonfinite is None, record.first_nonfinite
        first, last = _mean(record.losses[:20]), _mean(record.losses[-50:])
        assert last * by <= first, (first, last)
    return claim


def one_lone_spike(at: int, trains: Claim) -> Claim:
    """Trains (``trains``), and step ``at``'s loss is a spike by both of LossSpike's bars
    (above loss_spike_factor x the median of the 100 steps before and loss_noise_sigmas
    robust sigmas of log(loss) above it: numpy's percentiles), with the step's global
    gradient norm below loss_spike_factor x its own median, and the next step back within
    1.5x the median: one hard batch that left the weights where they were."""
    from gradwatch.monitor.records.thresholds import Thresholds

    t = Thresholds()

    def claim(record: Recording, setup: Setup) -> None:
        import numpy as np

        trains(record, setup)
        before = np.log(record.losses[at - t.history_steps:at])
        q25, median, q75 = np.percentile(before, (25, 50, 75))
        rise = math.log(record.losses[at]) - median
        assert rise > math.log(t.loss_spike_factor), math.exp(rise)
        assert rise > t.loss_noise_sigmas * (q75 - q25) / 1.349, (rise, q75 - q25)
        assert record.losses[at + 1] < 1.5 * math.exp(median), record.losses[at + 1]
        norms = [p.global_grad_norm for p in record.pulses]
        assert norms[at] < t.loss_spike_factor * statistics.median(
            norms[at - t.history_steps:at]), norms[at]
    return claim


def goes_nonfinite(record: Recording, setup: Setup) -> None:
    """Fails: a NaN/Inf loss or gradient."""
    assert record.first_nonfinite is not None, record.losses[-5:]


def stays_at_chance(classes: int, tolerance: float = 0.05) -> Claim:
    """Fails to learn: the last 100 steps' mean cross-entropy within ``tolerance`` (relative)
    of log(classes), a uniform guess."""
    def claim(record: Recording, setup: Setup) -> None:
        last = _mean(record.losses[-100:])
        assert abs(last / math.log(classes) - 1) < tolerance, last
    return claim


def rises_to_chance(classes: int, learned_by: int) -> Claim:
    """Had learned (the mean loss of the 50 steps before ``learned_by`` below half of chance),
    then lost it: the last 100 steps at chance or worse (or NaN)."""
    def claim(record: Recording, setup: Setup) -> None:
        chance = math.log(classes)
        assert _mean(record.losses[learned_by - 50:learned_by]) < chance / 2
        last = record.losses[-100:]
        assert record.first_nonfinite is not None or _mean(last) > 0.9 * chance, _mean(last)
    return claim


def diverges(factor: float, window: int = 50) -> Claim:
    """Fails: NaN/Inf, or the last ``window`` steps' mean loss ``factor`` times above the
    best ``window``-step mean of the run (learning undone)."""
    def claim(record: Recording, setup: Setup) -> None:
        if record.first_nonfinite is not None:
            return
        losses = record.losses
        means = [_mean(losses[i:i + window]) for i in range(0, len(losses) - window + 1, 10)]
        assert means[-1] > factor * min(means), (min(means), means[-1])
    return claim


def stops_learning_after(step: int, keeps: float = 0.9) -> Claim:
    """Fails: after ``step`` the loss never again gets below ``keeps`` x its mean of the 50
    steps before it (the 100 last steps' mean), where a healthy run keeps falling."""
    def claim(record: Recording, setup: Setup) -> None:
        before = _mean(record.losses[step - 50:step])
        assert record.first_nonfinite is not None or _mean(record.losses[-100:]) > keeps * before
    return claim


def fails_to_learn(baseline: float, share: float = 0.5) -> Claim:
    """Fails: the last 100 steps' mean loss above ``share`` x ``baseline`` (the loss of
    predicting the targets' mean), or NaN."""
    def claim(record: Recording, setup: Setup) -> None:
        last = _mean(record.losses[-100:])
        assert record.first_nonfinite is not None or last > share * baseline, last
    return claim
