"""Remedies that fit the run: the alert table's remedy, read against what already happened.

Two pieces of context change the advice:

- causal order: a divergence (LossDivergence/LossSpike) or an explosion that fired before a
  later finding is its likely cause, so the headline treats the cause (divergence ->
  explosion -> NaN: "lower the learning rate", not "check the batch");
- a fix already in place is named, not suggested again: with gradient clipping engaged,
  "clip gradients" is dropped and the remedy says that clipping did not stop it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..records.findings import Finding
from ..records.snapshot import Pulse

if TYPE_CHECKING:
    from ..records.findings import Alert

#: Findings that come first in a divergence, in causal order, and what their cause needs.
CAUSES = ("LossDivergence", "LossSpike", "GradientExplosion")
#: Findings a divergence leads to: their headline goes to the earliest cause.
CONSEQUENCES = ("GradientExplosion", "NonFiniteValues", "AmpOverflowStorm")
LOWER_LR = "Lower the learning rate (or lengthen the warm-up)"


def remedy_in_context(finding: Finding, earlier: Sequence[Alert], pulse: Pulse | None) -> str:
    """The remedy of ``finding`` given the ``earlier`` firing Alerts of the run and the
    latest Pulse. Unknown (custom) alert names keep the detector's own remedy."""
    clauses = [c for c in finding.remedy.split("; ") if c]
    # decided once where the Pulse is built (records.derived.clip_engaged): a step the
    # GradScaler skipped was never clipped, whatever its norms say
    clipped = (pulse is not None and bool(pulse.grad_clip_engaged)
               and finding.name in CAUSES + CONSEQUENCES)
    if clipped:
        clauses = [c for c in clauses if "lip gradients" not in c]
    lead = []
    causes = [a for a in earlier if a.name in CAUSES and a.name != finding.name]
    if finding.name in CONSEQUENCES and causes:
        chain = ", then ".join(f"{a.name} at step {a.step}" for a in causes[:3])
        lead.append(f"{LOWER_LR} and resume from a checkpoint before step {causes[0].step}: "
                    f"{chain} came first, so this is the end of a divergence, not bad data")
    if clipped and pulse is not None:
        lead.append(f"gradient clipping is on (norm clipped to {pulse.clipped_grad_norm:.3g}) "
                    f"and gradients are still {pulse.global_grad_norm:.3g}: fix the "
                    "initialisation scale or lower the learning rate, clipping harder will "
                    "not help")
    if not lead:
        return finding.remedy
    text = "; ".join(lead + clauses)
    return text[0].upper() + text[1:]

