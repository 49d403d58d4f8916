"""Counts (not times) the host syncs TrainingDiagnostics adds, with torch.profiler.

On an accelerator a device-to-host copy or a scalar read (``.item()``, ``float(t)``,
``bool(t)``) blocks the host until the device catches up. On this CPU-only machine the same
ops are counted: gradwatch must add one copy to the host per sampled step and no scalar read
at all. Scalar reads are counted by the profiler; copies to the host are told apart from
dtype casts (both are ``aten::_to_copy``) by their ``device`` argument, which only a
dispatch mode sees. Counted from the first step on: the initialisation audit reads the
weights once before training starts, which is no step.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

from gradwatch.callbacks import TrainingDiagnostics
from gradwatch.monitor.capture.monitor import Monitor
from gradwatch.monitor.probes.record_batches import BATCH_NUMEL, SAMPLE_VALUES

from .lightning_models import lightning, regression_module, trainer

SCALAR_READS = ("aten::item", "aten::_local_scalar_dense", "aten::is_nonzero")
HOST_COPY = "copy to host"
SYNC_OPS = (*SCALAR_READS, HOST_COPY)


class CountHostCopies(TorchDispatchMode):
    """Counts ops that copy a tensor to the host (a device argument naming the CPU)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._to_copy.default and kwargs.get("device") is not None \
                and torch.device(kwargs["device"]).type == "cpu":
            self.count += 1
        return func(*args, **kwargs)


def count_sync_ops(callbacks, tmp_path, steps: int) -> Counter:
    """Sync ops from the first step's start to the end of training (the one-off
    initialisation audit before the first step is not a step, and not counted)."""
    torch.manual_seed(0)
    pl = lightning()
    window = {}

    class DuringSteps(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if not window:
                window["profiler"] = profile(activities=[ProfilerActivity.CPU])
                window["copies"] = CountHostCopies()
                window["profiler"].__enter__()
                window["copies"].__enter__()

        def on_train_end(self, trainer, module):
            window["copies"].__exit__(None, None, None)
            window["profiler"].__exit__(None, None, None)

    # first in the list: the window opens before gradwatch's hooks run and closes after
    run = trainer(callbacks=[DuringSteps(), *callbacks], root=str(tmp_path), max_steps=steps,
                  logger=False)
    run.fit(regression_module(optimizer="adam"))
    counts = Counter(e.name for e in window["profiler"].events() if e.name in SCALAR_READS)
    counts[HOST_COPY] = window["copies"].count
    return counts


def added_syncs(tmp_path, steps: int, every_n_steps: int) -> Counter:
    bare = count_sync_ops([], tmp_path / "bare", steps)
    diagnostics = TrainingDiagnostics(every_n_steps=every_n_steps, prometheus_port=0,
                                      tensorboard_dir=str(tmp_path / "tb"))
    watched = count_sync_ops([diagnostics], tmp_path / "watched", steps)
    return Counter({op: watched[op] - bare[op] for op in SYNC_OPS})


@pytest.mark.training
def test_one_transfer_per_sampled_step_and_none_otherwise(tmp_path):
    # 12 steps, every 4: steps 0, 4 and 8 are sampled, and the last (the run ends on full
    # figures)
    added = added_syncs(tmp_path / "a", steps=12, every_n_steps=4)
    assert added == Counter({HOST_COPY: 4, "aten::item": 0, "aten::_local_scalar_dense": 0,
                             "aten::is_nonzero": 0})


@pytest.mark.training
def test_unsampled_steps_add_no_sync(tmp_path):
    # only steps 0 and 11 (the last) are sampled: the 10 other steps must add nothing
    added = added_syncs(tmp_path / "b", steps=12, every_n_steps=1000)
    assert added[HOST_COPY] == 2
    assert sum(added.values()) == 2


@pytest.mark.unit
def test_a_sampled_step_of_large_outputs_reads_no_scalar():
    """Outputs above activation_sample (their moments from a sample of rows) are proved
    finite by their exact extremes, read as host memory: no scalar read, as for small ones."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 1024), nn.ReLU(), nn.Linear(1024, 1))
    x, y = torch.randn(512, 64), torch.randn(512, 1)  # hidden outputs of 2**19 values
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    monitor = Monitor(model, optimizers=[optimizer], every_n_steps=1)
    assert 512 * 1024 > max(BATCH_NUMEL, SAMPLE_VALUES)  # the sampled path
    try:
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            for step in range(3):
                with monitor.step(step):
                    loss = F.mse_loss(model(x), y)
                    monitor.observe_loss(loss)
                    loss.backward()
                    monitor.observe_gradients()
                    optimizer.step()
                    optimizer.zero_grad()
    finally:
        monitor.close()
    reads = Counter(e.name for e in profiler.events() if e.name in SCALAR_READS)
    assert reads == Counter()
