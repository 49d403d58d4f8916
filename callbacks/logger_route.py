"""gradwatch's figures into the Trainer's own loggers, the way Lightning's monitors do it.

LearningRateMonitor and DeviceStatsMonitor call ``logger.log_metrics`` for every logger of
``trainer.loggers`` from a batch hook, with the logger's ``group_separator``, at the steps
Lightning logs at, and put their figures in ``trainer.callback_metrics`` (so that
EarlyStopping and ModelCheckpoint can monitor them). So does this route, with figures the
Monitor has already copied to the host (Pulses and Snapshots: no device sync of its own).
A TensorBoardLogger is left out: the TensorBoard sink writes into its run already.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..monitor.records.figures import Name, pulse_figures, snapshot_figures
from ..monitor.records.regimes import HEALTHY, code
from ..monitor.records.snapshot import Pulse, Snapshot
from ._lightning import TENSORBOARD_LOGGERS

PREFIX = "gradwatch"
#: the headline figures in ``trainer.callback_metrics``, e.g. for EarlyStopping's ``monitor``
GLOBAL_GRAD_NORM, LOSS_SCALE, REGIME = (f"{PREFIX}/{name}" for name in
                                        ("global_grad_norm", "loss_scale", "regime"))


class LoggerRoute:
    """An Observer of the Monitor (training thread, no I/O) that keeps what is due to the
    Trainer's loggers; ``write`` hands it over from a batch hook.

    Args:
        loggers: the Trainer's loggers (TensorBoardLoggers are skipped: see the module).
        log_every_n_steps: the Trainer's: every step's figures go to the loggers at the
            steps Lightning logs at (step k when k + 1 is a multiple); 0: none of them.
        regime: the run's regime now (the AlertEngine's), healthy without alerts.
    """

    def __init__(self, loggers: Sequence[Any], log_every_n_steps: int,
                 regime: Callable[[], str] = lambda: HEALTHY) -> None:
        self.loggers = [logger for logger in loggers
                        if not isinstance(logger, TENSORBOARD_LOGGERS)]
        self.every = log_every_n_steps
        self.regime = regime
        self._due: dict[int, dict[Name, float]] = {}  # step -> figures
        self._headline: dict[str, float] = {}

    def on_pulse(self, pulse: Pulse, monitor: object) -> None:
        if pulse.global_grad_norm is not None:
            self._headline[GLOBAL_GRAD_NORM] = pulse.global_grad_norm
        if pulse.loss_scale is not None:
            self._headline[LOSS_SCALE] = pulse.loss_scale
        if self.loggers and self.every and (pulse.step + 1) % self.every == 0:
            figures = self._due.setdefault(pulse.step, {})
            figures.update(pulse_figures(pulse))
            # the engine, an observer before this one, has judged this Pulse already
            figures[("regime",)] = code(self.regime())

    def on_snapshot(self, snapshot: Snapshot, monitor: object) -> None:
        if self.loggers:
            self._due.setdefault(snapshot.step, {}).update(snapshot_figures(snapshot))

    def write(self, trainer: Any) -> None:
        """The headline figures into ``trainer.callback_metrics``; what is due, one
        ``log_metrics`` call per step, to every logger (from a batch hook, as Lightning's
        own monitors do)."""
        if self._headline:
            self._headline[REGIME] = code(self.regime())
            trainer.callback_metrics.update({name: torch.tensor(value) for name, value
                                             in self._headline.items()})
            self._headline = {}
        if not self._due:
            return
        due, self._due = self._due, {}
        for logger in self.loggers:
            separator = logger.group_separator
            for step in sorted(due):
                metrics = {separator.join((PREFIX, *name)): value
                           for name, value in due[step].items()}
                logger.log_metrics(metrics, step=step)

