"""``stop_on``: the stop of a fit, said in one line (Lightning itself says nothing above
DEBUG when a callback sets ``trainer.should_stop``)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from ..monitor.records.findings import Alert


def stopping_alert(history: Any, stop_on: Collection[str]) -> Alert | None:
    """The firing Alert of ``stop_on`` that asked for the stop: the first in ``history``."""
    return next((alert for alert in history
                 if alert.status == "firing" and alert.name in stop_on), None)


def stop_line(alert: Alert | None, trainer: Any) -> str:
    """What stopped the fit, where, and what Lightning does about it."""
    if alert is None:
        what = "an alert of stop_on fired"
    else:
        where = f" on {', '.join(alert.layers)}" if alert.layers else ""
        what = f"{alert.name} fired at step {alert.step}{where} (stop_on)"
    return (f"stopping the fit after step {trainer.global_step - 1}: {what}; Lightning ends "
            f"it now that trainer.should_stop is set (later if min_steps/min_epochs say so)")
