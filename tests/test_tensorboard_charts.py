"""TensorBoard charts a reader can use: log10 tags of what spans decades, a run per layer so
that TensorBoard (which colours a line by its run) gives a chart's layers colours of their
own, and a Custom Scalars layout of depth groups of those layer runs; read back with
TensorBoard's own reader and plugins (the routes its web page calls) and checked against
norms computed independently."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
from torch import nn

from gradwatch.callbacks import TrainingDiagnostics
from gradwatch.demo import SCENARIOS, mlp
from gradwatch.monitor.sinks.tensorboard import (
    LAYERS_PER_CHART,
    masked_crc32c,
    use_fast_checksums,
)
from gradwatch.monitor.sinks.tensorboard_layers import (
    MAX_LAYER_RUNS,
    chart_groups,
    charted_layers,
    group_label,
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


class TensorBoardView:
    """What TensorBoard's web page is served for ``logdir``, through its own plugins: the
    run list in the order the page gives runs their colours (CorePlugin's /data/runs), the
    merged Custom Scalars layout and the series each chart's regex selects in a run."""

    def __init__(self, logdir: str) -> None:
        from tensorboard import context
        from tensorboard.backend.event_processing import data_provider
        from tensorboard.backend.event_processing.plugin_event_multiplexer import (
            EventMultiplexer,
        )
        from tensorboard.plugins import base_plugin
        from tensorboard.plugins.core import core_plugin
        from tensorboard.plugins.custom_scalar import custom_scalars_plugin
        from tensorboard.plugins.scalar import scalars_plugin
        from werkzeug.test import Client

        multiplexer = EventMultiplexer()
        multiplexer.AddRunsFromDirectory(logdir)
        multiplexer.Reload()
        plugins: dict = {}
        tb = base_plugin.TBContext(logdir=logdir, multiplexer=multiplexer,
                                   data_provider=data_provider.MultiplexerDataProvider(
                                       multiplexer, logdir),
                                   plugin_name_to_instance=plugins)
        plugins["scalars"] = scalars_plugin.ScalarsPlugin(tb)
        self.custom = custom_scalars_plugin.CustomScalarsPlugin(tb)
        self.ctx = context.RequestContext()
        runs = Client(core_plugin.CorePlugin(tb).get_plugin_apps()["/data/runs"])
        self.runs: list[str] = runs.get("/data/runs").json

    def layout(self) -> dict[str, list[dict]]:
        """category title -> its charts (title, multiline tag regexes)."""
        layout = json.loads(self.custom.layout_impl(self.ctx, ""))
        return {c["title"]: c["chart"] for c in layout["category"]}

    def series(self, chart: dict, run: str) -> dict[str, list[tuple[int, float]]]:
        """tag -> (step, value) of what ``chart`` draws for ``run``."""
        (regex,) = chart["multiline"]["tag"]
        found = self.custom.scalars_impl(self.ctx, run, regex, "")["tag_to_events"]
        return {tag: [(step, value) for _, step, value in events]
                for tag, events in found.items()}


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


@pytest.mark.training
def test_each_layer_is_a_run_of_its_own_holding_independent_norms(run):
    """TensorBoard colours lines by run: each layer is a run (``layers/<depth>-<layer>``,
    listed in depth order) holding its figures under its depth group's tag."""
    log_dir, reference = run
    view = TensorBoardView(log_dir)
    layer_runs = [f"layers/{depth}-{layer}" for depth, layer in enumerate(LAYERS, 1)]
    assert view.runs == [".", *layer_runs]
    plain = read_scalars(log_dir)
    sampled = sorted({*range(0, MAX_STEPS, EVERY_N_STEPS), MAX_STEPS - 1})
    for index, (layer, name) in enumerate(zip(LAYERS, layer_runs)):
        group = "layers 1-4" if index < 4 else "layers 5-8"
        scalars = read_scalars(str(Path(log_dir) / name))
        grad = dict(scalars[f"gradwatch_layers/log10_grad_norm/{group}"])
        assert sorted(grad) == sampled
        for step, value in grad.items():
            assert close(value, math.log10(reference.grad[step][layer]), 1e-4)
        weight = dict(scalars[f"gradwatch_layers/weight_norm/{group}"])
        assert weight == pytest.approx(dict(plain[f"gradwatch/weight_norm/{layer}"]))


@pytest.mark.training
def test_custom_scalars_chart_a_depth_group_of_layer_runs_a_colour_each(run):
    log_dir, reference = run
    view = TensorBoardView(log_dir)
    categories = view.layout()
    assert {"gradwatch: per step", "gradwatch: log10_grad_norm", "gradwatch: log10_update_ratio",
            "gradwatch: log10_activation_variance", "gradwatch: weight_norm"} <= set(categories)
    for title in ("gradwatch: log10_grad_norm", "gradwatch: weight_norm"):
        shown = []
        for chart in categories[title]:
            drawn = {run: view.series(chart, run) for run in view.runs}
            lines = [run for run, series in drawn.items() if series]
            # one line per run (so one colour each), runs next to each other in the list
            assert all(len(drawn[run]) == 1 for run in lines)
            assert 1 <= len(lines) <= LAYERS_PER_CHART, (chart["title"], lines)
            positions = [view.runs.index(run) for run in lines]
            assert positions == list(range(positions[0], positions[0] + len(lines)))
            shown += [run.partition("-")[2] for run in lines]
        assert shown == list(LAYERS)   # every layer once, input side first
    # a per-step chart draws one figure, once per run
    per_step = {c["title"]: c for c in categories["gradwatch: per step"]}
    assert set(per_step) == {"log10_loss", "log10_global_grad_norm", "loss", "global_grad_norm"}
    loss = view.series(per_step["log10_loss"], ".")
    assert list(loss) == ["gradwatch/log10_loss"]
    for step, value in loss["gradwatch/log10_loss"]:
        assert close(value, math.log10(reference.loss[step]), 1e-4)
    assert all(not view.series(chart, run) for chart in per_step.values()
               for run in view.runs if run != ".")


@pytest.mark.unit
def test_deep_models_chart_layers_spread_over_depth():
    assert charted_layers(6) == list(range(6))
    assert chart_groups(6) == [[0, 1, 2, 3], [4, 5]]
    assert [group_label(g, 6) for g in chart_groups(6)] == ["layers 1-4", "layers 5-8"]
    charted = charted_layers(1000)
    assert len(charted) == MAX_LAYER_RUNS and charted[0] == 0 and charted[-1] == 999
    assert all(b - a in (15, 16) for a, b in zip(charted, charted[1:]))   # evenly spread
    groups = chart_groups(1000)
    assert len(groups) == 16 and all(len(g) == LAYERS_PER_CHART for g in groups)
    assert group_label(groups[0], 1000) == f"layers 1-{round(3 * 999 / 63) + 1}"   # 49


@pytest.mark.training
def test_demo_runs_are_runs_of_their_own_and_their_layers_coloured_apart(demo_runs):
    """The demo's scenarios are four runs, each with a run per layer; in every layer chart,
    a scenario's lines are its own layer runs, next to each other in TensorBoard's run
    list, so a palette of `LAYERS_PER_CHART` colours or more gives each its own."""
    view = TensorBoardView(str(demo_runs.out))
    scenarios = [s.name for s in SCENARIOS]
    assert [r for r in view.runs if "/" not in r] == scenarios
    for scenario in SCENARIOS:
        linear = [n for n, m in scenario.build().named_modules() if isinstance(m, nn.Linear)]
        assert [r for r in view.runs if r.startswith(f"{scenario.name}/")] == [
            f"{scenario.name}/layers/{depth}-net.{name}" for depth, name in enumerate(linear, 1)]
    charts = view.layout()["gradwatch: log10_grad_norm"]
    assert [c["title"] for c in charts] == [
        "log10_grad_norm · layers 1-4", "log10_grad_norm · layers 5-8",
        "log10_grad_norm · layers 9-12"]   # one chart per depth group for all four runs
    for scenario in scenarios:
        drawn = []
        for chart in charts:
            lines = [r for r in view.runs if r.startswith(f"{scenario}/")
                     and view.series(chart, r)]
            positions = [view.runs.index(r) for r in lines]
            assert positions == list(range(min(positions, default=0),
                                           min(positions, default=0) + len(lines)))
            assert len(lines) <= LAYERS_PER_CHART
            drawn += lines
        assert drawn == [r for r in view.runs if r.startswith(f"{scenario}/")]  # each once


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
