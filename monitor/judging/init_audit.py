"""The initialisation audit's verdict: the weights measured by ``probes.weight_audit``
(once, before the first step) judged against the common schemes, at most one Finding per kind.
"""

from __future__ import annotations

import logging
import math
import time

from ..records.findings import Finding, table_fields
from ..records.init_schemes import VARIANCE_FLOOR, WeightAudit
from ..records.thresholds import Thresholds

INIT_SCALE, INIT_SYMMETRY = "InitializationSuspect", "SymmetricInitialization"
log = logging.getLogger("gradwatch.init_audit")
#: Longest alert text (summary + description) the audit writes; the details go to the debug
#: log and to the WeightAudits.
MESSAGE_CHARS = 300


def audit_initialization(audits: list[WeightAudit], thresholds: Thresholds | None = None,
                         step: int = 0) -> list[Finding]:
    """Warnings about a model's initial weights (``audits``, from ``audit_weights``): at most
    one per kind, each under ``MESSAGE_CHARS`` characters; every weight's figures go to the
    debug log.

    InitializationSuspect: variance more than ``init_variance_factor`` away from every
    common scheme. SymmetricInitialization: identical rows.
    """
    t = thresholds or Thresholds()
    for audit in audits:
        log.debug("gradwatch init audit: %s", audit.detail())
    now = time.time()
    findings = []
    symmetric = [a for a in audits if a.symmetric]
    if symmetric:
        findings.append(_finding(
            INIT_SYMMETRY, symmetric, step, now, value=float(len(symmetric)), threshold=0.0,
            summary=f"{len(symmetric)} weight(s) with identical units, first {symmetric[0].name}",
            description="Identical rows (e.g. all zero): the symmetry is never broken and the "
                        "layer acts as one unit. Zero-initialised residual outputs are the "
                        "exception."))
    factor = t.init_variance_factor
    off = [a for a in audits if not a.symmetric and math.isfinite(a.ratio)
           and not 1 / factor <= a.ratio <= factor]
    if off:
        worst = max(off, key=lambda a: abs(math.log(max(a.ratio, VARIANCE_FLOOR))))
        side = "above" if worst.ratio > 1 else "below"
        findings.append(_finding(
            INIT_SCALE, off, step, now, value=worst.ratio, threshold=factor,
            summary=(f"{len(off)} weight(s) far off every common init, worst {worst.name} at "
                     f"{worst.ratio:.2g}x {worst.nearest}"),
            description=(f"Var(W) more than {factor:g}x {side} PyTorch default, Xavier, He and "
                         "std-0.02 inits: activations will "
                         + ("grow" if worst.ratio > 1 else "shrink") + " with depth.")))
    return findings


def _finding(name: str, audits: list[WeightAudit], step: int, now: float, *, value: float,
             threshold: float, summary: str, description: str) -> Finding:
    spare = MESSAGE_CHARS - len(description) - 2
    return Finding(
        name=name, step=step, time=now, layers=tuple(dict.fromkeys(_layer_of(a.name)
                                                                    for a in audits)),
        value=value, threshold=threshold, summary=summary[:spare], description=description,
        **table_fields(name))


def _layer_of(param_name: str) -> str:
    """The layer (module qualified name) owning a parameter name."""
    module, _, _ = param_name.rpartition(".")
    return module or param_name
