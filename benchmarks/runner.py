"""One benchmark run: a fresh model trained with one configuration, timed or profiled.

Only the steady-state window is measured: ``warmup`` steps run first (allocator, autograd
and the first sampled step warm up; Trainer setup is before them), then ``steps`` steps are
timed from the start of one batch to the start of the batch after the last, so the window
holds exactly ``steps`` whole steps, callbacks included, and nothing of the tear-down.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

from .configs import Config, diagnostics_of, self_timed_seconds
from .models import ModelSpec, ReferenceModule

#: CUDA runtime calls that block the host until the device is done (torch.profiler names).
CUDA_SYNCHRONIZATIONS = frozenset({"cudaDeviceSynchronize", "cudaStreamSynchronize",
                                   "cudaEventSynchronize"})

#: Every scalar read (``.item()``, ``float(t)``, ``bool(t)`` via ``aten::is_nonzero``) ends in
#: this op, so counting it alone counts each read once.
SCALAR_READ = torch.ops.aten._local_scalar_dense.default


class CountHostSyncs(TorchDispatchMode):
    """Counts the ops that make the host wait for the device: scalar reads and host copies.

    Both a dtype cast and a device copy are ``aten::_to_copy``; only the dispatch arguments
    tell them apart (the same method as tests/test_host_syncs.py). On a CPU nothing waits,
    but the same ops are what would block on an accelerator, so they are counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is SCALAR_READ or (
                func is torch.ops.aten._to_copy.default and kwargs.get("device") is not None
                and torch.device(kwargs["device"]).type == "cpu"):
            self.count += 1
        return func(*args, **kwargs)


@dataclass
class Measured:
    """What one run measured over its steady-state window."""

    step_seconds: float  # mean wall time of one step
    monitor_share: float | None = None  # gradwatch's self-timed share of the step time
    aten_ops: float | None = None  # aten ops recorded by the profiler, per step
    syncs_sampled: float | None = None  # host syncs per gradwatch-sampled step
    syncs_other: float | None = None  # host syncs per other step (every step without gradwatch)
    #: from the CUDA profiler, per step of the window (None off a GPU): device-to-host
    #: copies, and runtime calls that make the host wait (CUDA_SYNCHRONIZATIONS)
    device_to_host: float | None = None
    synchronizations: float | None = None


class SteadyStateWindow(pl.Callback):
    """Times (or profiles) batches ``warmup`` .. ``warmup + steps - 1``.

    Put it FIRST in the callback list: its batch-start hook then runs before any other
    callback's, so the window starts before the first timed step's work and ends before
    the step after the last one begins. Profiled, it also counts host syncs step by step,
    telling gradwatch's sampled steps from the others.
    """

    def __init__(self, warmup: int, steps: int, profiled: bool) -> None:
        self.warmup, self.steps, self.profiled = warmup, steps, profiled
        self.started = self.elapsed = None
        self.overhead_start = self.overhead = None
        self.profiler = self.syncs = None
        self.ops = 0
        self.cuda_events: Counter[str] | None = None
        self.syncs_at_step_start = 0
        self.step_was_sampled = False
        self.counted = {True: [0, 0], False: [0, 0]}  # sampled? -> [steps, syncs]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self.warmup < batch_idx <= self.warmup + self.steps and self.profiled:
            self._count_step()
        if batch_idx == self.warmup:
            self._synchronize(pl_module)
            self.overhead_start = self._monitor_seconds(trainer)
            if self.profiled:
                activities = [ProfilerActivity.CPU]
                if pl_module.device.type == "cuda":
                    activities.append(ProfilerActivity.CUDA)
                self.profiler = profile(activities=activities)
                self.profiler.start()
                self.syncs = CountHostSyncs().__enter__()
            self.started = time.perf_counter()
        elif batch_idx == self.warmup + self.steps:
            self._synchronize(pl_module)
            self.elapsed = time.perf_counter() - self.started
            if self.overhead_start is not None:
                self.overhead = self._monitor_seconds(trainer) - self.overhead_start
            if self.profiled:
                self.syncs.__exit__(None, None, None)
                self.profiler.stop()
                events = self.profiler.events()
                self.ops = sum(1 for e in events if e.name.startswith("aten::"))
                if pl_module.device.type == "cuda":
                    self.cuda_events = Counter(
                        "dtoh" if "Memcpy DtoH" in e.name else "sync" for e in events
                        if "Memcpy DtoH" in e.name or e.name in CUDA_SYNCHRONIZATIONS)
        if self.profiled and self.warmup <= batch_idx < self.warmup + self.steps:
            self.syncs_at_step_start = self.syncs.count
            diagnostics = diagnostics_of(trainer.callbacks)
            self.step_was_sampled = diagnostics is not None and \
                diagnostics.monitor.is_sampled(trainer.global_step)

    def _count_step(self) -> None:
        tally = self.counted[self.step_was_sampled]
        tally[0] += 1
        tally[1] += self.syncs.count - self.syncs_at_step_start

    @staticmethod
    def _synchronize(pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()

    @staticmethod
    def _monitor_seconds(trainer) -> float | None:
        return self_timed_seconds(trainer.callbacks)

    def measured(self) -> Measured:
        if self.elapsed is None:
            raise RuntimeError("the run ended before its steady-state window did")
        result = Measured(self.elapsed / self.steps)
        if self.overhead is not None:
            result.monitor_share = self.overhead / self.elapsed
        if self.profiled:
            result.aten_ops = self.ops / self.steps
            (sampled, sampled_syncs), (other, other_syncs) = self.counted[True], self.counted[False]
            result.syncs_sampled = sampled_syncs / sampled if sampled else None
            result.syncs_other = other_syncs / other if other else None
            if self.cuda_events is not None:
                result.device_to_host = self.cuda_events["dtoh"] / self.steps
                result.synchronizations = self.cuda_events["sync"] / self.steps
        return result


def run(spec: ModelSpec, config: Config, *, warmup: int, steps: int, device: str = "cpu",
        profiled: bool = False, seed: int = 0, compile_backend: str | None = None) -> Measured:
    """Train a fresh ``spec`` model (same seed every time) with ``config``; measure the
    window. ``compile_backend``: the network runs ``torch.compile``d with that backend."""
    window = SteadyStateWindow(warmup, steps, profiled)
    with tempfile.TemporaryDirectory(prefix="gradwatch-bench-") as directory:
        module = ReferenceModule(spec, warmup + steps + 1, seed)
        if compile_backend is not None:
            module.net = torch.compile(module.net, backend=compile_backend)
        trainer = pl.Trainer(
            callbacks=[window, *config.callbacks(Path(directory))],
            logger=TensorBoardLogger(directory, name="", version=""),
            max_steps=warmup + steps + 1,
            log_every_n_steps=1,
            accelerator="gpu" if device == "cuda" else "cpu",
            devices=1,
            precision="bf16-mixed" if device == "cuda" else "32-true",
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            default_root_dir=directory,
            **config.trainer_options,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # data-loader workers, anomaly mode: known, noisy
            trainer.fit(module)
    return window.measured()
