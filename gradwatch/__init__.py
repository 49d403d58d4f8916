"""gradwatch: training diagnostics for PyTorch Lightning.

The import package a user sees. Its two halves live in the repository's folders of the same
names and are installed beneath it: ``gradwatch.monitor`` (the framework-agnostic core:
probes, snapshots, thresholds, detectors, sinks) and ``gradwatch.callbacks`` (the Lightning
callback). Names are loaded on first use, so that ``import gradwatch`` stays cheap and the
host-side modules can be used without torch or Lightning.

Example::

    from gradwatch import TrainingDiagnostics, Thresholds

    trainer = Trainer(callbacks=[TrainingDiagnostics(thresholds=Thresholds(vanishing_norm=1e-6))])
"""

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from . import monitor as _core
from .monitor.lazy import lazy_attribute

if TYPE_CHECKING:  # the real types for type checkers and IDEs; loaded lazily at run time
    from .callbacks import TrainingDiagnostics
    from .monitor import (
        Alert,
        AlertEngine,
        Monitor,
        PrometheusSink,
        Pulse,
        PushgatewayPusher,
        SkipOnSpike,
        Snapshot,
        TensorBoardSink,
        Thresholds,
    )

try:
    __version__ = version("gradwatch")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

#: the callback, and every public name of the core (gradwatch.monitor loads its own lazily)
_EXPORTS = {"TrainingDiagnostics": ".callbacks", **dict.fromkeys(_core.__all__, ".monitor")}

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
    "TrainingDiagnostics",
]
assert sorted(_EXPORTS) == __all__  # the lazy names are the public ones


def __getattr__(name: str) -> Any:
    return lazy_attribute(__name__, _EXPORTS, name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
