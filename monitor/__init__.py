"""gradwatch's framework-agnostic core: probes, snapshots, thresholds, detectors, sinks.

Names are loaded on first use, so that the host-side modules (snapshots, detectors, alerts,
delivery) can be imported without torch.
"""

from typing import TYPE_CHECKING, Any

from .lazy import lazy_attribute

if TYPE_CHECKING:  # the real types for type checkers and IDEs; loaded lazily at run time
    from .alerts import Alert, AlertEngine
    from .monitor import Monitor
    from .prometheus import PrometheusSink
    from .pushgateway import PushgatewayPusher
    from .responses import SkipOnSpike
    from .snapshot import Pulse, Snapshot
    from .tensorboard import TensorBoardSink
    from .thresholds import Thresholds

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

__all__ = [
    "Alert",
    "AlertEngine",
    "Monitor",
    "PrometheusSink",
    "Pulse",
    "PushgatewayPusher",
    "SkipOnSpike",
    "Snapshot",
    "TensorBoardSink",
    "Thresholds",
]
assert sorted(_EXPORTS) == __all__  # the lazy names are the public ones


def __getattr__(name: str) -> Any:
    return lazy_attribute(__name__, _EXPORTS, name)
