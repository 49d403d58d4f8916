"""The exposition itself: grouping for cardinality, odd label values, one-step spikes."""

from __future__ import annotations

import math
import os
import shutil
import subprocess

import numpy as np
import pytest
from prometheus_client import generate_latest

from monitor import PrometheusSink, Pulse, Snapshot

from .helpers import close, sample, samples


def snapshot(layers, grad, step=0) -> Snapshot:
    n = len(layers)
    ones = np.ones(n)
    return Snapshot(run="r", rank=0, step=step, time=0.0, layers=tuple(layers),
                    grad_norm=np.asarray(grad, float), weight_norm=2 * ones,
                    update_ratio=1e-3 * ones, activation_mean=np.arange(n, dtype=float),
                    activation_variance=ones, activation_saturation_ratio=np.full(n, np.nan),
                    activation_dead_ratio=0.5 * ones, activation_max_abs=np.arange(n, dtype=float),
                    layer_output_max_abs=ones, nonfinite=np.zeros((3, n, 3), int),
                    nonfinite_origin="", pulses=(), overhead_seconds=0.0)


def lint(text: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: the test set-up installs Debian's prometheus")
        pytest.skip("promtool not installed")
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_layers_beyond_the_cap_are_grouped_by_depth():
    sink = PrometheusSink("r", max_layers=3)
    layers = [f"block.{i}" for i in range(7)]
    grad = np.arange(1, 8, dtype=float)
    sink.on_snapshot(snapshot(layers, grad))
    parsed = samples(generate_latest(sink.registry).decode())
    groups = {"block.0..block.1": [0, 1], "block.2..block.3": [2, 3], "block.4..block.6": [4, 5, 6]}
    assert sample(parsed, "gradwatch_layers") == 3
    for depth, (name, members) in enumerate(groups.items()):
        assert sample(parsed, "gradwatch_layer_depth", layer=name) == depth
        assert close(sample(parsed, "gradwatch_grad_norm", layer=name),
                     math.sqrt(sum(grad[i] ** 2 for i in members)))
        assert close(sample(parsed, "gradwatch_weight_norm", layer=name), 2 * math.sqrt(len(members)))
        assert close(sample(parsed, "gradwatch_update_ratio", layer=name), 1e-3)
        assert close(sample(parsed, "gradwatch_activation_max_abs", layer=name), max(members))
        assert close(sample(parsed, "gradwatch_activation_mean", layer=name), np.mean(members))
    # saturation is not defined for these layers: no sample rather than a fake 0
    assert not any(k[0] == "gradwatch_activation_saturation_ratio" for k in parsed)


def test_odd_layer_names_give_valid_exposition():
    names = ['quote"d', "back\\slash", "new\nline", "ünïcødé.层", "x" * 2000]
    sink = PrometheusSink('run "odd"\n', rank=3)
    sink.on_snapshot(snapshot(names, [1.0] * len(names)))
    text = generate_latest(sink.registry).decode()
    lint(text)
    parsed = samples(text)
    for depth, name in enumerate(names):
        assert sample(parsed, "gradwatch_layer_depth", layer=name, rank="3") == depth


def test_a_one_step_spike_between_scrapes_stays_visible():
    sink = PrometheusSink("r")
    norms = [1.0] * 50 + [5e4] + [1.0] * 49  # one exploding step among 100
    for step, norm in enumerate(norms):
        sink.on_pulse(Pulse(step=step, time=float(step), loss=1.0, global_grad_norm=norm))
    parsed = samples(generate_latest(sink.registry).decode())
    assert sample(parsed, "gradwatch_global_grad_norm") == 1.0  # the latest value hides it...
    count = sample(parsed, "gradwatch_step_global_grad_norm_count")
    below = sample(parsed, "gradwatch_step_global_grad_norm_bucket", le="10000.0")
    assert count - below == 1  # ...the histogram does not
    assert count == 100


def test_nonfinite_steps_and_loss_counted_every_step():
    sink = PrometheusSink("r")
    values = [(1.0, 1.0), (math.nan, 2.0), (math.inf, math.inf), (1.0, None), (None, 1.0)]
    for step, (loss, norm) in enumerate(values):
        sink.on_pulse(Pulse(step=step, time=0.0, loss=loss, global_grad_norm=norm))
    parsed = samples(generate_latest(sink.registry).decode())
    assert sample(parsed, "gradwatch_nonfinite_steps_total", source="loss") == 2
    assert sample(parsed, "gradwatch_nonfinite_steps_total", source="gradient") == 1
    assert sample(parsed, "gradwatch_nonfinite_total", source="loss", kind="nan") == 1
    assert sample(parsed, "gradwatch_nonfinite_total", source="loss", kind="posinf") == 1
