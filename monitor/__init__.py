"""gradwatch's framework-agnostic core: probes, snapshots, thresholds, detectors, sinks.

Names are loaded on first use, so that the host-side modules (snapshots, detectors, alerts,
delivery) can be imported without torch.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Monitor": ".monitor",
    "PrometheusSink": ".prometheus",
    "PushgatewayPusher": ".pushgateway",
    "Pulse": ".snapshot",
    "Snapshot": ".snapshot",
    "TensorBoardSink": ".tensorboard",
    "Thresholds": ".thresholds",
    "Alert": ".alerts",
    "AlertEngine": ".alerts",
    "SkipOnSpike": ".responses",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name], __name__), name)
