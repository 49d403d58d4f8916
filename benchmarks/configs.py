"""The configurations the overhead benchmark compares, as ONE table.

Each Config says which callbacks and Trainer options a run adds to the bare run. Everything
else (model, data, seed, logger, steps) is the same for every configuration, so the ratio
to the bare run of the same round is the cost of what the configuration adds.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import grad_norm

from gradwatch.callbacks import TrainingDiagnostics


class GradNormFloor(pl.Callback):
    """The least any per-step gradient monitor does: ONE fused ``torch._foreach_norm`` of the
    gradients, summed into a preallocated buffer that is never read (no logging, no
    detection, no host sync). Times itself, like gradwatch, as ``overhead_seconds``."""

    def __init__(self) -> None:
        self.overhead_seconds = 0.0
        self.total = torch.zeros(())

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        started = time.perf_counter()
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        self.total.copy_(torch.stack(torch._foreach_norm(grads, 2)).square().sum())
        self.overhead_seconds += time.perf_counter() - started


class LightningGradNorm(pl.Callback):
    """Lightning's documented recipe: log ``grad_norm(module, 2)`` before every optimizer step."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        pl_module.log_dict(grad_norm(pl_module, norm_type=2))


class GradientHistograms(pl.Callback):
    """A TensorBoard histogram of every gradient, every step (the common hand-rolled recipe)."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        writer = trainer.logger.experiment
        for name, parameter in pl_module.named_parameters():
            if parameter.grad is not None:
                writer.add_histogram(f"grad/{name}", parameter.grad, trainer.global_step)


class WandbWatch(pl.Callback):
    """``wandb.watch(model, log="all", log_freq=1)`` in an offline wandb run."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.run = None

    def on_train_start(self, trainer, pl_module) -> None:
        import wandb

        os.environ.setdefault("WANDB_MODE", "offline")
        self.run = wandb.init(project="gradwatch-bench", dir=self.directory, mode="offline",
                              reinit=True)
        wandb.watch(pl_module, log="all", log_freq=1)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


@dataclass(frozen=True)
class Config:
    """What one benchmark configuration adds to the bare run."""

    name: str
    description: str
    callbacks: Callable[[Path], list[pl.Callback]] = lambda directory: []
    trainer_options: dict = field(default_factory=dict)
    available: Callable[[], bool] = lambda: True
    #: its cost is orders of magnitude above the run-to-run noise, so a short timed window
    #: measures it well enough and keeps the whole benchmark within its time budget
    short_window: bool = False


BARE = "bare"

CONFIGS: tuple[Config, ...] = (
    Config(BARE, "no callback"),
    Config("gradwatch-defaults", "TrainingDiagnostics() (every_n_steps=50, TensorBoard)",
           lambda directory: [TrainingDiagnostics()]),
    Config("gradwatch-every-step", "TrainingDiagnostics(every_n_steps=1): every probe, "
           "every step", lambda directory: [TrainingDiagnostics(every_n_steps=1)]),
    Config("floor-grad-norm", "the floor of per-step gradient monitoring: one fused "
           "torch._foreach_norm of the gradients per step into a buffer, never read",
           lambda directory: [GradNormFloor()]),
    Config("lightning-grad-norm", "self.log_dict(grad_norm(module, 2)) in "
           "on_before_optimizer_step, logged every step",
           lambda directory: [LightningGradNorm()], short_window=True),
    Config("tb-grad-histograms", "TensorBoard add_histogram of every gradient, every step",
           lambda directory: [GradientHistograms()], short_window=True),
    Config("anomaly-mode", "Trainer(detect_anomaly=True)",
           trainer_options={"detect_anomaly": True}, short_window=True),
    Config("wandb-watch", 'wandb.watch(model, log="all", log_freq=1), offline',
           lambda directory: [WandbWatch(str(directory))],
           available=lambda: importlib.util.find_spec("wandb") is not None, short_window=True),
)


def diagnostics_of(callbacks: list[pl.Callback]) -> TrainingDiagnostics | None:
    """The TrainingDiagnostics among ``callbacks``, if any."""
    return next((c for c in callbacks if isinstance(c, TrainingDiagnostics)), None)


def self_timed_seconds(callbacks: list[pl.Callback]) -> float | None:
    """The training-thread time the timed callback among ``callbacks`` spent (gradwatch's
    monitor, or a callback with its own ``overhead_seconds``), or None if none is timed."""
    diagnostics = diagnostics_of(callbacks)
    if diagnostics is not None:
        return diagnostics.monitor.overhead_seconds
    return next((c.overhead_seconds for c in callbacks if hasattr(c, "overhead_seconds")), None)
