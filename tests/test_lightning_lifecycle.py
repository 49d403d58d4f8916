"""Issue 12, the training loop's side: validation inside an accumulation window, a callback
reused for a second fit, the learning rate a step ran with, the last steps on /metrics and
steps without backward. Each trains a real model and checks what gradwatch exported against
figures computed independently with torch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from callbacks import TrainingDiagnostics

from .helpers import layer_grad_norm, read_scalars, sample, samples, scrape
from .lightning_models import lightning, regression_module, trainer

pl = lightning()


def diagnostics_of(trainer_) -> TrainingDiagnostics:
    return next(c for c in trainer_.callbacks if isinstance(c, TrainingDiagnostics))


class TrainingOutputs(pl.Callback):
    """Records the Tanh outputs of the training forward passes of one step (eval-mode
    passes, i.e. validation, are left out), and the loss of every step."""

    def __init__(self, step: int) -> None:
        self.step, self.outputs, self.losses = step, [], {}
        self._handle = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.step and self._handle is None:
            self._handle = module.net[1].register_forward_hook(self._record)

    def _record(self, module, args, output):
        if module.training:
            self.outputs.append(output.detach().double().flatten())

    def on_before_backward(self, trainer, module, loss):
        self.losses.setdefault(trainer.global_step, []).append(loss.item())

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self._handle is not None and trainer.global_step > self.step:
            self._handle.remove()


def with_validation(module, scale: float = 50.0):
    """``module`` with a validation set far from the training data (inputs x ``scale``):
    its activations, if counted, would change the training step's figures."""
    data = torch.utils.data.TensorDataset(torch.randn(64, 8) * scale, torch.randn(64, 1))

    def validation_step(batch, batch_idx):
        x, y = batch
        return ((module(x) - y) ** 2).mean()

    module.validation_step = validation_step
    module.val_dataloader = lambda: torch.utils.data.DataLoader(data, batch_size=16)
    return module


def test_validation_inside_an_accumulation_window_is_not_counted(tmp_path):
    # issue 12, item 1: accumulate_grad_batches=4, val_check_interval=2
    torch.manual_seed(0)
    diagnostics = TrainingDiagnostics(every_n_steps=1, alerts=False)
    outputs = TrainingOutputs(step=1)
    run = trainer(callbacks=[diagnostics, outputs], root=str(tmp_path), max_steps=3,
                  accumulate_grad_batches=4, val_check_interval=2, num_sanity_val_steps=0,
                  limit_val_batches=2)
    run.fit(with_validation(regression_module()))
    values = torch.cat(outputs.outputs)
    assert len(outputs.outputs) == 4  # the four training micro-batches only
    scalars = read_scalars(diagnostics.tensorboard_sink.log_dir)
    logged = dict(scalars["gradwatch/activation_variance/net.0"])[1]
    assert logged == pytest.approx(values.var(unbiased=False).item(), rel=1e-4)
    assert dict(scalars["gradwatch/activation_mean/net.0"])[1] == pytest.approx(
        values.mean().item(), rel=1e-3, abs=1e-6)
    # the loss of an accumulated step is the sum over its micro-batches' backward passes
    assert dict(scalars["gradwatch/loss"])[1] == pytest.approx(sum(outputs.losses[1]), rel=1e-5)


class StopAfter(pl.Callback):
    """Counts the optimizer steps of a fit."""

    def __init__(self) -> None:
        self.steps = 0

    def on_before_optimizer_step(self, trainer, module, optimizer):
        self.steps += 1


def test_a_reused_callback_starts_every_fit_fresh(tmp_path):
    # issue 12, item 2: the first fit explodes and is stopped; the second, healthy, runs
    # every step and raises nothing
    alerts = []
    diagnostics = TrainingDiagnostics(every_n_steps=2, on_alert=alerts.append,
                                      stop_on=("GradientExplosion", "NonFiniteValues"),
                                      tensorboard=False)
    torch.manual_seed(0)
    exploding = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(),
                              nn.Linear(16, 1))
    with torch.no_grad():
        for layer in (exploding[0], exploding[2], exploding[4]):
            layer.weight.mul_(1e4)
    first = trainer(callbacks=[diagnostics], root=str(tmp_path / "a"), max_steps=30)
    first.fit(regression_module(net=exploding, lr=10.0))
    assert first.global_step < 30 and alerts  # stopped by the explosion
    assert diagnostics.monitor is None  # the first fit left nothing behind

    fired_before = len(alerts)
    counter = StopAfter()
    second = trainer(callbacks=[diagnostics, counter], root=str(tmp_path / "b"), max_steps=12)
    torch.manual_seed(0)
    second.fit(regression_module(lr=0.01))
    assert counter.steps == 12 and second.global_step == 12
    assert alerts[fired_before:] == []
    assert diagnostics.last_snapshot.step == 11  # this fit's figures, to its last step


class LearningRates(pl.Callback):
    """The learning rate each optimizer step ran with."""

    def __init__(self) -> None:
        self.used = {}

    def on_before_optimizer_step(self, trainer, module, optimizer):
        self.used[trainer.global_step] = optimizer.param_groups[0]["lr"]


def test_learning_rate_is_the_one_the_step_ran_with(tmp_path):
    # issue 12, item 4: a per-step scheduler; LearningRateMonitor logs the same values
    module = regression_module(lr=0.1)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 ** step)
    module.configure_optimizers = lambda: {
        "optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
    diagnostics = TrainingDiagnostics(every_n_steps=3, alerts=False)
    rates = LearningRates()
    monitor_lr = pl.callbacks.LearningRateMonitor(logging_interval="step")
    run = trainer(callbacks=[diagnostics, rates, monitor_lr], root=str(tmp_path), max_steps=6)
    run.fit(module)
    exported = dict(read_scalars(diagnostics.tensorboard_sink.log_dir)
                    ["gradwatch/learning_rate/0/0"])
    assert exported == pytest.approx({step: 0.1 * 0.5 ** step for step in range(6)})
    assert exported == pytest.approx(rates.used)
    lightning_logged = dict(read_scalars(run.logger.log_dir)["lr-SGD"])
    assert {step: exported[step] for step in lightning_logged} == pytest.approx(
        lightning_logged)


class ScrapeAtEnd(pl.Callback):
    """Scrapes gradwatch's /metrics when the training ends (after gradwatch's own hook,
    as any later callback or a Prometheus scrape would see it); records the last step's
    figures independently."""

    def __init__(self) -> None:
        self.text, self.losses, self.global_norm, self.grad = None, {}, {}, {}

    def on_before_backward(self, trainer, module, loss):
        self.losses[trainer.global_step] = loss.item()

    def on_before_optimizer_step(self, trainer, module, optimizer):
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        if grads:
            self.global_norm[trainer.global_step] = torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()
            self.grad = {f"net.{name}": layer_grad_norm(layer)
                         for name, layer in module.net.named_children() if layer._parameters}

    def on_train_end(self, trainer, module):
        self.text = scrape(diagnostics_of(trainer).prometheus_url)


def test_last_steps_reach_metrics(tmp_path):
    # issue 12, item 8: 13 steps, every_n_steps=5: the scrape at the end shows step 12
    torch.manual_seed(0)
    diagnostics = TrainingDiagnostics(every_n_steps=5, prometheus_port=0, tensorboard=False)
    end = ScrapeAtEnd()
    run = trainer(callbacks=[diagnostics, end], root=str(tmp_path), max_steps=13)
    run.fit(regression_module())
    parsed = samples(end.text)
    assert sample(parsed, "gradwatch_step") == 12
    assert sample(parsed, "gradwatch_loss") == pytest.approx(end.losses[12], rel=1e-5)
    assert sample(parsed, "gradwatch_global_grad_norm") == pytest.approx(end.global_norm[12],
                                                                         rel=1e-4)
    assert sample(parsed, "gradwatch_step_global_grad_norm_count") == 13
    assert sample(parsed, "gradwatch_step_global_grad_norm_sum") == pytest.approx(
        sum(end.global_norm.values()), rel=1e-4)
    for layer, norm in end.grad.items():  # the per-layer figures are the last step's too
        assert sample(parsed, "gradwatch_grad_norm", layer=layer) == pytest.approx(norm, rel=1e-4)


def test_a_step_without_backward_keeps_the_last_values(tmp_path):
    # issue 12, item 9: the last step's training_step returns None (no backward)
    module = regression_module()
    plain_step = module.training_step
    module.training_step = lambda batch, batch_idx: (
        None if batch_idx == 2 else plain_step(batch, batch_idx))
    end = ScrapeAtEnd()
    diagnostics = TrainingDiagnostics(every_n_steps=4, prometheus_port=0, tensorboard=False)
    run = trainer(callbacks=[diagnostics, end], root=str(tmp_path), max_steps=3)
    torch.manual_seed(0)
    run.fit(module)
    parsed = samples(end.text)
    assert sample(parsed, "gradwatch_step") == 2  # the step without backward
    assert sample(parsed, "gradwatch_loss") == pytest.approx(end.losses[1], rel=1e-5)
    assert sample(parsed, "gradwatch_global_grad_norm") == pytest.approx(end.global_norm[1],
                                                                         rel=1e-4)
