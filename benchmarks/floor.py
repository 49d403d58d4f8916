"""The floor under "every probe on every step": one read of the tensors the statistics cover.

Per-layer statistics must at least read every activation the monitor traces, every
gradient and every weight once (the update ratio also copies the weights). On a CPU that
read alone is a fixed share of the step, whatever the implementation; the statistics need
several such passes (norms, moments, extrema, non-finite counts).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from gradwatch.monitor import Monitor
from gradwatch.monitor.probes.layers import ACTIVATION_MODULES
from gradwatch.monitor.probes.tensor_stats import floating_tensors

from .models import ModelSpec, ReferenceModule

REPEATS = 10


@dataclass
class Floor:
    model: str
    step_seconds: float  # bare training step (median)
    read_seconds: float  # one fused read (norm) of activations, gradients and weights
    sampled_seconds: float  # the monitor's self time on one sampled step (median)
    elements: int  # values read by one pass


def median_seconds(function, repeats: int = REPEATS) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(spec: ModelSpec) -> Floor:
    module = ReferenceModule(spec, 1)
    optimizer = module.configure_optimizers()
    batch = module.batches[0]

    def step() -> None:
        module.training_step(batch, 0).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)  # keep the gradients for the read below

    step_seconds = median_seconds(step)
    # the outputs a sampled step reads: of the layers and of the activation modules
    traced = [m for m in module.modules()
              if any(True for _ in m.parameters(recurse=False))
              or isinstance(m, ACTIVATION_MODULES)]
    outputs: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda m, a, out: outputs.extend(floating_tensors(out)))
               for m in traced]
    module.training_step(batch, 0).backward()
    for handle in handles:
        handle.remove()
    tensors = outputs + [p.grad for p in module.parameters()] + \
        [p.detach() for p in module.parameters()]
    read_seconds = median_seconds(lambda: torch._foreach_norm(tensors))
    monitor = Monitor(module, every_n_steps=1, optimizers=[optimizer])
    count = 0

    def monitored_step() -> None:
        nonlocal count
        with monitor.step(count):
            loss = module.training_step(batch, 0)
            monitor.observe_loss(loss)
            loss.backward()
            monitor.observe_gradients(optimizer)
            optimizer.step()
            optimizer.zero_grad()
        count += 1

    spent = []
    for _ in range(REPEATS + 1):
        before = monitor.overhead_seconds
        monitored_step()
        spent.append(monitor.overhead_seconds - before)
    monitor.close()
    return Floor(spec.name, step_seconds, read_seconds, statistics.median(spent[1:]),
                 sum(t.numel() for t in tensors))
