"""Common Lightning setups (issue 12) train for real on CPU with correct figures.

Each setup trains a tiny model with TrainingDiagnostics and a ``Reference`` callback that
computes the same figures independently (``torch.linalg.vector_norm`` per parameter, in
float64, around the optimizer step), then the Snapshots (and for some setups ``/metrics``)
are checked against them. Shared helpers first, then one test (or parametrized case) per
setup, with the issue item it covers.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from torch import nn

from benchmarks import compile_graphs
from gradwatch.callbacks import TrainingDiagnostics

from .helpers import OutputRecorder, loader, sample, samples, scrape, tanh_mlp
from .lightning_models import lightning, trainer

pytestmark = pytest.mark.training

pl = lightning()


# ---------------------------------------------------------------------------- shared helpers

def own_params(module: nn.Module) -> list[torch.Tensor]:
    return [p for p in module._parameters.values()
            if p is not None and not torch.nn.parameter.is_lazy(p)]


def norm(tensors) -> float:
    """L2 norm of several tensors together, in float64 (sparse ones densified)."""
    values = [t.to_dense() if t.is_sparse else t for t in tensors]
    if not values:
        return math.nan
    return math.sqrt(sum(torch.linalg.vector_norm(v.detach().double()).item() ** 2
                         for v in values))


class Reference(pl.Callback):
    """Figures of every step computed independently of gradwatch, and gradwatch's Snapshot
    of that step (the callback runs after TrainingDiagnostics in the callback list).

    ``layers(pl_module)`` names the modules to check; by default every module that owns
    parameters, by qualified name (the root by its class name). ``activations(pl_module)``
    names, per layer, the module whose output is its activation (recorded with hooks).
    Automatic optimization, one batch per optimizer step.
    """

    def __init__(self, diagnostics: TrainingDiagnostics, layers=None, scrape_metrics=False,
                 activations=None):
        self.diagnostics = diagnostics
        self.layers = layers or (lambda m: {n or type(x).__name__: x
                                            for n, x in m.named_modules() if own_params(x)})
        self.scrape_metrics = scrape_metrics
        self.activations = activations
        self.recorder: OutputRecorder | None = None
        self.steps: dict[int, dict] = {}
        self.snapshots: dict[int, object] = {}
        self.metrics: dict[int, dict] = {}

    def on_train_start(self, trainer, pl_module):
        if self.activations is not None:
            self.recorder = OutputRecorder(self.activations(pl_module))

    def on_train_end(self, trainer, pl_module):
        if self.recorder is not None:
            self.recorder.remove()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.current = self.steps.setdefault(trainer.global_step, {})
        if self.recorder is not None:
            self.recorder.clear()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        layers = self.layers(pl_module)
        params = list(dict.fromkeys(p for m in layers.values() for p in own_params(m)))
        grads = [p.grad for p in params if p.grad is not None]
        self.current.update(
            grad={n: norm([p.grad for p in own_params(m) if p.grad is not None])
                  for n, m in layers.items()},
            weight={n: norm(own_params(m)) for n, m in layers.items()},
            before={n: [p.detach().clone() for p in own_params(m)] for n, m in layers.items()},
            stepped={n: [p.grad is not None for p in own_params(m)] for n, m in layers.items()},
            finite=all(bool(torch.isfinite(g.to_dense() if g.is_sparse else g).all())
                       for g in grads),
            global_norm=norm(grads))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step - 1
        reference = self.steps[step]
        # what training_step returned (Lightning may hand hooks a loss scaled for AMP)
        reference["loss"] = float(outputs["loss"].double())
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        reference["scale"] = None if scaler is None else scaler.get_scale()
        layers = self.layers(pl_module)
        reference["ratio"] = {}
        for name, module in layers.items():
            kept = [(p, b) for p, b, stepped in zip(own_params(module), reference["before"][name],
                                                     reference["stepped"][name]) if stepped]
            delta = norm([p.detach().double() - b.double() for p, b in kept])
            reference["ratio"][name] = (delta / reference["weight"][name]
                                        if kept and reference["finite"] else math.nan)
        if self.recorder is not None:
            reference["moments"] = {name: self.recorder.moments(name)
                                    for name in self.recorder.outputs}
        snapshot = self.diagnostics.last_snapshot
        if snapshot is not None and snapshot.step == step:
            self.snapshots[step] = snapshot
            if self.scrape_metrics:
                self.diagnostics.monitor.flush()
                self.metrics[step] = samples(scrape(self.diagnostics.prometheus_url))


def fit(model, every_n_steps=2, max_steps=6, layers=None, scrape_metrics=False, tmp_path=None,
        activations=None, **trainer_options) -> Reference:
    """Train ``model`` with TrainingDiagnostics and a Reference; return the Reference."""
    torch.manual_seed(0)
    options = dict(every_n_steps=every_n_steps, tensorboard=False, alerts=False)
    if scrape_metrics:
        options["prometheus_port"] = 0
    diagnostics = TrainingDiagnostics(**options)
    reference = Reference(diagnostics, layers, scrape_metrics, activations)
    trainer(callbacks=[diagnostics, reference], max_steps=max_steps, root=tmp_path,
            logger=False, **trainer_options).fit(model)
    assert reference.snapshots, "no Snapshot was taken"
    return reference


def assert_figures_match(reference: Reference, rel: float = 1e-4) -> None:
    """Every Snapshot's per-layer norms, update ratios, global norm and loss equal the
    Reference's (NaN where the Reference has none)."""
    for step, snapshot in reference.snapshots.items():
        expected = reference.steps[step]
        assert set(snapshot.layers) <= set(expected["grad"]), snapshot.layers
        for i, name in enumerate(snapshot.layers):
            for field, key in (("grad_norm", "grad"), ("weight_norm", "weight"),
                               ("update_ratio", "ratio")):
                got, want = getattr(snapshot, field)[i], expected[key][name]
                assert np.isclose(got, want, rtol=rel, atol=1e-8, equal_nan=True), \
                    (step, name, field, got, want)
        assert np.isclose(snapshot.pulse.global_grad_norm, expected["global_norm"], rtol=rel)
        assert np.isclose(snapshot.pulse.loss, expected["loss"], rtol=rel)
        assert snapshot.pulse.loss_scale == expected["scale"]
        for name, (mean, variance) in expected.get("moments", {}).items():
            i = snapshot.layers.index(name)
            assert np.isclose(snapshot.activation_mean[i], mean, rtol=rel, atol=1e-6), name
            assert np.isclose(snapshot.activation_variance[i], variance, rtol=rel), name


class Regression(pl.LightningModule):
    """y ~ x[:, :1] / 2 with any network, SGD."""

    def __init__(self, net=None, lr=0.05):
        super().__init__()
        if net is not None:
            self.net = net
        self.lr = lr

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return ((self(x).float() - y.float()) ** 2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)

    def train_dataloader(self):
        return loader()


# ---------------------------------------------------------------------------- item 3: precision

def _fp16_with_loss_scaling():
    from lightning.pytorch.plugins import MixedPrecision

    # real fp16 with a GradScaler: Lightning turns precision="16-mixed" on a CPU into bf16
    return {"plugins": [MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu"))]}


PRECISIONS = {
    "32-true": lambda: {"precision": "32-true"},
    "64-true": lambda: {"precision": "64-true"},
    "bf16-mixed": lambda: {"precision": "bf16-mixed"},
    "bf16-true": lambda: {"precision": "bf16-true"},
    "16-true": lambda: {"precision": "16-true"},
    "16-mixed+GradScaler": _fp16_with_loss_scaling,
}


def tanh_mlp_activations(pl_module):
    net = pl_module.net
    return {"net.0": net[1], "net.2": net[3], "net.4": net[4]}


@pytest.mark.parametrize("precision", PRECISIONS)
def test_every_cpu_precision_trains_with_correct_figures(precision, tmp_path):
    # issue 12, item 3 (64-true crashed in _foreach_norm(..., dtype=float32))
    low = precision in ("bf16-true", "16-true")
    # the activation of a Linear is the output of the activation module right after it
    reference = fit(Regression(tanh_mlp()), scrape_metrics=precision == "64-true",
                    tmp_path=tmp_path, activations=tanh_mlp_activations,
                    **PRECISIONS[precision]())
    assert sorted(reference.snapshots) == [0, 2, 4, 5]  # and the last step, on full figures
    assert_figures_match(reference, rel=1e-3 if low else 1e-4)
    for step, parsed in reference.metrics.items():  # /metrics shows the same figures
        expected = reference.steps[step]
        for layer in ("net.0", "net.2", "net.4"):
            assert np.isclose(sample(parsed, "gradwatch_grad_norm", layer=layer),
                              expected["grad"][layer], rtol=1e-4)
            assert np.isclose(sample(parsed, "gradwatch_weight_norm", layer=layer),
                              expected["weight"][layer], rtol=1e-4)


# ---------------------------------------------------------------------------- item 5

class BuiltInConfigureModel(Regression):
    """Layers created in ``configure_model`` (the standard for FSDP and large models)."""

    def configure_model(self):
        if not hasattr(self, "net"):
            self.net = tanh_mlp()


def test_layers_created_in_configure_model_are_monitored(tmp_path, caplog):
    # issue 12, item 5
    with caplog.at_level(logging.WARNING, logger="gradwatch"):
        reference = fit(BuiltInConfigureModel(), tmp_path=tmp_path,
                        activations=tanh_mlp_activations)
    assert all(s.layers == ("net.0", "net.2", "net.4") for s in reference.snapshots.values())
    assert_figures_match(reference)
    assert "nothing to watch" not in caplog.text


class NoParameters(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        return None

    def configure_optimizers(self):
        return None

    def train_dataloader(self):
        return loader()


def test_a_training_with_nothing_to_watch_warns_once(tmp_path, caplog):
    # issue 12, item 5: no layers at all is said once, not silently exported as nothing
    diagnostics = TrainingDiagnostics(every_n_steps=2, tensorboard=False, alerts=False)
    with caplog.at_level(logging.WARNING, logger="gradwatch"):
        trainer(callbacks=[diagnostics], max_steps=-1, max_epochs=1, limit_train_batches=4,
                root=tmp_path, logger=False).fit(NoParameters())
    warnings = [r for r in caplog.records if "nothing to watch" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].name == "gradwatch"


# ---------------------------------------------------------------------------- item 6

def test_lazy_modules_are_measured_after_their_first_forward(tmp_path):
    # issue 12, item 6 (the weight measurement crashed on the uninitialized parameter)
    net = nn.Sequential(nn.LazyLinear(16), nn.Tanh(), nn.Linear(16, 1))
    reference = fit(Regression(net), tmp_path=tmp_path,
                    activations=lambda m: {"net.0": m.net[1], "net.2": m.net[2]})
    first = reference.snapshots.pop(0)
    assert first.layers == ("net.2",)  # net.0 had no weights when step 0 began
    assert np.isclose(first.grad_norm[0], reference.steps[0]["grad"]["net.2"], rtol=1e-4)
    # the global norm of that step counts it all the same
    assert np.isclose(first.pulse.global_grad_norm, reference.steps[0]["global_norm"])
    assert reference.snapshots[2].layers == reference.snapshots[4].layers == ("net.0", "net.2")
    assert_figures_match(reference)


# ---------------------------------------------------------------------------- item 7

class SparseEmbedding(pl.LightningModule):
    """An embedding with sparse gradients; the batch repeats indices (coalescing counts).
    With ``first_use`` > 0 it is first used on that (unsampled) step, before which only a
    dense offset learns."""

    def __init__(self, optimizer, first_use=0):
        super().__init__()
        self.embedding = nn.Embedding(10, 4, sparse=True)
        if first_use:
            self.offset = nn.Parameter(torch.tensor(0.1))
        self.optimizer, self.first_use = optimizer, first_use

    def training_step(self, batch, batch_idx):
        x, y = batch
        prediction = self.offset if self.first_use else 0.0
        if batch_idx >= self.first_use:
            index = (x[:, :2].abs() * 3).long().clamp(max=9)
            prediction = prediction + self.embedding(index).sum(dim=(1, 2))
        return ((prediction - y[:, 0]) ** 2).mean()

    def configure_optimizers(self):
        return self.optimizer(self.parameters(), lr=0.05)

    def train_dataloader(self):
        return loader()


@pytest.mark.parametrize("optimizer, first_use", [(torch.optim.SGD, 1),
                                                  (torch.optim.SparseAdam, 0)])
def test_sparse_gradients_get_correct_norms(optimizer, first_use, tmp_path):
    # issue 12, item 7 (crashed every step: reshape is not implemented for sparse tensors)
    reference = fit(SparseEmbedding(optimizer, first_use), tmp_path=tmp_path)
    for step, snapshot in reference.snapshots.items():
        embedding = snapshot.layers.index("embedding")
        if step >= first_use:
            assert np.isfinite(snapshot.grad_norm[embedding])
            assert snapshot.grad_norm[embedding] > 0
    for step in range(first_use + 1):  # the unsampled steps' global norms too
        pulse = reference.snapshots[2].pulses[step - 1] if step else reference.snapshots[0].pulse
        assert pulse.step == step
        assert np.isclose(pulse.global_grad_norm, reference.steps[step]["global_norm"])
    assert_figures_match(reference)


# ---------------------------------------------------------------------------- torch.compile

class CompiledMLP(Regression):
    """An MLP compiled as a submodule (``torch.compile(nn.Sequential(...))``)."""

    def __init__(self):
        super().__init__(torch.compile(tanh_mlp(), backend="eager"))

    def on_train_batch_start(self, batch, batch_idx):
        # the activation after net.0 (a Tanh), computed eagerly with the pre-step weights
        with torch.no_grad():
            # forward(), not __call__: gradwatch's hooks must not see this extra pass
            net = self.net._orig_mod
            self.tanh_output = net[1].forward(net[0].forward(batch[0]))


def test_compiled_model_keeps_its_layer_names_and_figures(tmp_path):
    # issue 12, torch.compile: names without "_orig_mod", sampled steps measured exactly
    model = CompiledMLP()
    outputs = {}

    def layers(pl_module):
        outputs[pl_module.trainer.global_step] = pl_module.tanh_output
        return {f"net.{i}": pl_module.net._orig_mod[i] for i in (0, 2, 4)}

    reference = fit(model, layers=layers, tmp_path=tmp_path)
    for step, snapshot in reference.snapshots.items():
        assert snapshot.layers == ("net.0", "net.2", "net.4")
        tanh = outputs[step].double()
        assert np.isclose(snapshot.activation_mean[0], tanh.mean().item(), rtol=1e-4)
        assert np.isclose(snapshot.activation_variance[0], tanh.var(unbiased=False).item(),
                          rtol=1e-4)
    assert_figures_match(reference)


@pytest.mark.parametrize("how", compile_graphs.HOW)
def test_compiled_graph_is_not_split_and_not_recompiled(how, tmp_path):
    # issue 12, torch.compile: dynamo's own counts, bare compiled vs with gradwatch
    options = dict(steps=10, every_n_steps=4, how=how, root=str(tmp_path))
    bare = compile_graphs.measure(False, **options)
    watched = compile_graphs.measure(True, **options)
    assert watched.layers == ("net.0", "net.2", "net.4")
    assert bare.total.graphs == 1 and bare.total.breaks == 0
    for kind in ("unsampled", "sampled"):  # after warm-up
        counts = getattr(watched, kind)
        assert (counts.frames, counts.graphs, counts.breaks) == (0, 0, 0), (kind, counts)
    assert (watched.total.graphs, watched.total.breaks) == (bare.total.graphs, 0)
    assert watched.total.frames == bare.total.frames


# ---------------------------------------------------------------------------- recurrent layers

class Recurrent(Regression):
    """A recurrent layer over 4 time steps of 2 features, then a linear head."""

    def __init__(self, cell):
        super().__init__(lr=0.1)
        self.rnn = cell(2, 6, **({} if cell is nn.LSTMCell else {"batch_first": True}))
        self.head = nn.Linear(6, 1)

    def run(self, x, hooks=True):
        """The output sequence; without ``hooks``, a pass that gradwatch does not see."""
        call = self.rnn if hooks else self.rnn.forward
        x = x.view(-1, 4, 2)
        if not isinstance(self.rnn, nn.LSTMCell):
            return call(x)[0]
        state, outputs = None, []
        for t in range(x.shape[1]):  # a cell returns (h, c): h is the output
            state = call(x[:, t], state)
            outputs.append(state[0])
        return torch.stack(outputs, dim=1)

    def forward(self, x):
        return self.head(self.run(x)[:, -1])

    def on_train_batch_start(self, batch, batch_idx):
        with torch.no_grad():  # the output sequence, with the pre-step weights
            self.sequence = self.run(batch[0], hooks=False)


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU, nn.RNN, nn.LSTMCell])
def test_recurrent_activations_are_those_of_the_output_sequence(cell, tmp_path):
    # issue 12: not mixed with h_n / c_n (nor, for a cell, with c)
    outputs = {}

    def layers(pl_module):
        outputs[pl_module.trainer.global_step] = pl_module.sequence.double()
        return {"rnn": pl_module.rnn, "head": pl_module.head}

    reference = fit(Recurrent(cell), layers=layers, tmp_path=tmp_path)
    for step, snapshot in reference.snapshots.items():
        assert snapshot.layers == ("rnn", "head")
        sequence = outputs[step]
        assert np.isclose(snapshot.activation_mean[0], sequence.mean().item(), rtol=1e-4)
        assert np.isclose(snapshot.activation_variance[0],
                          sequence.var(unbiased=False).item(), rtol=1e-4)
        assert np.isclose(snapshot.activation_max_abs[0], sequence.abs().max().item(),
                          rtol=1e-5)
    assert_figures_match(reference)


# ---------------------------------------------------------------------------- direct parameters

class Gated(nn.Module):
    """A module with its own parameter applied before its child."""

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.full((16,), 1.5))
        self.linear = nn.Linear(16, 16)

    def forward(self, x):
        return self.linear(x * self.gain)


class WithOwnParameters(Regression):
    """A scale held by the LightningModule itself, used first in forward."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 8))
        self.first = nn.Linear(8, 16)
        self.gated = Gated()
        self.head = nn.Linear(16, 1)

    def forward(self, x):
        return self.head(torch.tanh(self.gated(torch.tanh(self.first(x * self.scale)))))


def test_parameters_held_by_a_parent_get_the_depth_of_their_first_use(tmp_path):
    # issue 12: not "after all children"
    reference = fit(WithOwnParameters(), tmp_path=tmp_path)
    root = "WithOwnParameters"
    for snapshot in reference.snapshots.values():
        assert snapshot.layers == (root, "first", "gated", "gated.linear", "head")
    assert_figures_match(reference)


# ---------------------------------------------------------------------------- unused layer

class WithUnusedLayer(Regression):
    def __init__(self):
        super().__init__(tanh_mlp())
        self.unused = nn.Linear(3, 3)  # never called: no gradient, never stepped


def test_a_layer_unused_in_forward_has_no_update_ratio(tmp_path):
    # issue 12: "not measured" (NaN in the Snapshot, absent from /metrics), not 0
    reference = fit(WithUnusedLayer(), scrape_metrics=True, tmp_path=tmp_path)
    for step, snapshot in reference.snapshots.items():
        unused = snapshot.layers.index("unused")
        assert math.isnan(snapshot.update_ratio[unused])
        assert math.isnan(snapshot.grad_norm[unused])
        assert snapshot.weight_norm[unused] > 0
        parsed = reference.metrics[step]
        assert not [k for k in parsed if k[0] == "gradwatch_update_ratio"
                    and ("layer", "unused") in k[1]]
        assert sample(parsed, "gradwatch_update_ratio", layer="net.0") > 0
    assert_figures_match(reference)


# ---------------------------------------------------------------------------- keep working

class HuggingFace(pl.LightningModule):
    """A tiny Hugging Face model built from a config (no weights downloaded), fed token ids
    made from the regression data; its outputs are ModelOutputs."""

    def __init__(self, build):
        super().__init__()
        self.model = build(pytest.importorskip("transformers"))

    @staticmethod
    def tokens(x):
        return (x.abs() * 10).long().clamp(max=39)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)

    def train_dataloader(self):
        return loader()


class TinyGPT2(HuggingFace):
    """2 blocks, lm_head tied to wte."""

    def __init__(self):
        super().__init__(lambda t: t.GPT2LMHeadModel(t.GPT2Config(
            vocab_size=40, n_positions=16, n_embd=16, n_layer=2, n_head=2)))

    def training_step(self, batch, batch_idx):
        tokens = self.tokens(batch[0])
        return self.model(input_ids=tokens, labels=tokens).loss


class TinyBert(HuggingFace):
    """A 2-layer BERT classifier."""

    def __init__(self):
        super().__init__(lambda t: t.BertForSequenceClassification(t.BertConfig(
            vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=32, max_position_embeddings=16, num_labels=2)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.model(input_ids=self.tokens(x), labels=(y[:, 0] > 0).long()).loss


def test_hugging_face_gpt2_with_tied_embeddings(tmp_path):
    # issue 12, "keep working": GPT-2 from a config, the tied lm_head counted once globally
    reference = fit(TinyGPT2(), max_steps=4, tmp_path=tmp_path)
    model = reference.snapshots[0]
    assert model.layers[0] == "model.transformer.wte" and "model.lm_head" in model.layers
    lm_head, wte = (model.layers.index(n) for n in ("model.lm_head", "model.transformer.wte"))
    assert model.grad_norm[lm_head] == model.grad_norm[wte]  # one matrix, two layers
    assert_figures_match(reference)


def test_hugging_face_bert(tmp_path):
    # issue 12, "keep working": BERT from a config, in forward order
    reference = fit(TinyBert(), max_steps=4, tmp_path=tmp_path)
    layers = reference.snapshots[0].layers
    assert layers[0] == "model.bert.embeddings.word_embeddings"
    assert layers[-1] == "model.classifier"
    assert_figures_match(reference)
