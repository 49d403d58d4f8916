"""Snapshot packing from host arrays, in numpy only: no training, no torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from gradwatch.monitor.records.columns import ActivationField
from gradwatch.monitor.records.packing import SampleFacts, pack_snapshot
from gradwatch.monitor.records.snapshot import Pulse

pytestmark = pytest.mark.unit

F = len(ActivationField)


def record(count, mean, m2, low, high, zeros, saturated, nan=0.0, posinf=0.0, neginf=0.0):
    return [count, mean, m2, low, high, zeros, saturated, nan, posinf, neginf]


def host_arrays() -> dict[str, np.ndarray]:
    """Three layers (registration order a, b, c)."""
    return {
        "layer_grad_norm": np.array([1.0, 2.0, 3.0]),
        "layer_weight_norm": np.array([10.0, 20.0, 30.0]),
        "layer_update_norm": np.array([0.1, 0.4, 0.0]),
        "layer_updated_weight_norm": np.array([10.0, 20.0, 0.0]),
        "layer_grad_nonfinite": np.array([[0, 0, 0], [2, 1, 0], [0, 0, 0]], dtype=float),
        "layer_weight_nonfinite": np.array([[0, 0, 0], [0, 0, 0], [0, 0, 5]], dtype=float),
        "layer_output": np.array([record(4, 0.5, 8.0, -3.0, 2.0, 0, 0),
                                  record(8, 1.0, 4.0, -1.0, 6.0, 2, 0, nan=3.0),
                                  record(2, 0.0, 2.0, -1.0, 1.0, 0, 0)]),
        "activation": np.array([record(4, 0.25, 1.0, 0.0, 1.0, 1, 2),
                                record(8, 0.5, 2.0, 0.0, 4.0, 6, 0),
                                [np.nan] * F]),
        "record_nonfinite": np.array([0.0, 0.0, 3.0, 0.0]),
        "layer_update_grad_cosine": np.array([0.9, 0.5, 0.7]),
        "layer_adam_eps_dominated_ratio": np.array([0.0, 0.25, 1.0]),
    }


def facts(**changes) -> SampleFacts:
    base = dict(
        run="r", rank=1, step=7, time=123.0, layers=("c", "a", "b"), depth_order=(2, 0, 1),
        has_grad=np.array([True, True, False]), updated=np.array([True, True, False]),
        has_activation=np.array([True, True, False]), saturates=np.array([True, False, False]),
        record_modules=("a", "act_a", "b", "act_b"),
        pulses=(Pulse(step=7, time=123.0, loss=0.5, global_grad_norm=3.7),),
        overhead_seconds=0.25)
    base.update(changes)
    return SampleFacts(**base)


def test_every_field_is_packed_by_name_in_depth_order():
    snapshot = pack_snapshot(host_arrays(), facts(), {"output_logit_max": 4.5})
    nan = np.nan
    assert (snapshot.run, snapshot.rank, snapshot.step, snapshot.time) == ("r", 1, 7, 123.0)
    assert snapshot.layers == ("c", "a", "b")
    # depth order c, a, b; c has no gradient, is not updated, has no activation module
    np.testing.assert_array_equal(snapshot.grad_norm, [nan, 1.0, 2.0])
    np.testing.assert_array_equal(snapshot.weight_norm, [30.0, 10.0, 20.0])
    np.testing.assert_allclose(snapshot.update_ratio, [nan, 0.01, 0.02])
    np.testing.assert_array_equal(snapshot.update_norm, [nan, 0.1, 0.4])
    np.testing.assert_array_equal(snapshot.updated_weight_norm, [nan, 10.0, 20.0])
    # a and b: their activation module's record; c: its own output
    np.testing.assert_array_equal(snapshot.activation_mean, [0.0, 0.25, 0.5])
    np.testing.assert_array_equal(snapshot.activation_variance, [1.0, 0.25, 0.25])
    np.testing.assert_array_equal(snapshot.activation_dead_ratio, [0.0, 0.25, 0.75])
    np.testing.assert_array_equal(snapshot.activation_saturation_ratio, [nan, 0.5, nan])
    np.testing.assert_array_equal(snapshot.activation_max_abs, [1.0, 1.0, 4.0])
    np.testing.assert_array_equal(snapshot.layer_output_max_abs, [1.0, 3.0, 6.0])
    # [source (gradient, activation, parameter), layer, kind]
    assert snapshot.nonfinite.dtype == np.int64
    assert snapshot.nonfinite[:, 0].tolist() == [[0, 0, 0], [0, 0, 0], [0, 0, 5]]
    assert snapshot.nonfinite[:, 2].tolist() == [[2, 1, 0], [3, 0, 0], [0, 0, 0]]
    assert snapshot.nonfinite_origin == "b"
    np.testing.assert_array_equal(snapshot.update_grad_cosine, [nan, 0.9, 0.5])
    np.testing.assert_array_equal(snapshot.adam_eps_dominated_ratio, [nan, 0.0, 0.25])
    assert snapshot.pulse.global_grad_norm == 3.7 and snapshot.overhead_seconds == 0.25
    assert snapshot.output_logit_max == 4.5
    assert snapshot.world is None


def test_the_world_view_has_the_world_activations_and_rank_minus_one():
    host = host_arrays()
    host["world_layer_output"] = host["layer_output"] * [2, 1, 1, 1, 1, 2, 2, 1, 1, 1]
    host["world_activation"] = host["activation"].copy()
    host["world_activation"][0, ActivationField.ZEROS] = 4.0  # all 4 values zero
    snapshot = pack_snapshot(host, facts())
    world = snapshot.world
    assert world.rank == -1 and world.pulses == snapshot.pulses
    np.testing.assert_array_equal(world.activation_dead_ratio, [0.0, 1.0, 0.75])
    assert world.activation_variance[0] == 0.5  # c: its own output, M2 2.0 over 4 values
    np.testing.assert_array_equal(world.grad_norm, snapshot.grad_norm)
    assert world.nonfinite[1, 2].tolist() == [3, 0, 0]
    assert world.update_grad_cosine.size == 0


def test_no_layers_no_records():
    empty = {name: np.zeros((0, *value.shape[1:])) for name, value in host_arrays().items()}
    snapshot = pack_snapshot(empty, facts(layers=(), depth_order=(), has_grad=np.zeros(0, bool),
                                          updated=np.zeros(0, bool),
                                          has_activation=np.zeros(0, bool),
                                          saturates=np.zeros(0, bool), record_modules=()))
    assert snapshot.grad_norm.shape == (0,) and snapshot.nonfinite.shape == (3, 0, 3)
    assert snapshot.nonfinite_origin == ""


def test_packing_imports_no_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import gradwatch.monitor.records.packing, gradwatch.monitor.records.columns\n"
            "assert not any(m == 'torch' or m.startswith('torch.') for m in sys.modules "
            "if sys.modules[m] is not None)\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
