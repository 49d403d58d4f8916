"""Figures decided once upstream (monitor/records/derived.py, monitor/records/regimes.py) and written as such
by the sinks: clip engagement, a depth group's pooled update ratio, the run's regime."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from prometheus_client import generate_latest
from torch import nn

from gradwatch.monitor import Monitor, PrometheusSink, Pulse
from gradwatch.monitor.judging.engine import AlertEngine
from gradwatch.monitor.sinks.forensics import ForensicsSink
from gradwatch.monitor.records.derived import CLIP_TOLERANCE, clip_engaged, group_update_ratio
from gradwatch.monitor.records.regimes import REGIMES, code, worst

from .detect_fixtures import FakeMonitor, pulse, snapshot
from .test_detect_delivery import make_alert as alert
from .helpers import close, sample, samples

pytestmark = pytest.mark.unit


def test_clip_engaged_only_when_clipping_reduced_the_norm():
    assert clip_engaged(10.0, 1.0) is True
    assert clip_engaged(10.0, 10.0) is False  # clipping configured, the norm below it
    # re-measured in float32: a rounding difference is not an engagement
    assert clip_engaged(10.0, 10.0 * (1 - CLIP_TOLERANCE / 2)) is False
    assert clip_engaged(10.0, 10.0 * (1 - 2 * CLIP_TOLERANCE)) is True
    assert clip_engaged(None, 1.0) is None and clip_engaged(10.0, None) is None
    assert clip_engaged(math.inf, 1.0, skipped_by_scaler=True) is False


def test_pulses_carry_the_decision_and_the_sinks_write_it(tmp_path):
    pulses = [Pulse(0, 0.0, 1.0, 5.0, clipped_grad_norm=1.0),  # engaged
              Pulse(1, 1.0, 1.0, 0.5, clipped_grad_norm=0.5),  # below the threshold
              Pulse(2, 2.0, 1.0, 5.0),  # clipping not tracked
              # overflowed fp16 gradients the GradScaler skipped: never applied
              Pulse(3, 3.0, 1.0, math.inf, clipped_grad_norm=math.nan, loss_scale=2.0 ** 15,
                    optimizer_stepped=False),
              Pulse(4, 4.0, 1.0, 3.0, clipped_grad_norm=1.0),  # engaged
              # skipped by the scaler too, but a NaN loss is no overflow to leave to it
              Pulse(5, 5.0, math.nan, math.inf, loss_scale=2.0 ** 14, optimizer_stepped=False)]
    assert [p.grad_clip_engaged for p in pulses] == [True, False, None, False, True, None]
    assert [p.scaler_skipped for p in pulses] == [False, False, False, True, False, True]
    assert [p.amp_skipped for p in pulses] == [False, False, False, True, False, False]
    sink = PrometheusSink("r")
    for p in pulses:
        sink.on_pulse(p)
    parsed = samples(generate_latest(sink.registry).decode())
    assert sample(parsed, "gradwatch_grad_clip_engaged_total") == 2
    assert sample(parsed, "gradwatch_amp_skipped_steps_total") == 2
    # a forensics bundle writes the same decisions the counters counted
    forensics = ForensicsSink(tmp_path)
    for p in pulses:
        forensics.on_pulse(p)
    forensics.on_alert(alert(status="firing", severity="critical"))
    (path,) = forensics.written
    bundle = json.loads(path.read_text())["pulses"]
    assert [p["grad_clip_engaged"] for p in bundle] == [True, False, None, False, True, None]
    assert [p["amp_skipped"] for p in bundle] == [False, False, False, True, False, False]


def test_group_update_ratio_pools_the_norms():
    update, weight = np.array([3.0, 4.0]), np.array([100.0, 0.5])
    assert group_update_ratio(update, weight) == pytest.approx(5.0 / math.hypot(100.0, 0.5))
    assert math.isnan(group_update_ratio(np.zeros(0), np.zeros(0)))
    assert math.isnan(group_update_ratio(np.array([math.nan, 1.0]), np.array([1.0, 1.0])))


def test_pooled_update_ratio_of_partly_frozen_depth_groups():
    """A deep model past max_layers, in 3 depth groups: one with every layer's weight frozen
    (biases train), one fully frozen but for one layer, one training everything. The pooled
    figure equals ||delta W|| / ||W|| over the updated parameters, measured with torch."""
    torch.manual_seed(0)
    model = nn.Sequential(*(nn.Linear(6, 6) for _ in range(9)))
    for i in (0, 1, 2):
        model[i].weight.requires_grad_(False)
    for i in (3, 5):
        model[i].requires_grad_(False)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    sink = PrometheusSink("r", max_layers=2, depth_groups=3)
    monitor = Monitor(model, optimizers=[optimizer], sinks=[sink], every_n_steps=1)
    with monitor.step(0):
        loss = model(torch.randn(16, 6)).square().mean()
        monitor.observe_loss(loss)
        loss.backward()
        monitor.observe_gradients()
        before = {p: p.detach().clone() for p in model.parameters() if p.requires_grad}
        optimizer.step()
    monitor.close()
    parsed = samples(generate_latest(sink.registry).decode())
    for first, last in ((0, 2), (3, 5), (6, 8)):
        moved = [p for i in range(first, last + 1) for p in model[i].parameters()
                 if p.requires_grad]
        expected = (torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(p.detach() - before[p]) for p in moved]))
            / torch.linalg.vector_norm(torch.stack(
                [torch.linalg.vector_norm(before[p]) for p in moved]))).item()
        where = {"metric": "update_ratio", "depth_group": f"{first}-{last}"}
        pooled = sample(parsed, "gradwatch_layer_group", stat="pooled", **where)
        assert close(pooled, expected), (first, pooled, expected)
    # an average of the layers' ratios is another figure (and not what the group moved)
    def layer_ratio(layer: nn.Linear) -> float:
        moved = list(layer.parameters())
        return math.sqrt(sum((p.detach() - before[p]).square().sum().item() for p in moved)
                         / sum(before[p].square().sum().item() for p in moved))

    averaged = float(np.mean([layer_ratio(model[i]) for i in (6, 7, 8)]))
    pooled = sample(parsed, "gradwatch_layer_group", stat="pooled", metric="update_ratio",
                    depth_group="6-8")
    assert not close(pooled, averaged, rel=1e-3)


def test_worst_regime_rule_and_codes():
    assert [code(r) for r in REGIMES] == [0, 1, 2, 3]
    assert worst([]) == "healthy" and worst([None, "no such regime"]) == "healthy"
    assert worst(["vanishing", None, "exploding", "vanishing"]) == "exploding"
    assert worst(["exploding", "nonfinite"]) == "nonfinite"
    with pytest.raises(ValueError):
        code("sideways")


def test_the_sink_writes_the_engines_regime():
    engine, mon, sink = AlertEngine(), FakeMonitor(), PrometheusSink("r")

    def exported() -> str:
        for method, item in mon.published:
            getattr(sink, method)(item)
        mon.published.clear()
        parsed = samples(generate_latest(sink.registry).decode())
        return next(r for r in REGIMES if sample(parsed, "gradwatch_regime", regime=r) == 1)

    for i in range(3):
        engine.on_snapshot(snapshot(i, grad_norm=[1e-9, 1e-8, 1.0, 1.0],
                                    update_ratio=[1e-9, 1e-9, 1e-3, 1e-3]), mon)
    assert exported() == engine.regime == "vanishing"
    engine.on_pulse(pulse(3, norm=1e6), mon)
    assert exported() == engine.regime == "exploding"
    for i in range(4, 30):  # calm steps: the explosion resolves, the vanishing stays
        engine.on_pulse(pulse(i), mon)
    assert "GradientExplosion" not in engine.active
    assert exported() == engine.regime == "vanishing"
