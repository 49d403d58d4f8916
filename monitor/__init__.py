"""gradwatch's framework-agnostic core: probes, snapshots, thresholds, detectors, sinks.

Names are loaded on first use, so that the host-side modules (snapshots, detectors, alerts,
delivery) can be imported without torch.
"""

from importlib import import_module

_EXPORTS = {
    "Monitor": "monitor.monitor",
    "PrometheusSink": "monitor.prometheus",
    "PushgatewayPusher": "monitor.pushgateway",
    "Pulse": "monitor.snapshot",
    "Snapshot": "monitor.snapshot",
    "TensorBoardSink": "monitor.tensorboard",
    "Thresholds": "monitor.thresholds",
    "Alert": "monitor.alerts",
    "AlertEngine": "monitor.alerts",
    "SkipOnSpike": "monitor.responses",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'monitor' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
