"""Soak, fast CI variant: a thousand steps with every probe on every step; the monitor's
memory, threads, file handles and exported series stay flat. (The 20,000-step run is in
benchmarks/: `make bench`.)"""

from __future__ import annotations

import gc
import os
import threading

import pytest
import torch
from prometheus_client import generate_latest
from torch import nn

from gradwatch.monitor import AlertEngine, Monitor, PrometheusSink, Pulse, Snapshot, TensorBoardSink

pytestmark = pytest.mark.training


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def resources(sink: PrometheusSink) -> dict[str, int]:
    gc.collect()
    objects = gc.get_objects()
    return {
        "rss": rss_bytes(),
        "objects": len(objects),
        "records": sum(isinstance(o, (Pulse, Snapshot)) for o in objects),
        "threads": threading.active_count(),
        "fds": len(os.listdir("/proc/self/fd")),
        "series": generate_latest(sink.registry).count(b"\n"),
    }


WARM, STEPS = 300, 1000


def test_resources_stay_flat_over_a_thousand_fully_sampled_steps(tmp_path, one_torch_thread):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(),
                          nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    prometheus = PrometheusSink("soak")
    monitor = Monitor(model, optimizers=[optimizer], every_n_steps=1, observers=[AlertEngine()],
                      sinks=[prometheus, TensorBoardSink(log_dir=str(tmp_path))])
    x, y = torch.randn(32, 8), torch.randn(32, 1)
    checkpoints = {}
    try:
        for step in range(STEPS):
            with monitor.step(step):
                loss = ((model(x) - y) ** 2).mean()
                monitor.observe_loss(loss)
                loss.backward()
                monitor.observe_gradients()
                optimizer.step()
                optimizer.zero_grad()
            if step in (WARM - 1, STEPS - 1):
                monitor.flush()
                checkpoints[step] = resources(prometheus)
    finally:
        monitor.close()
    early, late = checkpoints[WARM - 1], checkpoints[STEPS - 1]
    assert late["threads"] == early["threads"]
    assert late["fds"] == early["fds"]
    assert late["series"] == early["series"]
    # STEPS - WARM more fully sampled steps, yet no more live records or objects: a leak of
    # one Pulse or Snapshot per step would show as 1,000+
    assert late["records"] <= early["records"], (early, late)
    assert late["objects"] - early["objects"] < 200, (early, late)
    assert late["rss"] - early["rss"] < 8 * 2 ** 20, (early, late)
