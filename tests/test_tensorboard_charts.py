"""TensorBoard charts a reader can use: log10 tags of what spans decades, and a Custom Scalars
layout that tells layers apart (depth groups of a few layers), read back with TensorBoard's
own reader and checked against norms computed independently."""

from __future__ import annotations

import math
import random
import re

import pytest
from torch import nn

from gradwatch.callbacks import TrainingDiagnostics
from gradwatch.demo import mlp
from gradwatch.monitor.sinks.tensorboard import (
    LAYERS_PER_CHART,
    depth_groups,
    masked_crc32c,
    use_fast_checksums,
)

from .helpers import close, layer_grad_norm, read_scalars
from .lightning_models import lightning, regression_module, trainer

EVERY_N_STEPS = 2
MAX_STEPS = 5
LAYERS = tuple(f"net.{i}" for i in range(0, 12, 2))   # six Linear layers, input first


def reference_callback():
    """Each step's per-layer gradient norms (before the optimizer step) and loss."""
    pl = lightning()

    class Reference(pl.Callback):
        def __init__(self):
            self.grad: dict[int, dict[str, float]] = {}
            self.loss: dict[int, float] = {}

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            self.grad[trainer.global_step] = {
                name: layer_grad_norm(module) for name, module in pl_module.named_modules()
                if isinstance(module, nn.Linear)}

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.loss[trainer.global_step - 1] = float(outputs["loss"])

    return Reference()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import torch

    torch.manual_seed(0)
    reference = reference_callback()
    net = mlp([8] + [16] * 5 + [1], nn.Sigmoid)   # sigmoid: norms fall by decades with depth
    fit = trainer(callbacks=[TrainingDiagnostics(every_n_steps=EVERY_N_STEPS), reference],
                  root=str(tmp_path_factory.mktemp("tb")), max_steps=MAX_STEPS)
    fit.fit(regression_module(net=net, lr=0.5))
    return fit.logger.log_dir, reference


@pytest.mark.training
def test_log10_tags_hold_the_logarithm_of_independent_norms(run):
    log_dir, reference = run
    scalars = read_scalars(log_dir)
    sampled = sorted({*range(0, MAX_STEPS, EVERY_N_STEPS), MAX_STEPS - 1})
    for layer in LAYERS:
        logged = dict(scalars[f"gradwatch/log10_grad_norm/{layer}"])
        assert sorted(logged) == sampled
        for step, value in logged.items():
            assert close(value, math.log10(reference.grad[step][layer]), 1e-4)
        plain = dict(scalars[f"gradwatch/grad_norm/{layer}"])   # the linear tag stays
        assert all(close(10 ** logged[s], plain[s], 1e-4) for s in sampled)
    # the norms span decades: what the log10 tags are for
    last = reference.grad[MAX_STEPS - 1]
    assert last[LAYERS[0]] < 1e-2 * last[LAYERS[-1]]
    for step, value in scalars["gradwatch/log10_loss"]:
        assert close(value, math.log10(reference.loss[step]), 1e-4)
    for step, value in scalars["gradwatch/log10_global_grad_norm"]:
        expected = math.sqrt(sum(n ** 2 for n in reference.grad[step].values()))
        assert close(value, math.log10(expected), 1e-4)
    for name in ("log10_update_ratio", "log10_activation_variance"):
        for layer in LAYERS:
            for step, value in scalars[f"gradwatch/{name}/{layer}"]:
                plain = dict(scalars[f"gradwatch/{name.removeprefix('log10_')}/{layer}"])
                assert close(value, math.log10(plain[step]), 1e-4)


def layout_of(log_dir: str):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    accumulator = EventAccumulator(log_dir, size_guidance={"tensors": 0})
    accumulator.Reload()
    layout = layout_pb2.Layout()
    layout.ParseFromString(accumulator.Tensors(metadata.CONFIG_SUMMARY_TAG)[-1]
                           .tensor_proto.string_val[0])
    return layout


@pytest.mark.training
def test_custom_scalars_group_layers_by_depth_and_chart_log10(run):
    log_dir, _ = run
    tags = list(read_scalars(log_dir))
    categories = {c.title: c.chart for c in layout_of(log_dir).category}
    assert {"gradwatch: per step", "gradwatch: log10_grad_norm", "gradwatch: log10_update_ratio",
            "gradwatch: log10_activation_variance", "gradwatch: weight_norm"} <= set(categories)
    for title in ("gradwatch: log10_grad_norm", "gradwatch: weight_norm"):
        statistic = title.removeprefix("gradwatch: ")
        shown = []
        for chart in categories[title]:
            (pattern,) = chart.multiline.tag
            matched = [t for t in tags if re.match(pattern, t)]   # as the plugin selects
            assert 1 <= len(matched) <= LAYERS_PER_CHART, (chart.title, matched)
            assert all(t.startswith(f"gradwatch/{statistic}/") for t in matched)
            layers = [t.rpartition("/")[2] for t in matched]
            assert layers[0] in chart.title and layers[-1] in chart.title
            shown += sorted(layers, key=LAYERS.index)
        assert shown == list(LAYERS)   # every layer once, input side first
    (per_step,) = [c for c in categories["gradwatch: per step"] if "log10" in c.title]
    assert sorted(t for t in tags if re.match(per_step.multiline.tag[0], t)) == [
        "gradwatch/log10_global_grad_norm", "gradwatch/log10_loss"]


@pytest.mark.unit
def test_deep_models_get_larger_depth_groups():
    assert depth_groups(6) == [(0, 4), (4, 6)]
    groups = depth_groups(1000)
    assert len(groups) <= 16 and groups[0][0] == 0 and groups[-1][1] == 1000
    assert all(a[1] == b[0] for a, b in zip(groups, groups[1:]))   # contiguous


@pytest.mark.training
def test_event_records_are_checksummed_in_c_with_tensorboards_own_values(run):
    """The run above wrote its events through the C checksum (``use_fast_checksums``, on
    once a TensorBoardSink exists) and TensorBoard's reader, which checks every record with
    its own pure-Python CRC32C, read them back; here the two agree byte for byte."""
    from tensorboard.compat.tensorflow_stub import pywrap_tensorflow
    from tensorboard.summary.writer import record_writer

    assert use_fast_checksums()
    assert record_writer.masked_crc32c is masked_crc32c
    generator = random.Random(0)
    for size in (0, 1, 3, 8, 13, 64, 1000, 20_000):
        data = bytes(generator.getrandbits(8) for _ in range(size))
        assert masked_crc32c(data) == pywrap_tensorflow.masked_crc32c(data), size
    assert read_scalars(run[0])  # read back, every record's checksum checked
