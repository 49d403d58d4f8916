"""Shared helpers of the detection tests: small models, a plain Monitor training loop,
synthetic Pulses/Snapshots, and a real Alertmanager plus a webhook receiver."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from monitor.alerts import AlertEngine
from monitor.monitor import Monitor
from monitor.snapshot import NONFINITE_KINDS, NONFINITE_SOURCES, Pulse, Snapshot


# ------------------------------------------------------------------ synthetic records

def pulse(step: int, loss: float = 1.0, norm: float = 1.0, **fields) -> Pulse:
    return Pulse(step=step, time=1000.0 + step, loss=loss, global_grad_norm=norm, **fields)


def snapshot(step: int, layers=("l0", "l1", "l2", "l3"), *, grad_norm=None, update_ratio=None,
             saturation=None, dead=None, variance=None, output_max_abs=None,
             nonfinite=None, origin: str = "", pulses=None) -> Snapshot:
    """A Snapshot with healthy defaults; every per-layer array can be overridden."""
    n = len(layers)

    def arr(values, default):
        return np.asarray(values if values is not None else [default] * n, dtype=np.float64)

    return Snapshot(
        run="test", rank=0, step=step, time=1000.0 + step, layers=tuple(layers),
        grad_norm=arr(grad_norm, 1.0), weight_norm=arr(None, 10.0),
        update_ratio=arr(update_ratio, 1e-3), activation_mean=arr(None, 0.0),
        activation_variance=arr(variance, 1.0),
        activation_saturation_ratio=arr(saturation, math.nan),
        activation_dead_ratio=arr(dead, 0.0), activation_max_abs=arr(None, 3.0),
        layer_output_max_abs=arr(output_max_abs, 3.0),
        nonfinite=(np.asarray(nonfinite, dtype=np.int64) if nonfinite is not None
                   else np.zeros((len(NONFINITE_SOURCES), n, len(NONFINITE_KINDS)), np.int64)),
        nonfinite_origin=origin,
        pulses=tuple(pulses) if pulses is not None else (pulse(step),),
        overhead_seconds=0.0)


class FakeMonitor:
    """The Monitor surface an AlertEngine uses, recording escalations and publications."""

    def __init__(self, thresholds=None) -> None:
        self.run_name, self.rank, self.thresholds = "test", 0, thresholds
        self.escalations: list[int] = []
        self.published: list[tuple[str, object]] = []

    def escalate(self, steps: int, trace_all_modules: bool = True) -> None:
        self.escalations.append(steps)

    def publish(self, method: str, item: object) -> None:
        self.published.append((method, item))


# ------------------------------------------------------------------ real training

def mlp(widths: list[int], activation: Callable[[], nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def train(model: nn.Module, batches: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
          steps: int, *, lr: float = 0.01, optimizer: str = "sgd", every_n_steps: int = 10,
          loss_fn: Callable = nn.functional.mse_loss, engine: AlertEngine | None = None,
          audit: bool = True, stop_at_nan: bool = True, sinks=()):
    """Train with the plain Monitor loop; returns (engine, first non-finite loss step)."""
    engine = engine or AlertEngine()
    make = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[optimizer]
    opt = make(model.parameters(), lr=lr)
    monitor = Monitor(model, optimizers=[opt], every_n_steps=every_n_steps,
                      observers=[engine], sinks=list(sinks), run_name="train")
    if audit:
        engine.audit(model, monitor)
    first_nan = None
    try:
        for step in range(steps):
            x, y = batches(step)
            with monitor.step(step):
                loss = loss_fn(model(x), y)
                monitor.observe_loss(loss)
                loss.backward()
                monitor.observe_gradients()
                opt.step()
                opt.zero_grad()
            if first_nan is None and not math.isfinite(loss.item()):
                first_nan = step
            if first_nan is not None and stop_at_nan and step >= first_nan + 3:
                break
        engine.flush(monitor)
    finally:
        monitor.close()
    return engine, first_nan
