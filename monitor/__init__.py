"""gradwatch's framework-agnostic core: probes, snapshots, thresholds, sinks."""

from .monitor import Monitor
from .prometheus import PrometheusSink
from .pushgateway import PushgatewayPusher
from .snapshot import Pulse, Snapshot
from .tensorboard import TensorBoardSink
from .thresholds import Thresholds

__all__ = [
    "Monitor",
    "PrometheusSink",
    "PushgatewayPusher",
    "Pulse",
    "Snapshot",
    "TensorBoardSink",
    "Thresholds",
]
