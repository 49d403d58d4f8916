"""The AlertEngine that raises and resolves them.

The AlertEngine is a Monitor observer: it runs on the training thread, reads host data only,
does no I/O, and hands every Alert to the sinks with ``monitor.publish("on_alert", alert)``
(the export thread then calls ``sink.on_alert(alert)``). No torch here (only the one-off
init audit imports it), so alert consumers do not need it.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from ..logs import WarnOnce
from ..records.alert_table import RUNBOOK_BASE_URL, check_runbook_base_url
from ..records.findings import (
    ALERT_NAMES,
    FIRING,
    Alert,
    Finding,
    Result,
    Verdict,
    runbook_link,
)
from ..records.regimes import worst
from ..records.snapshot import Pulse, Snapshot
from ..records.thresholds import Thresholds
from ..records.validation import check_int, check_names
from .base import Detector, FlushingDetector, PulseDetector, SnapshotDetector
from .catalog import default_detectors
from .init_audit import audit_initialization
from .remedies import remedy_in_context

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class Panel:
    """The detectors by what they judge: Pulses, Snapshots, and a held-back verdict."""

    pulse: list[PulseDetector]
    snapshot: list[SnapshotDetector]
    flushing: list[FlushingDetector]

    @classmethod
    def of(cls, detectors: Sequence[Detector]) -> Panel:
        return cls([d for d in detectors if isinstance(d, PulseDetector)],
                   [d for d in detectors if isinstance(d, SnapshotDetector)],
                   [d for d in detectors if isinstance(d, FlushingDetector)])


class AlertEngine:
    """Runs the detectors on every Pulse and Snapshot and keeps the firing state.

    An alert fires once when its detector's condition starts to hold and resolves once when
    it clears (no re-firing every step while it is active). Alert names: see
    ``default_detectors`` and ``init_audit``.

    Attributes:
        regime: the worst active regime: nonfinite > exploding > vanishing > healthy.
        active: name -> the firing Alert, for alerts active now.
        history: the latest ``history_size`` Alert events (firing and resolved).
        should_stop: set when an alert named in ``stop_on`` fires (the Lightning glue copies
            it to ``trainer.should_stop``). Default: keep training and alert.

    Args:
        thresholds: the Thresholds; None adopts the Monitor's on first contact, so detectors,
            rules and dashboards judge by one object.
        stop_on: alert names that set ``should_stop`` when they fire.
        checkpoint_path: called with each Finding about to fire; a path it returns is where
            the state is saved (checkpoint-on-alert), named in the Alert. None: no saving.
        history_size: bound of ``history``.
        detectors: replaces the built-in detectors (objects with a ``name`` and
            ``on_pulse(pulse)`` and/or ``on_snapshot(snapshot)``, optionally ``flush()``,
            returning a Finding, a Verdict or None).
        runbook_base_url: where docs/runbook.md is served; each alert's ``runbook_url`` is
            this plus ``#<alert name lower-cased>`` (the same base as ``gradwatch rules``).

    Raises:
        ValueError: an unknown name in ``stop_on``, a history_size below 1 or a
            runbook_base_url that is not an absolute http(s) URL.
    """

    def __init__(
        self,
        thresholds: Thresholds | None = None,
        *,
        stop_on: Iterable[str] = (),
        checkpoint_path: Callable[[Finding], str | None] | None = None,
        history_size: int = 1000,
        detectors: Sequence[Detector] | None = None,
        runbook_base_url: str = RUNBOOK_BASE_URL,
    ) -> None:
        check_int("history_size", history_size, low=1)
        for position, detector in enumerate(detectors or ()):
            if not isinstance(detector, (PulseDetector, SnapshotDetector)):
                raise ValueError(f"detectors[{position}] ({type(detector).__name__}) needs a "
                                 "name and on_pulse(pulse) or on_snapshot(snapshot)")
        known = set(ALERT_NAMES) | {d.name for d in detectors or ()}
        self.stop_on = check_names("stop_on", stop_on, known)
        self.thresholds = thresholds
        self.runbook_base_url = check_runbook_base_url(runbook_base_url)
        self._last_pulse: Pulse | None = None  # the context of a remedy (clipping)
        self._detectors = list(detectors) if detectors is not None else None
        self.active: dict[str, Alert] = {}
        self.history: deque[Alert] = deque(maxlen=history_size)
        self.should_stop = False
        self.checkpoint_path = checkpoint_path
        self._panel: Panel | None = None  # the detectors by what they judge, once known
        self._warn = WarnOnce()

    # ------------------------------------------------------------------ observer API

    def on_pulse(self, pulse: Pulse, monitor) -> None:
        """Every step's Pulse (training thread)."""
        self._last_pulse = pulse
        for detector in self._ready(monitor).pulse:
            result = self._run(detector, detector.on_pulse, pulse)
            if result is not None and (result is not Verdict.CLEAR or self.active):
                self._apply(detector, result, pulse.step, pulse.time, monitor)

    def on_snapshot(self, snapshot: Snapshot, monitor) -> None:
        """Every sampled step's Snapshot (training thread)."""
        for detector in self._ready(monitor).snapshot:
            self._apply(detector, self._run(detector, detector.on_snapshot, snapshot),
                        snapshot.step, snapshot.time, monitor)

    def audit(self, model: nn.Module, monitor, step: int = 0) -> list[Alert]:
        """Audit the initialisation of ``model`` (call once, before the first step) and
        publish the warnings; returns the Alerts fired."""
        # the one read of tensors in judging, once before the first step: torch is loaded here
        # only, so alert consumers need not have it
        from ..probes.weight_audit import audit_weights

        findings = audit_initialization(audit_weights(model), self._thresholds(monitor),
                                        step=step)
        return [alert for f in findings if (alert := self._fire(f, monitor)) is not None]

    def flush(self, monitor) -> None:
        """Report what waits for a Snapshot that will not come (call at the end of training):
        a non-finite step with no sampled step after it, reported without origin."""
        for detector in self._ready(monitor).flushing:
            finding = self._run(detector, detector.flush)
            if isinstance(finding, Finding):
                self._fire(finding, monitor)

    @property
    def regime(self) -> str:
        return worst(a.regime for a in self.active.values())

    # ------------------------------------------------------------------ internals

    def _thresholds(self, monitor) -> Thresholds:
        if self.thresholds is None:
            self.thresholds = getattr(monitor, "thresholds", None) or Thresholds()
        return self.thresholds

    def _ready(self, monitor) -> Panel:
        if self._panel is None:
            detectors = self._detectors
            if detectors is None:
                detectors = default_detectors(self._thresholds(monitor))
            self._panel = Panel.of(detectors)
        return self._panel

    def _run(self, detector: object, judge: Callable[..., Result], *item: object) -> Result:
        """A detector's verdict; a failing detector is logged once and never stops training."""
        try:
            return judge(*item)
        except Exception as exc:
            kind = type(detector).__name__
            self._warn(f"detector:{kind}", "gradwatch: detector %s failed (reported once): %r",
                       kind, exc)
            return None

    def _apply(self, detector: Detector, result: Result, step: int, when: float,
               monitor) -> None:
        if isinstance(result, Finding):
            self._fire(result, monitor)
        elif result is Verdict.NEEDS_SAMPLING:
            monitor.escalate(self._thresholds(monitor).escalation_steps)
        elif result is Verdict.CLEAR:
            if detector.name in self.active:
                self._resolve(detector.name, step, when, monitor)

    def _fire(self, finding: Finding, monitor) -> Alert | None:
        if finding.name in self.active:
            return None
        earlier = [a for a in self.history if a.status == FIRING]
        checkpoint = self.checkpoint_path(finding) if self.checkpoint_path else None
        if checkpoint:
            finding = dataclasses.replace(
                finding, checkpoint=checkpoint, description=f"{finding.description} The "
                f"state at the end of step {finding.step} is saved to {checkpoint}.")
        finding = dataclasses.replace(
            finding, remedy=remedy_in_context(finding, earlier, self._last_pulse))
        alert = Alert.firing(finding, run=getattr(monitor, "run_name", "run"),
                             rank=getattr(monitor, "rank", 0),
                             runbook_url=runbook_link(finding.name, self.runbook_base_url))
        self.active[alert.name] = alert
        alert = self._emit(alert, monitor)
        if alert.name in self.stop_on:
            self.should_stop = True
        return alert

    def _resolve(self, name: str, step: int, when: float, monitor) -> None:
        firing = self.active.pop(name)
        self._emit(firing.resolved(step, when), monitor)

    def _emit(self, alert: Alert, monitor) -> Alert:
        """Publishes ``alert`` (already applied to ``active``) with the regime it leaves."""
        alert = dataclasses.replace(alert, run_regime=self.regime)
        if alert.name in self.active:
            self.active[alert.name] = alert
        self.history.append(alert)
        monitor.publish("on_alert", alert)
        return alert
