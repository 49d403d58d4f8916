"""Issue 12, the training loop's side: validation inside an accumulation window, a callback
reused for a second fit, the learning rate a step ran with, the last steps on /metrics and
steps without backward. Each trains a real model and checks what gradwatch exported against
figures computed independently with torch."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gradwatch.callbacks import TrainingDiagnostics

from .helpers import layer_grad_norm, read_scalars, sample, samples, scrape
from .lightning_models import lightning, regression_module, trainer

pytestmark = pytest.mark.training

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
        loss = ((module(x) - y) ** 2).mean()
        module.log("held_out_loss", loss)
        return loss

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


# --- Keep working (issue 12): figures of every step checked against torch ---------------


class StepReference(pl.Callback):
    """Per optimizer step, independently of gradwatch: each layer's gradient norm before
    clipping, the global norm over the unique parameters with a gradient, the post-clip
    norm, each layer's update ratio; and gradwatch's Snapshot of that step (put it after
    TrainingDiagnostics in the callback list)."""

    def __init__(self) -> None:
        self.grad, self.global_norm, self.clipped, self.ratio, self.snapshots = {}, {}, {}, {}, {}
        self._before = None

    @staticmethod
    def layers(module):
        return {name: m for name, m in module.named_modules() if m._parameters}

    def on_before_optimizer_step(self, trainer, module, optimizer):
        step = trainer.global_step
        grads = {id(p): p.grad for p in module.parameters() if p.grad is not None}
        self.global_norm[step] = norm_of(grads.values())
        self.grad[step] = {name: norm_of(p.grad for p in own(m) if p.grad is not None)
                           for name, m in self.layers(module).items()}
        self._before = {name: [p.detach().clone() for p in own(m)]
                        for name, m in self.layers(module).items()}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        step = trainer.global_step - 1
        if self._before is None or step in self.ratio:
            return
        # after the clipping and the optimizer step (SGD/Adam leave .grad as it is)
        self.clipped[step] = norm_of(p.grad for p in module.parameters() if p.grad is not None)
        self.ratio[step] = {}
        for name, m in self.layers(module).items():
            before = self._before[name]
            delta = norm_of(p.detach() - b for p, b in zip(own(m), before))
            self.ratio[step][name] = delta / norm_of(before) if delta > 0 else math.nan
        self._before = None
        snapshot = diagnostics_of(trainer).last_snapshot
        if snapshot is not None:
            self.snapshots[snapshot.step] = snapshot


def own(module) -> list:
    return [p for p in module._parameters.values() if p is not None]


def norm_of(tensors) -> float:
    norms = [torch.linalg.vector_norm(t.double()) for t in tensors]
    return torch.linalg.vector_norm(torch.stack(norms)).item() if norms else math.nan


def assert_steps_match(reference: StepReference, steps: int, clipped: bool = False):
    assert sorted(reference.snapshots) == list(range(steps))
    for step, snapshot in reference.snapshots.items():
        pulse = snapshot.pulse
        assert pulse.global_grad_norm == pytest.approx(reference.global_norm[step], rel=1e-4)
        if clipped:
            assert pulse.clipped_grad_norm == pytest.approx(reference.clipped[step], rel=1e-4)
        for layer, grad, ratio in zip(snapshot.layers, snapshot.grad_norm,
                                      snapshot.update_ratio):
            assert grad == pytest.approx(reference.grad[step][layer], rel=1e-4, nan_ok=True)
            assert ratio == pytest.approx(reference.ratio[step][layer], rel=1e-3, nan_ok=True)


def run_steps(tmp_path, module, steps=4, **trainer_options):
    torch.manual_seed(0)
    reference = StepReference()
    diagnostics = TrainingDiagnostics(every_n_steps=1, alerts=False, tensorboard=False)
    run = trainer(callbacks=[diagnostics, reference], root=str(tmp_path), max_steps=steps,
                  **trainer_options)
    run.fit(module)
    return reference


@pytest.mark.parametrize("options", [
    {"accumulate_grad_batches": 3},
    {"gradient_clip_val": 0.05},
    {"gradient_clip_val": 0.01, "gradient_clip_algorithm": "value"},
], ids=["accumulation", "clip-norm", "clip-value"])
def test_accumulation_and_clipping(tmp_path, options):
    reference = run_steps(tmp_path, regression_module(), **options)
    assert_steps_match(reference, 4, clipped="gradient_clip_val" in options)
    if "gradient_clip_val" in options:  # clipping did engage
        assert all(reference.clipped[s] < reference.global_norm[s] for s in range(4))


def test_frozen_parameters_in_the_optimizer(tmp_path):
    module = regression_module()
    module.net[0].requires_grad_(False)
    reference = run_steps(tmp_path, module)
    assert_steps_match(reference, 4)
    snapshot = reference.snapshots[3]
    frozen = snapshot.layers.index("net.0")
    assert math.isnan(snapshot.grad_norm[frozen]) and math.isnan(snapshot.update_ratio[frozen])


def test_head_only_optimizer(tmp_path):
    module = regression_module()
    module.configure_optimizers = lambda: torch.optim.SGD(module.net[4].parameters(), lr=0.05)
    reference = run_steps(tmp_path, module)
    snapshot = reference.snapshots[3]
    for layer, ratio in zip(snapshot.layers, snapshot.update_ratio):
        assert (layer == "net.4") == (not math.isnan(ratio))  # only the head is stepped
    assert snapshot.update_ratio[snapshot.layers.index("net.4")] == pytest.approx(
        reference.ratio[3]["net.4"], rel=1e-3)


def test_unfreezing_with_add_param_group(tmp_path):
    module = regression_module()
    module.net[0].requires_grad_(False)
    optimizer = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.05)
    module.configure_optimizers = lambda: optimizer

    class Unfreeze(pl.Callback):
        def on_train_batch_start(self, trainer, module_, batch, batch_idx):
            if trainer.global_step == 2 and not module_.net[0].weight.requires_grad:
                module_.net[0].requires_grad_(True)
                optimizer.add_param_group({"params": list(module_.net[0].parameters())})

    torch.manual_seed(0)
    reference = StepReference()
    diagnostics = TrainingDiagnostics(every_n_steps=1, alerts=False, tensorboard=False)
    trainer(callbacks=[Unfreeze(), diagnostics, reference], root=str(tmp_path),
            max_steps=4).fit(module)
    assert_steps_match(reference, 4)
    first = reference.snapshots[1].layers.index("net.0")
    assert math.isnan(reference.snapshots[1].update_ratio[first])
    assert reference.snapshots[3].update_ratio[first] > 0  # measured once unfrozen


class TiedLanguageModel(pl.LightningModule):
    """Embedding and output projection share one matrix; the block is used twice and
    returns a dict."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(16, 8)
        self.block = nn.Linear(8, 8)
        self.out = nn.Linear(8, 16, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, tokens):
        hidden = torch.tanh(self.block(torch.tanh(self.block(self.embed(tokens)))))
        return {"logits": self.out(hidden), "hidden": hidden}

    def training_step(self, batch, batch_idx):
        (tokens,) = batch
        logits = self(tokens[:, :-1])["logits"]
        return nn.functional.cross_entropy(logits.reshape(-1, 16), tokens[:, 1:].reshape(-1))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)

    def train_dataloader(self):
        tokens = torch.randint(0, 16, (64, 6), generator=torch.Generator().manual_seed(0))
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(tokens), batch_size=8)


def test_tied_embeddings_counted_once_and_a_block_used_twice(tmp_path):
    torch.manual_seed(0)
    module = TiedLanguageModel()
    outputs = []
    handle = module.block.register_forward_hook(
        lambda m, args, out: outputs.append(out.detach().double().flatten()))
    reference = run_steps(tmp_path, module, steps=1)
    handle.remove()
    assert_steps_match(reference, 1)  # the global norm counts the shared matrix once
    snapshot = reference.snapshots[0]
    values = torch.cat(outputs)  # both calls of the block count
    block = snapshot.layers.index("block")
    assert snapshot.activation_mean[block] == pytest.approx(values.mean().item(), rel=1e-4)
    assert snapshot.activation_variance[block] == pytest.approx(
        values.var(unbiased=False).item(), rel=1e-4)


class ToggledTwoOptimizers(pl.LightningModule):
    """Manual optimization, two optimizers, each toggled while it steps."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.encoder, self.head = nn.Linear(8, 8), nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        for optimizer in self.optimizers():
            self.toggle_optimizer(optimizer)
            loss = ((self.head(torch.tanh(self.encoder(x))) - y) ** 2).mean()
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
            self.untoggle_optimizer(optimizer)

    def configure_optimizers(self):
        return (torch.optim.SGD(self.encoder.parameters(), lr=0.1),
                torch.optim.SGD(self.head.parameters(), lr=0.1))

    def train_dataloader(self):
        from .helpers import loader
        return loader()


def test_manual_optimization_with_toggling(tmp_path):
    torch.manual_seed(0)
    snapshots = {}

    class Grab(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            snapshots[trainer.global_step] = diagnostics_of(trainer).last_snapshot

    diagnostics = TrainingDiagnostics(every_n_steps=1, alerts=False, tensorboard=False)
    module = ToggledTwoOptimizers()
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    trainer(callbacks=[diagnostics, Grab()], root=str(tmp_path), max_steps=2).fit(module)
    # two optimizer steps per batch: Lightning counts both in global_step
    first = snapshots[2]
    assert first.layers == ("encoder", "head")
    assert all(math.isfinite(v) and v > 0 for v in first.grad_norm)
    assert all(math.isfinite(v) and v > 0 for v in first.update_ratio)
    moved = {n: (p.detach() - before[n]).norm().item() for n, p in module.named_parameters()}
    assert all(v > 0 for v in moved.values())


def free_port() -> int:
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_resume_from_a_checkpoint_on_the_same_port(tmp_path):
    port = free_port()
    torch.manual_seed(0)
    module = regression_module()
    first = trainer(callbacks=[TrainingDiagnostics(prometheus_port=port, tensorboard=False)],
                    root=str(tmp_path), max_steps=4, enable_checkpointing=True)
    first.fit(module)
    checkpoint = first.checkpoint_callback.best_model_path
    end = ScrapeAtEnd()
    second = trainer(callbacks=[TrainingDiagnostics(prometheus_port=port, tensorboard=False),
                                end], root=str(tmp_path), max_steps=7)
    second.fit(regression_module(), ckpt_path=checkpoint)
    parsed = samples(end.text)
    assert sample(parsed, "gradwatch_step") == 6  # resumed at step 4, ended at 6
    assert sample(parsed, "gradwatch_step_global_grad_norm_count") == 3
    assert sample(parsed, "gradwatch_loss") == pytest.approx(end.losses[6], rel=1e-5)


def test_validate_test_and_predict_after_fit_change_nothing(tmp_path):
    module = with_validation(regression_module())
    module.test_step = module.validation_step
    module.test_dataloader = module.val_dataloader
    module.predict_dataloader = module.val_dataloader
    module.predict_step = lambda batch, batch_idx: module(batch[0])
    diagnostics = TrainingDiagnostics(every_n_steps=2, alerts=False, tensorboard=False)
    run = trainer(callbacks=[diagnostics], root=str(tmp_path), max_steps=3)
    run.fit(module)
    weights = [p.detach().clone() for p in module.parameters()]
    last = diagnostics.last_snapshot
    validated = run.validate(module, verbose=False)
    tested = run.test(module, verbose=False)
    predicted = run.predict(module)
    assert validated[0]["held_out_loss"] == pytest.approx(tested[0]["held_out_loss"])
    assert len(predicted) == 4
    assert all(torch.equal(a, b) for a, b in zip(weights, module.parameters()))
    assert diagnostics.monitor is None and diagnostics.last_snapshot is last
