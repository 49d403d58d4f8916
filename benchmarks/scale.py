"""Scale figures of the monitor: a 1,000-layer model, /metrics rendering, long-run memory.

These use ``gradwatch.Monitor`` in a plain loop (no Lightning): they measure the monitor
itself, not a Trainer.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from prometheus_client import generate_latest
from torch import nn

import gradwatch.monitor as monitor_package
from gradwatch.monitor import Monitor, PrometheusSink

#: Sampled steps timed on the wide model (the first is excluded: it learns the depth order).
SAMPLED_STEPS_TIMED = 5
RENDERS_TIMED = 10


@dataclass
class ScaleFigures:
    layers: int
    sampled_step_seconds: float  # monitor self time of one sampled step (median)
    unsampled_step_seconds: float  # monitor self time of one other step (median)
    bare_step_seconds: float  # the training step itself, without the monitor (median)
    render_seconds: dict[int, float]  # /metrics render time (median) by max_layers cap
    render_bytes: dict[int, int]
    memory_steps: int
    memory: list[tuple[int, int, int, int]]  # (step, monitor-held bytes, all traced, RSS)


def deep_model(layers: int, width: int = 16) -> nn.Sequential:
    """``layers`` x (Linear(width) + Tanh): as many layers (and activations) as asked."""
    return nn.Sequential(*[m for _ in range(layers) for m in (nn.Linear(width, width), nn.Tanh())])


def train_steps(model: nn.Module, optimizer, monitor: Monitor | None, steps: range,
                x: torch.Tensor) -> Iterator[float]:
    """Plain training steps; yields the monitor's self time (or the step time) of each.

    A generator, so that the long memory run keeps no per-step list of its own.
    """
    for step in steps:
        before = monitor.overhead_seconds if monitor else time.perf_counter()
        if monitor:
            monitor.begin_step(step)
        loss = model(x).square().mean()
        if monitor:
            monitor.observe_loss(loss)
        loss.backward()
        if monitor:
            monitor.observe_gradients()
        optimizer.step()
        optimizer.zero_grad()
        if monitor:
            monitor.end_step()
        yield monitor.overhead_seconds - before if monitor else time.perf_counter() - before


def wide_model_figures(layers: int, device: str, every_n_steps: int = 4):
    """Monitor self time per sampled / other step, and the bare step, on a ``layers`` model."""
    torch.manual_seed(0)
    model = deep_model(layers).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(32, 16, device=device)
    bare = list(train_steps(model, optimizer, None, range(3 + SAMPLED_STEPS_TIMED), x))[3:]
    monitor = Monitor(model, every_n_steps=every_n_steps, optimizers=[optimizer])
    steps = range(every_n_steps * (SAMPLED_STEPS_TIMED + 1))
    spent = list(train_steps(model, optimizer, monitor, steps, x))
    sampled = [s for step, s in zip(steps, spent) if step % every_n_steps == 0][1:]
    other = [s for step, s in zip(steps, spent) if step % every_n_steps]
    snapshot = monitor.last_snapshot
    monitor.close()
    return (statistics.median(sampled), statistics.median(other), statistics.median(bare),
            snapshot)


def render_figures(snapshot, caps: tuple[int, ...]) -> tuple[dict[int, float], dict[int, int]]:
    """Median time to render /metrics after ``snapshot``, per ``max_layers`` cap."""
    seconds, size = {}, {}
    for cap in caps:
        sink = PrometheusSink("scale", max_layers=cap)
        sink.on_pulse(snapshot.pulses[-1])
        sink.on_snapshot(snapshot)
        times = []
        for _ in range(RENDERS_TIMED):
            start = time.perf_counter()
            text = generate_latest(sink.registry)
            times.append(time.perf_counter() - start)
        seconds[cap], size[cap] = statistics.median(times), len(text)
    return seconds, size


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_over_steps(steps: int, checkpoints: int, device: str):
    """Memory over a long run of a small model: (step, monitor-held, traced, RSS) samples.

    "Monitor-held" is what tracemalloc still traces to an allocation made with the monitor
    package on the stack (the export thread and the Prometheus sink included); RSS also
    counts the allocator's tensors, which tracemalloc does not see.
    """
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.ReLU(),
                          nn.Linear(32, 1)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(16, 8, device=device)
    sink = PrometheusSink("memory")
    package = os.path.dirname(os.path.abspath(monitor_package.__file__))
    held = [tracemalloc.Filter(True, os.path.join(package, "*"), all_frames=True)]
    samples = []
    every_n_steps = 50
    # whole sampling periods apart: Pulses are kept from one snapshot to the next
    interval = max(1, steps // checkpoints // every_n_steps) * every_n_steps

    def record(steps_done: int) -> None:
        monitor.flush()
        gc.collect()
        traced = tracemalloc.take_snapshot()
        mine = sum(s.size for s in traced.filter_traces(held).statistics("filename"))
        samples.append((steps_done, mine, tracemalloc.get_traced_memory()[0], rss_bytes()))

    tracemalloc.start(6)  # deep enough to see the monitor package on the stack
    try:
        monitor = Monitor(model, every_n_steps=every_n_steps, optimizers=[optimizer],
                          sinks=[sink])
        for step, _ in enumerate(train_steps(model, optimizer, monitor, range(steps), x)):
            if (step + 1) % interval == 0:
                record(step + 1)
        monitor.close()
    finally:
        tracemalloc.stop()
    return samples


def measure(layers: int, memory_steps: int, device: str, checkpoints: int = 10) -> ScaleFigures:
    """Every scale figure, for a ``layers``-layer model and a ``memory_steps``-step run."""
    sampled, other, bare, snapshot = wide_model_figures(layers, device)
    render_seconds, render_bytes = render_figures(snapshot, (512, layers))
    return ScaleFigures(
        layers=layers,
        sampled_step_seconds=sampled,
        unsampled_step_seconds=other,
        bare_step_seconds=bare,
        render_seconds=render_seconds,
        render_bytes=render_bytes,
        memory_steps=memory_steps,
        memory=memory_over_steps(memory_steps, checkpoints, device),
    )
