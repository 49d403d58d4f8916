"""Adam's eps-dominated counts (monitor/probes/update_stats.py) on both paths: per tensor on a
float32 CPU model, concatenated otherwise; equal to a count per tensor, NaN and Inf too."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradwatch.monitor.probes import update_stats

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("cpu_float32", [True, False], ids=["per-tensor", "bucketed"])
def test_eps_dominated_counts_equal_a_count_per_tensor(cpu_float32):
    torch.manual_seed(5)
    # a weight above probes.SMALL_NUMEL (counted by float arithmetic on a CPU), small others
    model = nn.Sequential(nn.Linear(80, 64), nn.Tanh(), nn.Linear(64, 2))
    eps = 1e-3  # large: some elements below the bound, some above
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, eps=eps)
    for _ in range(3):
        model(torch.randn(8, 80)).square().mean().backward()
        optimizer.step()
    params = list(model.parameters())

    def bound(p):  # float32, as the second moments are
        factor = torch.tensor((update_stats.EPS_FACTOR * eps) ** 2)
        return factor * (1 - torch.tensor(0.999) ** optimizer.state[p]["step"])

    for p in params[0], params[2]:  # NaN, +Inf, 0, and a value exactly at the bound
        optimizer.state[p]["exp_avg_sq"][0, :4] = torch.stack([
            torch.tensor(float("nan")), torch.tensor(float("inf")), torch.tensor(0.0),
            bound(p)])
    counts = update_stats._eps_dominated(optimizer, params, torch.device("cpu"), cpu_float32)
    expected = [float((optimizer.state[p]["exp_avg_sq"] <= bound(p)).sum()) for p in params]
    assert counts[0].tolist() == expected
    assert counts[1].tolist() == [float(p.numel()) for p in params]
    assert 0 < sum(expected) < sum(p.numel() for p in params)  # the test can tell a wrong count
