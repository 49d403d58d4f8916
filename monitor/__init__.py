"""gradwatch's framework-agnostic core, one subpackage per stage of the flow: ``capture``
(the step) -> ``probes`` (device statistics) -> ``records`` (Pulse, Snapshot, Alert) ->
``judging`` (detectors, alerts) and ``sinks`` (exporters); beside them ``ops`` (rules,
dashboards, doctor) and ``report``.

Names are loaded on first use, so that the host-side modules (snapshots, detectors, alerts,
delivery) can be imported without torch.
"""

from typing import TYPE_CHECKING, Any

from .lazy import lazy_attribute

if TYPE_CHECKING:  # the real types for type checkers and IDEs; loaded lazily at run time
    from .capture.monitor import Monitor
    from .capture.skip_on_spike import SkipOnSpike
    from .judging.engine import AlertEngine
    from .records.findings import Alert
    from .records.snapshot import Pulse, Snapshot
    from .records.thresholds import Thresholds
    from .sinks.prometheus import PrometheusSink
    from .sinks.pushgateway import PushgatewayPusher
    from .sinks.tensorboard import TensorBoardSink

_EXPORTS = {
    "Monitor": ".capture.monitor",
    "PrometheusSink": ".sinks.prometheus",
    "PushgatewayPusher": ".sinks.pushgateway",
    "Pulse": ".records.snapshot",
    "Snapshot": ".records.snapshot",
    "TensorBoardSink": ".sinks.tensorboard",
    "Thresholds": ".records.thresholds",
    "Alert": ".records.findings",
    "AlertEngine": ".judging.engine",
    "SkipOnSpike": ".capture.skip_on_spike",
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
