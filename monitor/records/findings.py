"""Findings and Alerts: what a detector saw, and the event the AlertEngine makes of it.

Plain host records (no torch, no numpy), read by the judging code and by every alert sink.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from .alert_table import CRITICAL, IN_PROCESS_NAMES, INFO, RUNBOOK_BASE_URL, WARNING
from .alert_table import spec as alert_spec

T = TypeVar("T")
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


#: An Alert's fields in its JSON (to_dict), in order: what sinks and Alertmanager read.
ALERT_FIELDS = ("name", "severity", "status", "run", "rank", "step", "layers", "value",
                "threshold", "summary", "description", "remedy", "regime", "origin_exact",
                "starts_at", "ends_at", "runbook_url", "checkpoint", "run_regime")


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


class FindingField(Generic[T]):
    """An Alert attribute that is its Finding's field (``source``: the field's name there,
    by default the attribute's own)."""

    def __init__(self, source: str = "") -> None:
        self.source = source

    def __set_name__(self, owner: type, name: str) -> None:
        self.source = self.source or name

    def __get__(self, alert: Alert, owner: type | None = None) -> T:
        return cast(T, getattr(alert.finding, self.source))


@dataclass(frozen=True)
class Alert:
    """One alert event: a Finding that started firing, or that resolved, in a run.

    The content (name, severity, layers, value, texts, regime...) is the ``finding``'s,
    declared once there and read through as attributes; the Alert adds the run's identity
    (run, rank) and the firing state. A resolved event repeats the firing event's identity
    (name, run, rank, layers, so the same Alertmanager labels) with ``status="resolved"``,
    the resolving step and ``ends_at``. Times are seconds since the epoch.
    """

    finding: Finding
    status: str
    run: str
    rank: int
    ends_at: float | None = None
    runbook_url: str = ""
    #: the engine's regime (the worst active one) once this event applied: decided by the
    #: AlertEngine, written as such by the sinks (None: not raised by an engine)
    run_regime: str | None = None

    @classmethod
    def firing(cls, finding: Finding, *, run: str, rank: int = 0,
               runbook_url: str = "") -> Alert:
        """The firing event of ``finding`` in ``run`` (its starts_at the finding's time)."""
        return cls(finding, FIRING, run, rank, runbook_url=runbook_url)

    def resolved(self, step: int, when: float) -> Alert:
        """The resolved event of this firing one, at ``step`` ending at ``when`` (never
        before it started)."""
        return dataclasses.replace(self, finding=dataclasses.replace(self.finding, step=step),
                                   status=RESOLVED, ends_at=max(when, self.starts_at))

    # the finding's fields, read through (declared once, on Finding)
    name = FindingField[str]()
    severity = FindingField[str]()
    step = FindingField[int]()
    layers = FindingField[tuple[str, ...]]()
    value = FindingField[float]()
    threshold = FindingField[float]()
    summary = FindingField[str]()
    description = FindingField[str]()
    remedy = FindingField[str]()
    regime = FindingField[str | None]()
    origin_exact = FindingField[bool | None]()
    checkpoint = FindingField[str | None]()
    starts_at = FindingField[float]("time")

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
        out = {key: getattr(self, key) for key in ALERT_FIELDS}
        out["layers"] = list(self.layers)
        for key in ("value", "threshold"):
            out[key] = out[key] if math.isfinite(out[key]) else None
        return out
