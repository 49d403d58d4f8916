"""Findings and Alerts: what a detector saw, and the event the AlertEngine makes of it.

Plain host records (no torch, no numpy), read by the judging code and by every alert sink.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .alert_table import CRITICAL, IN_PROCESS_NAMES, INFO, RUNBOOK_BASE_URL, WARNING
from .alert_table import spec as alert_spec

#: Layers an alert text names before "and N more".
DESCRIBED_LAYERS = 8


@dataclass(frozen=True)
class Finding:
    """What a detector saw: the content of an Alert, without the run's identity (run, rank)
    and firing state. ``time`` is when the step it is about ended."""

    name: str
    severity: str
    step: int
    time: float
    layers: tuple[str, ...]
    value: float
    threshold: float
    summary: str
    description: str
    remedy: str
    regime: str | None = None
    origin_exact: bool | None = None
    checkpoint: str | None = None


def table_fields(name: str) -> dict[str, Any]:
    """The Finding fields the alert table decides: severity, regime and remedy."""
    spec = alert_spec(name)
    return {"severity": spec.severity, "regime": spec.regime, "remedy": spec.remedy}


class Verdict(enum.Enum):
    """Verdicts that are not a Finding."""

    CLEAR = "clear"
    NEEDS_SAMPLING = "needs_sampling"


Result = Finding | Verdict | None


def describe_layers(layers: Sequence[str], values: Sequence[float] | None = None,
                    limit: int = DESCRIBED_LAYERS) -> str:
    """'a (1.2), b (3.4) and 3 more' for descriptions (values optional)."""
    items = list(layers) if values is None else [
        f"{name} ({value:.3g})" for name, value in zip(layers, values)]
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


SEVERITIES = (CRITICAL, WARNING, INFO)
FIRING, RESOLVED = "firing", "resolved"
#: Every alert name the engine can raise (the alert table's in-process rows).
ALERT_NAMES = IN_PROCESS_NAMES


#: At most this many layers in the ``layers`` annotation of a run-wide alert.
CULPRIT_LAYERS = 8


def per_layer(name: str) -> bool:
    """Whether alert ``name`` is one per layer (its culprit is the ``layer`` label); a
    custom detector's alert (not in the table) is."""
    try:
        return "layer" in alert_spec(name).labels
    except KeyError:
        return True


def runbook_link(name: str, base: str = RUNBOOK_BASE_URL) -> str:
    """The runbook link of alert ``name``; "" for a custom detector's alert (not in the
    alert table, so no runbook section)."""
    try:
        return alert_spec(name).runbook_url(base)
    except KeyError:
        return ""


@dataclass(frozen=True)
class Alert:
    """One alert event: a condition that started firing, or that resolved.

    A resolved event repeats the firing event's identity (name, run, rank, layers, so the
    same Alertmanager labels) with ``status="resolved"``, the resolving step and ``ends_at``.
    Times are seconds since the epoch.
    """

    name: str
    severity: str
    status: str
    run: str
    rank: int
    step: int
    layers: tuple[str, ...]
    value: float
    threshold: float
    summary: str
    description: str
    remedy: str
    regime: str | None
    origin_exact: bool | None
    starts_at: float
    ends_at: float | None
    runbook_url: str = ""
    checkpoint: str | None = None  # checkpoint-on-alert: the file the state is saved to
    #: the engine's regime (the worst active one) once this event applied: decided by the
    #: AlertEngine, written as such by the sinks (None: not raised by an engine)
    run_regime: str | None = None

    def labels(self, world_size: int = 1) -> dict[str, str]:
        """Alertmanager labels (its identity), those of the Prometheus rules' copy: one
        alert per (run, alertname) whatever the ranks (``rank`` is an annotation), a
        ``layer`` only for the in-process per-layer alerts, ``regime`` when it has one."""
        labels = {
            "alertname": self.name,
            "severity": self.severity,
            "run": self.run,
            "layer": self.layers[0] if self.layers and per_layer(self.name) else "",
        }
        if self.regime:  # as on the Prometheus rules, from the alert table
            labels["regime"] = self.regime
        return labels

    def annotations(self, world_size: int = 1) -> dict[str, str]:
        """Alertmanager annotations: what, details, what to try, where to read more, and
        for a run-wide alert that names layers, ``layers`` (at most CULPRIT_LAYERS)."""
        notes = {
            "summary": self.summary,
            "description": self.description,
            "remedy": self.remedy,
            "runbook_url": self.runbook_url or runbook_link(self.name),
        }
        if self.layers and not per_layer(self.name):
            notes["layers"] = describe_layers(self.layers, limit=CULPRIT_LAYERS)
        if world_size > 1:
            notes["rank"] = str(self.rank)
        if self.checkpoint:
            notes["checkpoint"] = self.checkpoint
        return notes

    def to_dict(self) -> dict[str, object]:
        """Every field as JSON-ready values (non-finite floats become None)."""
        out = dataclasses.asdict(self)
        out["layers"] = list(self.layers)
        for key in ("value", "threshold"):
            out[key] = out[key] if math.isfinite(out[key]) else None
        return out
