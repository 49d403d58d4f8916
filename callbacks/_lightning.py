"""Lightning compatibility: the same callback serves ``lightning.pytorch`` and ``pytorch_lightning``.

Each package has its own ``Callback`` base class and Trainers check ``isinstance`` against
their own, so TrainingDiagnostics derives from every one that is installed.
"""

from __future__ import annotations

import importlib
import logging


def _installed(module: str, attribute: str) -> list[type]:
    try:
        return [getattr(importlib.import_module(module), attribute)]
    except ImportError:
        return []


CALLBACK_BASES: tuple[type, ...] = tuple(
    _installed("lightning.pytorch.callbacks", "Callback")
    + _installed("pytorch_lightning.callbacks", "Callback")
)
if not CALLBACK_BASES:
    raise ImportError("gradwatch's callbacks need `lightning` or `pytorch-lightning` installed")

TENSORBOARD_LOGGERS: tuple[type, ...] = tuple(
    _installed("lightning.pytorch.loggers", "TensorBoardLogger")
    + _installed("pytorch_lightning.loggers", "TensorBoardLogger")
)


def lightning_package():
    """``lightning.pytorch`` when installed, else ``pytorch_lightning`` (same API)."""
    for name in ("lightning.pytorch", "pytorch_lightning"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ImportError("gradwatch needs `lightning` or `pytorch-lightning` installed")


def tensorboard_writer(trainer):
    """The SummaryWriter of the Trainer's TensorBoardLogger, or None."""
    for logger in trainer.loggers:
        if isinstance(logger, TENSORBOARD_LOGGERS):
            return logger.experiment
    return None


def show_info_lines(logger: logging.Logger) -> None:
    """Make ``logger``'s INFO lines visible when nobody configured logging, as Lightning
    does for ``lightning.pytorch`` (its own stderr handler, not propagated); once the
    user has configured logging (a root handler), their configuration decides."""
    if logging.getLogger().hasHandlers() or logger.handlers:
        return
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    logger.addHandler(logging.StreamHandler())
    logger.propagate = False
