"""Issue 18, item 2: with clipping by norm, the clip's own pass over the gradients is the
monitor's read of them on unsampled steps (``Monitor.clip_grad_norm_``; Lightning's clipping
routed through it). Checked against torch: the same training, bit for bit; the norms before
and after clipping equal independent computations; no gradient pass of gradwatch's own."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from gradwatch.callbacks import TrainingDiagnostics
from gradwatch.monitor import Monitor

from .helpers import tanh_mlp
from .lightning_models import lightning, regression_module, trainer

pl = lightning()
#: ops that read a whole gradient (a pass over it)
GRADIENT_PASSES = {"_foreach_norm", "linalg_vector_norm", "dot", "norm", "sum", "abs"}


class KeepPulses:
    """An observer: every Pulse, by step."""

    def __init__(self) -> None:
        self.pulses = {}

    def on_pulse(self, pulse, monitor):
        self.pulses[pulse.step] = pulse

    def on_snapshot(self, snapshot, monitor):
        pass


class NormsAroundTheClip:
    """The global gradient norm before clipping (on_before_optimizer_step: Lightning clips
    right after) and after it (the optimizer step leaves .grad as it is), in float64; a
    Callback of either Lightning package (``recorder_class``)."""

    def __init__(self, diagnostics: TrainingDiagnostics) -> None:
        self.diagnostics, self.pulses = diagnostics, KeepPulses()
        self.before, self.after, self.routed = {}, {}, []

    def on_train_start(self, trainer_, module):
        self.diagnostics.monitor.observers.append(self.pulses)
        self.routed.append(self.diagnostics.clip_route.active)

    def on_before_optimizer_step(self, trainer_, module, optimizer):
        self.before[trainer_.global_step] = global_norm(module)

    def on_train_batch_end(self, trainer_, module, outputs, batch, batch_idx):
        self.after[trainer_.global_step - 1] = global_norm(module)


def recorder_class(package: str) -> type:
    return type("NormsAroundTheClip", (NormsAroundTheClip, lightning(package).Callback), {})


def global_norm(module: nn.Module) -> float:
    grads = [p.grad.double() for p in module.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])
                                    ).item()


def fit(tmp_path, module, every_n_steps=4, steps=8, package="lightning.pytorch", **options):
    torch.manual_seed(0)
    diagnostics = TrainingDiagnostics(every_n_steps=every_n_steps, alerts=False,
                                      tensorboard=False)
    recorder = recorder_class(package)(diagnostics)
    run = trainer(package, callbacks=[diagnostics, recorder], root=str(tmp_path),
                  max_steps=steps, **options)
    run.fit(module)
    return run, recorder


@pytest.mark.training
@pytest.mark.parametrize("package", ["lightning.pytorch", "pytorch_lightning"])
def test_lightning_norm_clipping_is_the_read_of_unsampled_steps(tmp_path, package):
    run, recorder = fit(tmp_path, regression_module(package), package=package,
                        gradient_clip_val=0.05)
    assert recorder.routed == [True]
    assert "clip_grad_by_norm" not in vars(run.precision_plugin)  # given back after the fit
    pulses = recorder.pulses.pulses
    assert sorted(pulses) == list(range(8))
    for step, pulse in pulses.items():  # sampled (0, 4) and unsampled steps alike
        assert pulse.global_grad_norm == pytest.approx(recorder.before[step], rel=1e-5)
        assert pulse.clipped_grad_norm == pytest.approx(recorder.after[step], rel=1e-5)
        assert recorder.after[step] < recorder.before[step]  # clipping engaged
        assert pulse.grad_clip_engaged is True


class ClipsItsOwnWay(pl.LightningModule):
    """Overrides configure_gradient_clipping: clips by value, ignoring the Trainer's norm."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = regression_module()

    def training_step(self, batch, batch_idx):
        return self.inner.training_step(batch, batch_idx)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)

    def train_dataloader(self):
        return self.inner.train_dataloader()

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None,
                                    gradient_clip_algorithm=None):
        torch.nn.utils.clip_grad_value_(self.parameters(), 0.01)


@pytest.mark.training
@pytest.mark.parametrize("module, options", [
    (regression_module, {"gradient_clip_val": 0.01, "gradient_clip_algorithm": "value"}),
    (ClipsItsOwnWay, {"gradient_clip_val": 0.05}),
    (regression_module, {}),
], ids=["by-value", "own-configure_gradient_clipping", "no-clipping"])
def test_other_clipping_is_left_alone_and_read_before_it(tmp_path, module, options):
    _, recorder = fit(tmp_path, module(), **options)
    assert recorder.routed == [False]
    for step, pulse in recorder.pulses.pulses.items():
        assert pulse.global_grad_norm == pytest.approx(recorder.before[step], rel=1e-5)
        if options:
            assert pulse.clipped_grad_norm == pytest.approx(recorder.after[step], rel=1e-5)


def twin_steps(dtype=torch.float32, freeze_stale=False, steps=6, max_norm=0.1):
    """The same model trained with torch.nn.utils.clip_grad_norm_ and with
    Monitor.clip_grad_norm_ (every_n_steps=3: sampled and unsampled steps); per step the
    monitor's Pulse and the norms torch computed, and the final weights of both."""
    results = []
    for via_monitor in (False, True):
        torch.manual_seed(0)
        model = tanh_mlp().to(dtype)
        if freeze_stale:  # a frozen parameter that still holds a gradient of earlier steps
            model[0].bias.grad = torch.ones_like(model[0].bias)
            model[0].bias.requires_grad_(False)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        keep = KeepPulses()
        monitor = Monitor(model, every_n_steps=3, optimizers=[optimizer], track_clipping=True,
                          observers=[keep])
        x, y = torch.randn(32, 8, dtype=dtype), torch.randn(32, 1, dtype=dtype)
        totals, watched_norms = [], []
        for step in range(steps):
            with monitor.step(step):
                loss = ((model(x) - y) ** 2).mean()
                monitor.observe_loss(loss)
                loss.backward()
                watched_norms.append(torch.linalg.vector_norm(torch.stack([
                    torch.linalg.vector_norm(p.grad.double()) for p in model.parameters()
                    if p.requires_grad])).item())
                clip = monitor.clip_grad_norm_ if via_monitor else torch.nn.utils.clip_grad_norm_
                totals.append(clip(model.parameters(), max_norm))
                optimizer.step()
                optimizer.zero_grad()
        monitor.close()
        results.append((keep.pulses, totals, watched_norms, list(model.parameters())))
    return results


@pytest.mark.unit
@pytest.mark.parametrize("dtype, freeze_stale", [
    (torch.float32, False), (torch.float64, False), (torch.bfloat16, False),
    (torch.float32, True)], ids=["float32", "float64", "bfloat16-not-fused", "frozen-stale"])
def test_monitor_clip_is_torchs_clip_and_the_norms_are_right(dtype, freeze_stale):
    (_, torch_totals, _, torch_weights), (pulses, totals, watched, weights) = twin_steps(
        dtype, freeze_stale)
    assert all(torch.equal(a, b) for a, b in zip(torch_weights, weights))  # bit-identical
    assert all(torch.equal(a, b) for a, b in zip(torch_totals, totals))
    rel = 1e-2 if dtype == torch.bfloat16 else 1e-5
    for step, pulse in pulses.items():
        assert pulse.global_grad_norm == pytest.approx(watched[step], rel=rel)
        clipped = min(totals[step].item(), 0.1 * totals[step].item() / (totals[step].item()
                                                                         + 1e-6))
        if not freeze_stale:
            assert pulse.clipped_grad_norm == pytest.approx(clipped, rel=rel)
    assert not math.isnan(pulses[1].global_grad_norm)


class CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.unit
def test_an_unsampled_step_makes_no_gradient_pass_of_its_own():
    counted = {}
    for via_monitor in (False, True):
        torch.manual_seed(0)
        model = nn.Sequential(*[nn.Linear(16, 16) for _ in range(6)])
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        monitor = Monitor(model, every_n_steps=100, optimizers=[optimizer],
                          track_clipping=True)
        for step in range(3):  # step 0 is sampled; 1 and 2 are not
            monitor.begin_step(step)
            model(torch.randn(4, 16)).square().mean().backward()
            with CountOps() as count:
                if via_monitor:
                    monitor.clip_grad_norm_(model.parameters(), 0.01, optimizer)
                else:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01)
                optimizer.step()  # the post-clip norm would be measured in its hook
            optimizer.zero_grad()
            monitor.end_step()
        monitor.close()
        counted[via_monitor] = count.ops
    added = counted[True] - counted[False]
    assert not set(added) & GRADIENT_PASSES, added
    assert sum(added.values()) <= 8, added  # a few scalar ops on the total norm


@pytest.mark.training
@pytest.mark.parametrize("precision", ["32-true", "16-mixed-scaler"])
def test_lightning_clipping_through_the_monitor_trains_bit_identically(tmp_path, precision):
    from lightning.pytorch.plugins.precision import MixedPrecision

    def train(callbacks):
        torch.manual_seed(3)
        module = regression_module(optimizer="adam", lr=0.01)
        plugins = [] if precision == "32-true" else [MixedPrecision(
            "16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0 ** 14))]
        trainer(callbacks=callbacks, root=str(tmp_path), max_steps=10, logger=False,
                gradient_clip_val=0.05, plugins=plugins).fit(module)
        return module.state_dict()

    diagnostics = TrainingDiagnostics(every_n_steps=4, alerts=False, tensorboard=False)
    routed = []

    class Routed(pl.Callback):
        def on_train_start(self, trainer_, module):
            routed.append(diagnostics.clip_route.active)

    bare, watched = train([]), train([diagnostics, Routed()])
    assert routed == [True]
    assert all(torch.equal(bare[name], watched[name]) for name in bare)
