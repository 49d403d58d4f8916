"""Activation records made in batches (monitor/probes/record_batches.py): outputs of equal size
stacked and reduced together, outputs of other sizes and large ones on their own, all equal
to values computed with torch per tensor."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gradwatch.monitor import Monitor, Thresholds
from gradwatch.monitor.probes import record_batches

from .helpers import OutputRecorder, close
from .test_monitor_values import Collect

pytestmark = pytest.mark.unit


class PoisonedLinear(nn.Linear):
    """A Linear whose output holds a NaN and a -Inf (in two rows of the batch)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        y[0, 0], y[1, 1] = float("nan"), float("-inf")
        return y


def mixed_model(poisoned: bool = False) -> nn.Sequential:
    """Three outputs of one size (Linear(16) + Tanh), one of another, a ReLU in place."""
    torch.manual_seed(4)
    middle = PoisonedLinear(16, 16) if poisoned else nn.Linear(16, 16)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(),
                         middle, nn.ReLU(inplace=True), nn.Linear(16, 4), nn.Sigmoid())


def sampled_step(model: nn.Module, rows: int, dtype: torch.dtype = torch.float32,
                 activation_sample: int | None = None):
    """One sampled step of two forwards; the Snapshot and every module's recorded outputs
    (by default every output recorded exactly: ``activation_sample=None``)."""
    recorder = OutputRecorder({str(i): m for i, m in enumerate(model)})
    sink = Collect()
    monitor = Monitor(model, sinks=[sink], every_n_steps=10,
                      activation_sample=activation_sample)
    with monitor.step(0):
        for _ in range(2):
            loss = model(torch.randn(rows, 8, dtype=dtype) * 3).float().square().mean()
            monitor.observe_loss(loss)
            loss.backward()
        monitor.observe_gradients()
    monitor.close()
    recorder.remove()
    return sink.snapshots[0], recorder


def nonfinite(outputs: list[torch.Tensor]) -> list[int]:
    t = torch.cat([o.flatten() for o in outputs])
    return [int(torch.isnan(t).sum()), int(torch.isposinf(t).sum()), int(torch.isneginf(t).sum())]


# 16 rows: every output batched; 9000 rows: the 16-wide outputs (144,000 values) recorded
# alone, the 4-wide ones batched; "flushes": a batch full after a few outputs
@pytest.mark.parametrize("rows, capacity", [(16, None), (9000, None), (16, 600)],
                         ids=["batched", "large-and-batched", "flushes"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_batched_records_equal_per_tensor_values(rows, capacity, dtype, monkeypatch):
    if capacity is not None:
        monkeypatch.setattr(record_batches, "BATCH_ELEMENTS", capacity)
    model = mixed_model().to(dtype)
    snapshot, recorder = sampled_step(model, rows, dtype)
    assert snapshot.layers == ("0", "2", "4", "6")
    for layer, activation in enumerate(("1", "3", "5", "7")):
        values = torch.cat([o.flatten() for o in recorder.outputs[activation]]).double()
        assert close(snapshot.activation_mean[layer], values.mean().item(), 1e-4)
        assert close(snapshot.activation_variance[layer], values.var(unbiased=False).item(),
                     1e-4)
        assert close(snapshot.activation_max_abs[layer], values.abs().max().item())
        assert close(snapshot.activation_dead_ratio[layer], (values == 0).double().mean().item())
    tanh = torch.cat([o.flatten() for o in recorder.outputs["1"]]).double()
    expected = (tanh.abs() > Thresholds().tanh_flat).double().mean().item()
    assert expected > 0.05 and close(snapshot.activation_saturation_ratio[0], expected)
    sigmoid = torch.cat([o.flatten() for o in recorder.outputs["7"]]).double()
    flat = Thresholds().sigmoid_flat
    expected = ((sigmoid < flat) | (sigmoid > 1 - flat)).double().mean().item()
    assert close(snapshot.activation_saturation_ratio[3], expected)
    assert math.isnan(snapshot.activation_saturation_ratio[2])  # ReLU does not saturate
    assert not snapshot.nonfinite.any()


@pytest.mark.parametrize("rows", [16, 9000])
def test_a_nan_in_one_batched_output_is_counted_where_it_was_made(rows):
    """The ReLU after the poisoned layer runs in place: its -Inf becomes 0 there, so the
    layer's own count of -Inf holds only if its record kept the values of its hook."""
    snapshot, recorder = sampled_step(mixed_model(poisoned=True), rows)
    own = nonfinite(recorder.outputs["4"])
    assert own == [2, 0, 2]  # a NaN and a -Inf per forward
    assert snapshot.nonfinite[1, 2].tolist() == own
    assert snapshot.nonfinite[1, 0].tolist() == snapshot.nonfinite[1, 1].tolist() == [0, 0, 0]
    assert snapshot.nonfinite[1, 3].tolist() == nonfinite(recorder.outputs["6"])
    assert snapshot.nonfinite_origin == "4"
