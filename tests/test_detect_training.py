"""Detectors on real CPU training runs with the plain Monitor loop.

Sick models must raise the right alert at the right step naming the right layers; healthy
models (He-initialised ReLU MLP, pre-LN transformer, residual CNN with BatchNorm) must raise
nothing at all over a few hundred steps, with the same thresholds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from .detect_fixtures import Recorder, mlp, train
from gradwatch.monitor.judging.engine import AlertEngine
from gradwatch.monitor.capture.monitor import Monitor

pytestmark = [pytest.mark.training, pytest.mark.usefixtures("one_torch_thread")]

TEACHER = torch.randn(32, 1, generator=torch.Generator().manual_seed(0))


def regression(step: int):
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(step))
    return x, x @ TEACHER


def init_linears(model: nn.Module, fn) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.Linear):
            fn(module.weight)
            nn.init.zeros_(module.bias)
    return model


def linear_names(model: nn.Module) -> tuple[str, ...]:
    return tuple(n for n, m in model.named_modules() if isinstance(m, nn.Linear))


# ---------------------------------------------------------------- sick models

def test_deep_sigmoid_mlp_vanishes_in_its_lower_layers():
    torch.manual_seed(0)
    model = mlp([32] + [32] * 8 + [1], nn.Sigmoid)
    run = train(model, regression, 60, lr=0.1)
    (alert,) = run.fired("GradientVanishing")
    assert run.engine.regime == "vanishing" and alert.severity == "warning"  # alert table
    # fired on the 3rd sample in a row (steps 0, 10, 20)
    assert alert.step == 20
    snap = next(s for s in run.recorder.snapshots if s.step == alert.step)
    depth = list(snap.layers)
    named = [depth.index(name) for name in alert.layers]
    assert named == list(range(len(named))) and len(named) >= 2  # the lowest layers, in order
    assert depth[-1] not in alert.layers
    top = max(snap.grad_norm[-2:])
    assert all(snap.grad_norm[i] < 1e-3 * top for i in named)
    assert all(snap.update_ratio[i] < 1e-4 for i in named)
    assert "sigmoid/tanh" in alert.description and "ReLU" in alert.remedy


def test_over_scaled_init_explodes_and_is_flagged_by_the_audit():
    torch.manual_seed(0)
    model = mlp([32] + [64] * 6 + [1], nn.ReLU)
    init_linears(model, lambda w: nn.init.normal_(w, std=4 * math.sqrt(2 / w.shape[1])))
    run = train(model, regression, 20, lr=1e-4)
    (audit,) = run.fired("InitializationSuspect")
    assert audit.layers == linear_names(model) and audit.step == 0
    assert audit.value > 8
    (explosion,) = run.fired("GradientExplosion")
    first = run.recorder.pulses[0]
    assert explosion.step == 0 and explosion.value == first.global_grad_norm > 1e4
    assert explosion.regime == "exploding"


def test_too_high_learning_rate_is_flagged_before_the_first_nan():
    torch.manual_seed(0)
    model = nn.Linear(32, 1)
    run = train(model, regression, 300, lr=1.0)
    assert run.first_nonfinite is not None
    (explosion,) = run.fired("GradientExplosion")
    assert explosion.step <= run.first_nonfinite - 1
    norms = {p.step: p.global_grad_norm for p in run.recorder.pulses}
    assert norms[explosion.step] == explosion.value
    (nonfinite,) = run.fired("NonFiniteValues")
    assert nonfinite.step == run.first_nonfinite
    assert run.engine.regime == "nonfinite"
    # the explosion came first: the NaN's remedy treats it, not the batch
    assert nonfinite.remedy.startswith("Lower the learning rate")
    assert f"GradientExplosion at step {explosion.step} came first" in nonfinite.remedy


@pytest.mark.parametrize("bad_step, exact", [(20, True), (25, False)])
def test_inf_in_one_batch_names_the_first_linear(bad_step, exact):
    torch.manual_seed(0)
    model = mlp([32, 64, 64, 1], nn.ReLU)

    def batches(step):
        x, y = regression(step)
        if step == bad_step:
            x = x.clone()
            x[3, 5] = math.inf
        return x, y

    run = train(model, batches, 40, lr=0.01)
    assert run.first_nonfinite == bad_step
    (alert,) = run.fired("NonFiniteValues")
    assert alert.step == bad_step and alert.origin_exact is exact
    assert alert.layers[0] == "0"  # the first Linear, first in forward order
    assert alert.layers[-1] == "4"  # the deepest layer with a non-finite gradient
    sampled = [s.step for s in run.recorder.snapshots]
    if not exact:  # escalated: the steps after the unsampled NaN are fully sampled
        assert {bad_step + 1, bad_step + 2, bad_step + 3} <= set(sampled)
        assert f"inferred from step {bad_step + 1}" in alert.description
    assert "GradientExplosion" not in run.engine.active  # a bad batch, not an explosion


def test_zero_init_breaks_no_symmetry():
    torch.manual_seed(0)
    model = init_linears(mlp([32, 64, 64, 1], nn.ReLU), nn.init.zeros_)
    run = train(model, regression, 5, lr=0.01)
    (alert,) = run.fired("SymmetricInitialization")
    assert alert.layers == linear_names(model) and alert.severity == "warning"
    assert "random" in alert.remedy


def test_dead_relu_layer_warns_and_explains_the_vanishing():
    torch.manual_seed(0)
    model = mlp([32, 64, 64, 1], nn.ReLU)
    with torch.no_grad():
        model[2].bias.fill_(-3.0)  # pre-activations of the 2nd layer all negative
    run = train(model, regression, 60, lr=0.01)
    (dead,) = run.fired("DeadUnits")
    # the 5th sample in a row (steps 0..40), naming the layer whose ReLU outputs are all 0
    assert dead.step == 40 and dead.layers == ("2",) and dead.value == 1.0
    dead_ratios = [s.activation_dead_ratio[1] for s in run.recorder.snapshots if s.step <= 40]
    assert min(dead_ratios) == 1.0
    (vanishing,) = run.fired("GradientVanishing")
    assert "dead ReLUs in 2" in vanishing.description and "LeakyReLU" in dead.remedy


def test_saturated_tanh_layer_warns():
    torch.manual_seed(0)
    model = mlp([32, 64, 64, 1], nn.Tanh)
    with torch.no_grad():
        model[0].weight.mul_(20.0)  # pre-activations far into tanh's flat region
    variance_ratio = float(model[0].weight.detach().var(unbiased=False)) / (2 / 32)  # He: nearest
    run = train(model, regression, 60, lr=0.01)
    (saturated,) = run.fired("ActivationSaturation")
    assert saturated.step == 40 and saturated.layers == ("0",)
    first = next(s for s in run.recorder.snapshots if s.step == 40)
    assert saturated.value == first.activation_saturation_ratio[0] > 0.5
    (init,) = run.fired("InitializationSuspect")
    assert init.layers == ("0",) and init.value == pytest.approx(variance_ratio)


# ---------------------------------------------------------------- healthy models

class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))


def small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                         nn.ReLU(), ResidualBlock(8), ResidualBlock(8),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))


class PreLNTransformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(32)
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        return self.head(self.norm(self.encoder(self.embed(x))).mean(dim=1))


def he_relu_mlp() -> nn.Module:
    torch.manual_seed(0)
    return init_linears(mlp([32, 64, 64, 64, 64, 3], nn.ReLU),
                        lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"))


def classification(shape):
    """Labels: which third of the input's features has the largest mean (learnable)."""
    def batches(step):
        x = torch.randn(32, *shape, generator=torch.Generator().manual_seed(10_000 + step))
        flat = x.reshape(32, -1) if len(shape) == 1 else x.mean(dim=tuple(range(2, x.dim())))
        return x, torch.stack([c.mean(1) for c in flat.tensor_split(3, dim=1)], 1).argmax(1)
    return batches


def sequence_classification(step):
    x = torch.randn(32, 6, 8, generator=torch.Generator().manual_seed(20_000 + step))
    return x, torch.stack([c.mean((1, 2)) for c in x.tensor_split(3, dim=2)], 1).argmax(1)


@pytest.mark.parametrize("make, batches, optimizer, lr", [
    (he_relu_mlp, classification((32,)), "sgd", 0.05),
    (small_cnn, classification((3, 6, 6)), "sgd", 0.05),
    (PreLNTransformer, sequence_classification, "adam", 1e-3),
], ids=["he-relu-mlp", "residual-bn-cnn", "pre-ln-transformer"])
def test_healthy_models_raise_nothing(make, batches, optimizer, lr):
    torch.manual_seed(0)
    run = train(make(), batches, 200, lr=lr, optimizer=optimizer,
                loss_fn=nn.functional.cross_entropy)
    assert [(a.name, a.step) for a in run.engine.history] == []
    assert run.engine.regime == "healthy" and run.first_nonfinite is None
    assert len(run.recorder.pulses) == 200 and len(run.recorder.snapshots) == 20
    # they really trained: the last 50 steps' mean loss is well below the first 10 steps'
    assert np.mean(run.losses[-50:]) < 0.8 * np.mean(run.losses[:10])


# ---------------------------------------------------------------- mixed precision

def train_fp16(steps: int, outlier_from: int | None):
    """fp16 autocast on CPU with a real GradScaler; from ``outlier_from`` on, every other
    batch has targets 1e6x too large, so its gradients overflow fp16 and the step is skipped.
    Gradients are observed after ``scaler.unscale_`` (true norms, not scaled ones)."""
    torch.manual_seed(0)
    model = mlp([32, 64, 64, 1], nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu")
    engine, recorder = AlertEngine(), Recorder()
    monitor = Monitor(model, optimizers=[opt], grad_scaler=scaler, every_n_steps=10,
                      observers=[engine, recorder])
    for step in range(steps):
        x, y = regression(step)
        if outlier_from is not None and step >= outlier_from and step % 2 == 0:
            y = y * 1e6
        with monitor.step(step):
            with torch.autocast("cpu", dtype=torch.float16):
                out = model(x)
            loss = nn.functional.mse_loss(out.float(), y)
            monitor.observe_loss(loss)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            monitor.observe_gradients()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
    monitor.close()
    return engine, recorder


def test_fp16_overflow_storm_after_calibration():
    engine, recorder = train_fp16(60, outlier_from=40)
    first_step_ran = next(p.step for p in recorder.pulses if p.optimizer_stepped)
    skips = [p.step for p in recorder.pulses
             if not p.optimizer_stepped and p.step > first_step_ran]
    storms = [a for a in engine.history if a.name == "AmpOverflowStorm"]
    assert len(storms) == 1 and storms[0].status == "firing"
    assert storms[0].step == skips[4] and storms[0].value == 5.0  # the 5th skip after calibration
    assert "NonFiniteValues" not in {a.name for a in engine.history}  # skips are no NaN alarm


def test_fp16_healthy_run_raises_nothing():
    engine, recorder = train_fp16(60, outlier_from=None)
    assert not recorder.pulses[0].optimizer_stepped  # the scaler calibrated its scale...
    assert [a.name for a in engine.history] == []  # ...which is no storm


def test_zero_started_parameters_that_are_no_unit_layers_are_not_judged():
    """A positional embedding or a learned query starting at zero breaks no symmetry (each
    position gets its own gradient): only unit layers (Linear, Conv, attention, RNN) count."""

    class WithPositions(nn.Module):
        def __init__(self):
            super().__init__()
            self.position = nn.Parameter(torch.zeros(16, 32))
            self.body = mlp([32, 64, 1], nn.ReLU)

        def forward(self, x):
            return self.body(x + self.position[: x.shape[0]].mean(0))

    torch.manual_seed(0)
    run = train(WithPositions(), regression, 5, lr=0.01)
    assert run.fired("SymmetricInitialization") == []
    model = WithPositions()
    nn.init.zeros_(model.body[0].weight)  # a zeroed unit layer still is
    (alert,) = train(model, regression, 5, lr=0.01).fired("SymmetricInitialization")
    assert alert.layers == ("body.0",)
