"""The Monitor's statistics equal values computed independently, in a plain PyTorch loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from gradwatch.monitor import Monitor, Thresholds

from .helpers import OutputRecorder, close, layer_grad_norm, layer_weight_norm, tanh_mlp

pytestmark = pytest.mark.unit


class Collect:
    """An in-memory sink."""

    def __init__(self) -> None:
        self.pulses, self.snapshots = [], []

    def on_pulse(self, pulse):
        self.pulses.append(pulse)

    def on_snapshot(self, snapshot):
        self.snapshots.append(snapshot)

    def close(self):
        pass


def run_plain_loop(model, steps, every_n_steps, lr=0.05, micro_batches=1, make_batch=None,
                   **monitor_kwargs):
    """Train with a Monitor; return the sink and the reference figures of sampled steps."""
    torch.manual_seed(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    sink = Collect()
    monitor = Monitor(model, optimizers=[optimizer], sinks=[sink], every_n_steps=every_n_steps,
                      **monitor_kwargs)
    make_batch = make_batch or (lambda: (torch.randn(32, 8), torch.randn(32, 1)))
    reference = {}
    for step in range(steps):
        with monitor.step(step):
            losses = []
            for _ in range(micro_batches):
                x, y = make_batch()
                loss = ((model(x) - y) ** 2).mean() / micro_batches
                monitor.observe_loss(loss)
                loss.backward()
                losses.append(loss.item())
            grads = {n: m for n, m in model.named_modules() if m._parameters}
            reference[step] = {
                "loss": sum(losses),
                "grad": {n: layer_grad_norm(m) for n, m in grads.items()
                         if any(p.grad is not None for p in m.parameters(recurse=False))},
                "weight": {n: layer_weight_norm(m) for n, m in grads.items()},
                "global": torch.linalg.vector_norm(torch.stack(
                    [p.grad.norm() for p in model.parameters() if p.grad is not None])).item(),
                "before": {n: [p.detach().clone() for p in m.parameters(recurse=False)]
                           for n, m in grads.items()},
            }
            monitor.observe_gradients()
            optimizer.step()
            optimizer.zero_grad()
            reference[step]["delta"] = {
                n: math.sqrt(sum((p.detach() - b).square().sum().item()
                                 for p, b in zip(m.parameters(recurse=False), reference[step]["before"][n])))
                for n, m in grads.items()
            }
    monitor.close()
    return sink, reference


def test_per_layer_statistics_match_independent_values():
    torch.manual_seed(1)
    model = tanh_mlp()
    sink, ref = run_plain_loop(model, steps=7, every_n_steps=3)
    assert [s.step for s in sink.snapshots] == [0, 3, 6]
    assert [p.step for p in sink.pulses] == list(range(7))
    for pulse in sink.pulses:
        assert close(pulse.loss, ref[pulse.step]["loss"])
        assert close(pulse.global_grad_norm, ref[pulse.step]["global"])
        assert pulse.learning_rates == ((0.05,),)
        assert pulse.clipped_grad_norm is None and pulse.loss_scale is None
    for snapshot in sink.snapshots:
        r = ref[snapshot.step]
        assert snapshot.layers == ("0", "2", "4")
        for i, layer in enumerate(snapshot.layers):
            assert close(snapshot.grad_norm[i], r["grad"][layer])
            assert close(snapshot.weight_norm[i], r["weight"][layer])
            assert close(snapshot.update_ratio[i], r["delta"][layer] / r["weight"][layer], 1e-3)
        assert snapshot.pulse.step == snapshot.step
        assert not snapshot.nonfinite.any()


# 16 rows: outputs of a few hundred values; 1024 rows: 16,384 values per hidden output, which
# take the large-tensor path (centred dot product, counts by float arithmetic on a CPU)
@pytest.mark.parametrize("rows", [16, 1024])
def test_activation_statistics_match_recorded_outputs(rows):
    torch.manual_seed(2)
    model = tanh_mlp()
    recorder = OutputRecorder({"tanh": model[1], "relu": model[3], "out": model[4]})
    sink = Collect()
    monitor = Monitor(model, sinks=[sink], every_n_steps=100)
    with monitor.step(0):
        for _ in range(2):  # two micro-batches: statistics over both
            x = torch.randn(rows, 8) * 4
            loss = model(x).square().mean()
            monitor.observe_loss(loss)
            loss.backward()
        monitor.observe_gradients()
    monitor.close()
    recorder.remove()
    snapshot = sink.snapshots[0]
    for i, name in enumerate(("tanh", "relu", "out")):
        mean, variance = recorder.moments(name)
        assert close(snapshot.activation_mean[i], mean, 1e-4)
        assert close(snapshot.activation_variance[i], variance, 1e-4)
        values = torch.cat(recorder.outputs[name]).flatten()
        assert close(snapshot.activation_max_abs[i], values.abs().max().item())
        assert close(snapshot.activation_dead_ratio[i], (values == 0).double().mean().item())
    tanh_values = torch.cat(recorder.outputs["tanh"]).flatten()
    expected = (tanh_values.abs() > Thresholds().tanh_flat).double().mean().item()
    assert expected > 0.1  # the inputs were scaled up so that the test means something
    assert close(snapshot.activation_saturation_ratio[0], expected)
    assert math.isnan(snapshot.activation_saturation_ratio[1])  # ReLU does not saturate
    assert snapshot.activation_dead_ratio[1] > 0.2
    assert close(snapshot.pulse.loss, sum(o.square().mean().item() for o in recorder.outputs["out"]))


def test_sigmoid_saturation_ratio():
    model = nn.Sequential(nn.Linear(4, 32), nn.Sigmoid(), nn.Linear(32, 1))
    recorder = OutputRecorder({"sigmoid": model[1]})
    sink = Collect()
    monitor = Monitor(model, sinks=[sink])
    with monitor.step(0):
        loss = model(torch.randn(64, 4) * 10).sum()
        monitor.observe_loss(loss)
        loss.backward()
        monitor.observe_gradients()
    monitor.close()
    values = torch.cat(recorder.outputs["sigmoid"]).flatten()
    flat = Thresholds().sigmoid_flat
    expected = ((values < flat) | (values > 1 - flat)).double().mean().item()
    assert expected > 0.2
    assert close(sink.snapshots[0].activation_saturation_ratio[0], expected)


class Awkward(nn.Module):
    """Frozen, unused and shared parameters, tuple/dict/None outputs, an integer buffer."""

    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(8, 8)

        def forward(self, x):
            y = self.linear(x)
            return y, 2 * y

    class Dict(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(8))

        def forward(self, x):
            return {"out": x * self.scale, "mask": x > 0}

    class Side(nn.Module):
        def __init__(self):
            super().__init__()
            self.bias = nn.Parameter(torch.zeros(8))
            self.seen = None

        def forward(self, x):
            self.seen = x + self.bias
            return None

    def __init__(self):
        super().__init__()
        self.frozen = nn.Linear(8, 8)
        self.frozen.requires_grad_(False)
        self.pair = self.Pair()
        self.dict = self.Dict()
        self.side = self.Side()
        self.unused = nn.Linear(8, 8)
        self.tied = nn.Linear(8, 8, bias=False)
        self.tied.weight = self.pair.linear.weight  # shared with pair.linear
        self.register_buffer("calls", torch.zeros(1, dtype=torch.long))

    def forward(self, x):
        self.calls += 1
        a, b = self.pair(self.frozen(x))
        c = self.dict(a + b)["out"]
        self.side(c)
        return self.tied(c + self.side.seen).sum(dim=1, keepdim=True)


def test_awkward_model_values():
    torch.manual_seed(3)
    model = Awkward()
    sink, ref = run_plain_loop(model, steps=2, every_n_steps=1)
    names = sink.snapshots[0].layers
    # depth order: forward call order, uncalled layers last
    assert names == ("frozen", "pair.linear", "dict", "side", "tied", "unused")
    for snapshot in sink.snapshots:
        r = ref[snapshot.step]
        by_name = dict(zip(names, range(len(names))))
        assert math.isnan(snapshot.grad_norm[by_name["frozen"]])
        assert math.isnan(snapshot.update_ratio[by_name["frozen"]])
        assert close(snapshot.weight_norm[by_name["frozen"]], r["weight"]["frozen"])
        assert math.isnan(snapshot.grad_norm[by_name["unused"]])
        assert math.isnan(snapshot.activation_mean[by_name["unused"]])
        # the shared weight counts fully in both layers that own it, once in the global norm
        shared = model.pair.linear.weight
        assert close(snapshot.grad_norm[by_name["tied"]], r["grad"]["tied"])
        assert close(snapshot.grad_norm[by_name["pair.linear"]], r["grad"]["pair.linear"])
        assert close(snapshot.pulse.global_grad_norm, r["global"])
        assert shared is model.tied.weight
        assert math.isnan(snapshot.activation_mean[by_name["side"]])  # returned None
        assert np.isfinite(snapshot.activation_mean[by_name["dict"]])  # dict output
        for layer in ("pair.linear", "dict", "tied"):
            assert close(snapshot.grad_norm[by_name[layer]], r["grad"][layer])
    assert int(model.calls) == 2  # the integer buffer was left alone


def test_module_returning_tuple_is_measured_over_all_its_tensors():
    class TupleLayer(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(4, 4))

        def forward(self, x):
            y = x @ self.weight
            return y, y * 3, None

    model = TupleLayer()
    sink = Collect()
    monitor = Monitor(model, sinks=[sink])
    x = torch.randn(10, 4)
    with monitor.step(0):
        y, z, _ = model(x)
        loss = y.sum() + z.sum()
        monitor.observe_loss(loss)
        loss.backward()
        monitor.observe_gradients()
    monitor.close()
    values = torch.cat([y.flatten(), z.flatten()]).double().detach()
    snapshot = sink.snapshots[0]
    assert close(snapshot.activation_mean[0], values.mean().item())
    assert close(snapshot.activation_variance[0], values.var(unbiased=False).item())


def test_model_without_parameters_does_not_crash():
    model = nn.Sequential(nn.ReLU(), nn.Tanh())
    sink = Collect()
    monitor = Monitor(model, sinks=[sink], every_n_steps=2)
    for step in range(3):
        with monitor.step(step):
            x = torch.randn(4, 3, requires_grad=True)
            loss = model(x).sum()
            monitor.observe_loss(loss)
            loss.backward()
            monitor.observe_gradients()
    monitor.close()
    assert [s.layers for s in sink.snapshots] == [(), ()]
    assert [p.global_grad_norm for p in sink.pulses] == [None, None, None]
    assert [p.loss is not None for p in sink.pulses] == [True, True, True]


def test_nonfinite_counts_by_source_and_kind():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    with torch.no_grad():
        model[0].weight[0, 0] = float("inf")
        model[0].weight[1, 1] = float("-inf")
        model[0].bias[2] = float("nan")
    sink = Collect()
    monitor = Monitor(model, sinks=[sink])
    out_of_first = []
    model[0].register_forward_hook(lambda m, a, o: out_of_first.append(o.detach()))
    with monitor.step(0):
        loss = model(torch.ones(2, 4)).sum()
        monitor.observe_loss(loss)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        monitor.observe_gradients()
    monitor.close()
    snapshot = sink.snapshots[0]
    assert snapshot.nonfinite_origin == "0"
    params = list(model.parameters())

    def counts(tensors):
        t = torch.cat([x.flatten() for x in tensors])
        return [int(torch.isnan(t).sum()), int(torch.isposinf(t).sum()), int(torch.isneginf(t).sum())]

    assert snapshot.nonfinite[2, 0].tolist() == counts(params[:2]) == [1, 1, 1]
    assert snapshot.nonfinite[0, 0].tolist() == counts(grads[:2])
    assert snapshot.nonfinite[0, 1].tolist() == counts(grads[2:])
    assert snapshot.nonfinite[1, 0].tolist() == counts(out_of_first)
    assert math.isnan(snapshot.pulse.loss)
    assert not math.isfinite(snapshot.pulse.global_grad_norm)


def test_nonfinite_counts_of_large_tensors_are_exact():
    """Tensors above probes.SMALL_NUMEL: on a CPU their NaN/Inf are counted only where an
    extreme or a norm shows one, so a count missed there would be a silent zero."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 1))
    recorder = OutputRecorder({"first": model[0]})
    sink = Collect()
    monitor = Monitor(model, sinks=[sink])
    x = torch.randn(256, 128)
    x[0, 0], x[1, 1], x[2, 2] = float("nan"), float("inf"), float("-inf")
    with monitor.step(0):
        loss = model(x).sum()
        monitor.observe_loss(loss)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        monitor.observe_gradients()
    monitor.close()
    recorder.remove()
    snapshot = sink.snapshots[0]

    def counts(tensors):
        t = torch.cat([x.flatten() for x in tensors])
        return [int(torch.isnan(t).sum()), int(torch.isposinf(t).sum()),
                int(torch.isneginf(t).sum())]

    first_output = counts(recorder.outputs["first"])
    assert first_output[0] >= 64 and first_output[1] > 0 and first_output[2] > 0
    assert snapshot.nonfinite[1, 0].tolist() == first_output
    assert snapshot.nonfinite[0, 0].tolist() == counts(grads[:2])
    assert grads[0].numel() > 4096 and sum(counts(grads[:2])) > 0  # large, and hit
    assert snapshot.nonfinite[2].sum() == 0  # the weights themselves are finite
    assert snapshot.nonfinite_origin == "0"


def test_bad_arguments_name_the_option():
    model = tanh_mlp()
    for kwargs, option in (({"every_n_steps": 0}, "every_n_steps"),
                           ({"every_n_steps": 2.5}, "every_n_steps"),
                           ({"run_name": ""}, "run_name"),
                           ({"world_size": 0}, "world_size")):
        with pytest.raises(ValueError, match=option):
            Monitor(model, **kwargs)
    with pytest.raises(ValueError, match="Thresholds.tanh_flat"):
        Thresholds(tanh_flat=float("nan"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_global_norm_of_two_optimizers_on_unsampled_steps(dtype):
    """The always-on total on both norm paths (float32 on a CPU: a BLAS dot each; bfloat16:
    the fused one accelerators take): the first optimizer's gradients written into the
    step's ring cell, the second's added to them."""
    torch.manual_seed(0)
    model = tanh_mlp().to(dtype)
    first, second = (torch.optim.SGD(m.parameters(), lr=0.05) for m in (model[0], model[1:]))
    sink = Collect()
    monitor = Monitor(model, optimizers=[first, second], sinks=[sink], every_n_steps=4)
    expected = []
    for step in range(6):
        with monitor.step(step):
            x, y = torch.randn(32, 8, dtype=dtype), torch.randn(32, 1, dtype=dtype)
            loss = ((model(x) - y) ** 2).float().mean()
            monitor.observe_loss(loss)
            loss.backward()
            expected.append(math.sqrt(sum(p.grad.double().square().sum().item()
                                          for p in model.parameters())))
            for optimizer in (first, second):
                monitor.observe_gradients(optimizer)
                optimizer.step()
                optimizer.zero_grad()
    monitor.close()
    assert [p.step for p in sink.pulses] == list(range(6))
    for pulse in sink.pulses:
        assert close(pulse.global_grad_norm, expected[pulse.step], rel=1e-5), pulse.step


def test_gradients_with_a_graph_are_read_without_crashing_the_step():
    """``backward(create_graph=True)`` (e.g. a gradient penalty): gradients that require
    grad are read like any others, and the step runs on."""
    torch.manual_seed(0)
    model = tanh_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    sink = Collect()
    monitor = Monitor(model, optimizers=[optimizer], sinks=[sink], every_n_steps=3)
    expected = []
    for step in range(4):
        with monitor.step(step):
            loss = model(torch.randn(32, 8)).square().mean()
            monitor.observe_loss(loss)
            loss.backward(create_graph=True)
            expected.append(math.sqrt(sum(p.grad.detach().double().square().sum().item()
                                          for p in model.parameters())))
            monitor.observe_gradients(optimizer)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)  # breaks the parameter-gradient cycle
    monitor.close()
    assert [p.step for p in sink.pulses] == list(range(4))
    for pulse in sink.pulses:
        assert close(pulse.global_grad_norm, expected[pulse.step], rel=1e-5), pulse.step
