"""TrainingDiagnostics in real Lightning training: values on /metrics and in TensorBoard."""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess

import pytest
import torch

from gradwatch.callbacks import TrainingDiagnostics

from .helpers import (OutputRecorder, close, layer_grad_norm, layer_weight_norm, read_scalars,
                      sample, samples, scrape)
from .lightning_models import PACKAGES, lightning, regression_module, trainer, two_optimizer_module


def reference_callback(package: str, sampled_step: int):
    """Records, independently of gradwatch, the figures of one step, and scrapes at the end."""
    pl = lightning(package)

    class Reference(pl.Callback):
        def __init__(self):
            self.recorder = None
            self.grad, self.weight, self.losses, self.global_norm = {}, {}, {}, {}
            self.metrics_text = None

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.global_step == sampled_step and self.recorder is None:
                net = module.net
                self.recorder = OutputRecorder({"0": net[1], "2": net[3], "4": net[4]})

        def on_before_backward(self, trainer, module, loss):
            self.losses[trainer.global_step] = loss.item()

        def on_before_optimizer_step(self, trainer, module, optimizer):
            step = trainer.global_step
            grads = [p.grad.norm() for p in module.parameters()]
            self.global_norm[step] = torch.linalg.vector_norm(torch.stack(grads)).item()
            if step == sampled_step:
                for name, layer in module.net.named_children():
                    if layer._parameters:
                        self.grad[f"net.{name}"] = layer_grad_norm(layer)
                        self.weight[f"net.{name}"] = layer_weight_norm(layer)

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if self.recorder is not None and trainer.global_step > sampled_step:
                self.recorder.remove()

        def on_train_end(self, trainer, module):
            diagnostics = next(c for c in trainer.callbacks if isinstance(c, TrainingDiagnostics))
            self.metrics_text = scrape(diagnostics.prometheus_url)

    return Reference()


@pytest.mark.training
@pytest.mark.parametrize("package", PACKAGES)
def test_metrics_and_tensorboard_match_independent_values(package, tmp_path):
    torch.manual_seed(0)
    diagnostics = TrainingDiagnostics(every_n_steps=5, prometheus_port=0)
    reference = reference_callback(package, sampled_step=5)
    run = trainer(package, [diagnostics, reference], root=str(tmp_path), max_steps=6)
    run.fit(regression_module(package))

    parsed = samples(reference.metrics_text)
    run_label = "lightning_logs/version_0"
    for layer, value in reference.grad.items():
        assert close(sample(parsed, "gradwatch_grad_norm", run=run_label, layer=layer), value)
        assert close(sample(parsed, "gradwatch_weight_norm", run=run_label, layer=layer),
                     reference.weight[layer])
    for position, layer in enumerate(("net.0", "net.2", "net.4")):
        assert sample(parsed, "gradwatch_layer_depth", layer=layer) == position
    for layer, name in (("net.0", "0"), ("net.2", "2"), ("net.4", "4")):
        mean, variance = reference.recorder.moments(name)
        assert close(sample(parsed, "gradwatch_activation_variance", layer=layer), variance)
        assert close(sample(parsed, "gradwatch_activation_mean", layer=layer), mean, 1e-3)
    assert sample(parsed, "gradwatch_step") == 5
    assert close(sample(parsed, "gradwatch_loss"), reference.losses[5])
    assert close(sample(parsed, "gradwatch_global_grad_norm"), reference.global_norm[5])
    assert sample(parsed, "gradwatch_step_global_grad_norm_count") == 6
    assert close(sample(parsed, "gradwatch_step_global_grad_norm_sum"),
                 sum(reference.global_norm.values()))
    assert sample(parsed, "gradwatch_snapshots_total") == 2
    assert sample(parsed, "gradwatch_overhead_seconds_total") > 0
    assert not any(key[0].startswith("gradwatch") and ("rank", "0") in key[1] for key in parsed)

    scalars = read_scalars(run.logger.log_dir)
    assert [s for s, _ in scalars["gradwatch/grad_norm/net.0"]] == [0, 5]
    assert close(scalars["gradwatch/grad_norm/net.2"][-1][1], reference.grad["net.2"])
    assert close(scalars["gradwatch/weight_norm/net.4"][-1][1], reference.weight["net.4"])
    assert [s for s, _ in scalars["gradwatch/loss"]] == list(range(6))
    assert all(close(v, reference.losses[s]) for s, v in scalars["gradwatch/loss"])
    assert all(close(v, reference.global_norm[s]) for s, v in scalars["gradwatch/global_grad_norm"])


@pytest.mark.servers
def test_exposition_passes_promtool(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: the test set-up installs Debian's prometheus")
        pytest.skip("promtool not installed")
    reference = reference_callback("lightning.pytorch", sampled_step=0)
    run = trainer(callbacks=[TrainingDiagnostics(every_n_steps=2, prometheus_port=0,
                                                 tensorboard=False), reference],
                  root=str(tmp_path), gradient_clip_val=0.01, max_steps=3)
    run.fit(regression_module())
    lint = subprocess.run([promtool, "check", "metrics"], input=reference.metrics_text,
                          capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    parsed = samples(reference.metrics_text)
    # clipping at 0.01 engages on every step of this model
    assert sample(parsed, "gradwatch_grad_clip_engaged_total") == 3
    assert close(sample(parsed, "gradwatch_clipped_grad_norm"), 0.01, 1e-3)


@pytest.mark.training
def test_tensorboard_without_logger_and_custom_layout(tmp_path):
    log_dir = tmp_path / "tb"
    diagnostics = TrainingDiagnostics(every_n_steps=1, tensorboard_dir=str(log_dir))
    trainer(callbacks=[diagnostics], logger=False, max_steps=2).fit(regression_module())
    scalars = read_scalars(str(log_dir))
    assert [s for s, _ in scalars["gradwatch/activation_variance/net.0"]] == [0, 1]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    accumulator = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    accumulator.Reload()
    event = accumulator.Tensors(metadata.CONFIG_SUMMARY_TAG)[0]
    layout = layout_pb2.Layout()
    layout.ParseFromString(event.tensor_proto.string_val[0])
    titles = {category.title for category in layout.category}
    assert {"gradwatch: log10_grad_norm", "gradwatch: log10_activation_variance",
            "gradwatch: log10_update_ratio"} <= titles


@pytest.mark.training
def test_gradient_accumulation_and_run_name(tmp_path):
    torch.manual_seed(0)
    reference = reference_callback("lightning.pytorch", sampled_step=2)
    diagnostics = TrainingDiagnostics(every_n_steps=2, prometheus_port=0, run_name="accum")
    run = trainer(callbacks=[diagnostics, reference], root=str(tmp_path), max_steps=3,
                  accumulate_grad_batches=2)
    run.fit(regression_module())
    parsed = samples(reference.metrics_text)
    assert sample(parsed, "gradwatch_step", run="accum") == 2
    # gradients accumulate over both micro-batches; gradwatch reads them once per step
    assert close(sample(parsed, "gradwatch_grad_norm", layer="net.0"), reference.grad["net.0"])
    assert sample(parsed, "gradwatch_step_global_grad_norm_count") == 3
    # both micro-batches' activations are in the statistics
    assert len(reference.recorder.outputs["0"]) == 2
    mean, variance = reference.recorder.moments("2")
    assert close(sample(parsed, "gradwatch_activation_variance", layer="net.2"), variance)


@pytest.mark.training
def test_manual_optimization_with_two_optimizers(tmp_path):
    torch.manual_seed(0)
    diagnostics = TrainingDiagnostics(every_n_steps=1, prometheus_port=0)
    pl = lightning("lightning.pytorch")
    seen = {}

    class Grab(pl.Callback):
        def on_train_end(self, trainer, module):
            seen["text"] = scrape(diagnostics.prometheus_url)
            seen["snapshot"] = diagnostics.monitor.last_snapshot

    run = trainer(callbacks=[diagnostics, Grab()], root=str(tmp_path), max_steps=4)
    run.fit(two_optimizer_module())
    snapshot = seen["snapshot"]
    assert snapshot.layers == ("encoder", "head")
    assert all(math.isfinite(v) for v in snapshot.grad_norm)
    assert all(0 < v < 1 for v in snapshot.update_ratio)
    parsed = samples(seen["text"])
    assert sample(parsed, "gradwatch_learning_rate", optimizer="1", group="0") == 0.1


@pytest.mark.unit
def test_bad_arguments_fail_at_construction():
    for kwargs, option in (({"every_n_steps": 0}, "every_n_steps"),
                           ({"prometheus_port": 70000}, "prometheus_port"),
                           ({"prometheus_port": -1}, "prometheus_port"),
                           ({"prometheus_port": "9100"}, "prometheus_port"),
                           ({"max_exported_layers": 0}, "max_exported_layers"),
                           ({"pushgateway_url": "localhost:9091"}, "pushgateway_url"),
                           ({"push_interval": 0}, "push_interval"),
                           ({"run_name": ""}, "run_name")):
        with pytest.raises(ValueError, match=option):
            TrainingDiagnostics(**kwargs)


@pytest.mark.training
def test_port_in_use_fails_before_the_first_step(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    steps = []
    pl = lightning("lightning.pytorch")

    class Count(pl.Callback):
        def on_train_batch_start(self, *args):
            steps.append(1)

    try:
        with pytest.raises(ValueError, match=f"prometheus_port {port}") as error:
            trainer(callbacks=[TrainingDiagnostics(prometheus_port=port), Count()],
                    root=str(tmp_path)).fit(regression_module())
    finally:
        taken.close()
    assert steps == []
    # the last line of the traceback says what to do, and there is no second traceback
    assert str(error.value).endswith(
        "[Errno 98] Address already in use; choose a free port, prometheus_port=0 (any free "
        "port) or port_in_use='warn' (train without /metrics)")
    assert error.value.__cause__ is None and error.value.__suppress_context__


@pytest.mark.training
def test_mixed_precision_loss_scale_and_skipped_steps(tmp_path):
    """fp16 autocast with a GradScaler (Lightning's "16-mixed" plugin, here on the CPU)."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    pl = lightning("lightning.pytorch")
    diagnostics = TrainingDiagnostics(every_n_steps=2, prometheus_port=0, tensorboard=False)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    seen = {"pulses": []}

    class KeepPulses:
        def on_pulse(self, pulse, monitor):
            seen["pulses"].append(pulse)

        def on_snapshot(self, snapshot, monitor):
            pass

    class OverflowOnce(pl.Callback):
        def on_train_start(self, trainer, module):
            diagnostics.monitor.observers.append(KeepPulses())

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.global_step == 2:
                batch[0].mul_(1e6)  # fp16 overflows: the scaler must skip this step

        def on_train_end(self, trainer, module):
            seen["text"] = scrape(diagnostics.prometheus_url)

    run = trainer(callbacks=[diagnostics, OverflowOnce()], root=str(tmp_path), max_steps=4,
                  plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)], logger=False)
    run.fit(regression_module(lr=0.01))
    pulses = {p.step: p for p in seen["pulses"]}
    assert (pulses[1].optimizer_stepped, pulses[1].loss_scale) == (True, 2.0 ** 16)
    assert (pulses[2].optimizer_stepped, pulses[2].loss_scale) == (False, 2.0 ** 15)
    parsed = samples(seen["text"])
    assert sample(parsed, "gradwatch_amp_skipped_steps_total") == 1
    assert sample(parsed, "gradwatch_amp_loss_scale") == scaler.get_scale() == 2.0 ** 15


@pytest.mark.training
def test_monitoring_does_not_change_the_training_result(tmp_path):
    def train(callbacks):
        torch.manual_seed(7)
        net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Dropout(0.2),
                                  torch.nn.Tanh(), torch.nn.Linear(16, 1))
        module = regression_module(net=net, optimizer="adam")
        trainer(callbacks=callbacks, root=str(tmp_path), max_steps=8, logger=False,
                gradient_clip_val=0.5).fit(module)
        return module.state_dict()

    bare = train([])
    watched = train([TrainingDiagnostics(every_n_steps=3, prometheus_port=0,
                                         tensorboard_dir=str(tmp_path / "tb"))])
    assert bare.keys() == watched.keys()
    for name in bare:
        assert torch.equal(bare[name], watched[name]), name
