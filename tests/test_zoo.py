"""The zoo (issue 26): architectures nobody on the project wrote, chosen by iterating over
transformers' causal-LM, seq2seq, masked-LM and image-classification auto-mappings (tiny
configs, never a download), plus peft adapters and torch's own Transformer modules. Each
trains a few steps under a Monitor sampling every step, and:

- its per-layer and global gradient norms equal torch's (``torch.linalg.vector_norm``);
- every module owning parameters is a layer: none silently missing;
- every innermost attention module called (class ``...Attention``) has attention figures;
- no alert fires at step 0 on the library's own init (the init audit included);
- with gradient checkpointing, where the model supports it, the activation figures equal
  those of the run without it.

All of them run in CI (marker ``zoo``, ``make zoo`` alone: about 90 s on 2 shared cores).
One that cannot work is skipped by name, with why.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from torch import nn

from gradwatch.monitor.capture.monitor import Monitor
from gradwatch.monitor.judging.engine import AlertEngine

from .zoo_models import Architecture, architectures, batches, build, loss_of

pytestmark = [pytest.mark.zoo, pytest.mark.training, pytest.mark.usefixtures("one_torch_thread")]

#: Steps per run, all sampled.
STEPS = 2
#: A config that does not shrink below this many parameters is not tiny.
MAX_PARAMETERS = 1_000_000
#: A model that takes longer than this to build and take its first step is not tiny.
MAX_FIRST_STEP_SECONDS = 5.0
#: Class-name words of attention modules without softmax logits.
LINEAR_ATTENTION = ("Lightning", "Linear")
ACTIVATION_FIGURES = ("activation_mean", "activation_variance", "activation_max_abs",
                      "layer_output_max_abs")


def zoo() -> list[Architecture]:
    try:
        return architectures()
    except ImportError:  # no transformers: the zoo's Hugging Face part is not collected
        return []


class Keep:
    """An observer: the Pulses and Snapshots, on the training thread."""

    def __init__(self) -> None:
        self.pulses: list = []
        self.snapshots: list = []

    def on_pulse(self, pulse, monitor) -> None:
        self.pulses.append(pulse)

    def on_snapshot(self, snapshot, monitor) -> None:
        self.snapshots.append(snapshot)


class Run:
    """A model trained STEPS steps under a Monitor (every step sampled) and an AlertEngine,
    with torch's own figures of each step."""

    def __init__(self, model: nn.Module, data: list, loss_fn) -> None:
        self.keep, self.engine = Keep(), AlertEngine()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
        monitor = Monitor(model, optimizers=[optimizer], every_n_steps=1,
                          observers=[self.keep, self.engine])
        self.engine.audit(model, monitor, step=0)
        self.layer_norms: list[dict[str, float]] = []
        self.global_norms: list[float] = []
        self.attention_called: set[str] = set()
        handles = attention_modules_called(model, self.attention_called)
        for step, batch in enumerate(data):
            with monitor.step(step):
                loss = loss_fn(model, batch)
                monitor.observe_loss(loss)
                loss.backward()
                monitor.observe_gradients()
                self.layer_norms.append(layer_grad_norms(model))
                self.global_norms.append(global_grad_norm(model))
                optimizer.step()
                optimizer.zero_grad()
            for handle in handles:
                handle.remove()
            handles = []
        monitor.close()
        self.layers = expected_layers(model)

    def alerts_at(self, step: int) -> list[str]:
        return [a.name for a in self.engine.history if a.status == "firing" and a.step == step]


def own_parameters(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module._parameters.values() if p is not None]


def expected_layers(model: nn.Module) -> set[str]:
    """Every module owning parameters, by its qualified name (the root by its class)."""
    return {name or type(module).__name__ for name, module in model.named_modules()
            if own_parameters(module)}


def layer_grad_norms(model: nn.Module) -> dict[str, float]:
    """torch's norm of each layer's gradients (NaN: none of its parameters has one)."""
    norms = {}
    for name, module in model.named_modules():
        grads = [p.grad for p in own_parameters(module) if p.grad is not None]
        if own_parameters(module):
            norms[name or type(module).__name__] = math.nan if not grads else float(
                torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float())
                                                      for g in grads])))
    return norms


def global_grad_norm(model: nn.Module) -> float:
    grads = [p.grad.float() for p in model.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g)
                                                       for g in grads])))


def attention_modules_called(model: nn.Module, called: set[str]) -> list:
    """Hooks noting the modules of an ``...Attention`` class that run, but for linear
    attention (MiniMax's "lightning" attention computes no softmax logits)."""
    named = [(name, m) for name, m in model.named_modules()
             if type(m).__name__.endswith("Attention")
             and not any(word in type(m).__name__ for word in LINEAR_ATTENTION)]
    return [m.register_forward_hook(lambda *_, name=name: called.add(name)) for name, m in named]


def innermost(names: set[str]) -> set[str]:
    """The names no other one is inside of (BertSelfAttention, not BertAttention around it)."""
    return {n for n in names if not any(other.startswith(n + ".") for other in names)}


def check_run(run: Run, expect_attention: bool = True) -> None:
    """The checks every zoo member passes."""
    snapshots, pulses = run.keep.snapshots, run.keep.pulses
    assert [s.step for s in snapshots] == list(range(STEPS))
    for snapshot, expected in zip(snapshots, run.layer_norms):
        assert set(snapshot.layers) == run.layers, "a layer missing or one too many"
        measured = dict(zip(snapshot.layers, snapshot.grad_norm))
        for name, norm in expected.items():
            if math.isnan(norm):
                assert math.isnan(measured[name]), name
            else:
                assert measured[name] == pytest.approx(norm, rel=1e-4, abs=1e-12), name
    by_step = {p.step: p for p in pulses}
    for step, norm in enumerate(run.global_norms):
        assert by_step[step].global_grad_norm == pytest.approx(norm, rel=1e-4)
    if expect_attention:
        sites = snapshots[0].attention_layers  # a softmax module inside one counts for it
        for name in innermost(run.attention_called):
            assert any(s == name or s.startswith(name + ".") for s in sites), (name, sites)
        assert all(np.isfinite(snapshots[0].attention_logit_max))
    assert run.alerts_at(0) == [], [(a.name, a.layers, a.summary) for a in run.engine.history]


#: Architectures gradwatch cannot measure fully, and why.
THREE_D_SOFTMAX = ("attention through a softmax over 3-D [batch x heads, queries, keys] "
                   "logits (BART's old eager code): not intercepted, a 3-D softmax is also a "
                   "router's or a classifier's")
NO_SOFTMAX = "approximate attention without softmax logits"
KNOWN_LIMITS = {
    "MvpForConditionalGeneration": THREE_D_SOFTMAX,
    "MvpForCausalLM": THREE_D_SOFTMAX,
    "TrOCRForCausalLM": THREE_D_SOFTMAX,
    "XGLMForCausalLM": THREE_D_SOFTMAX,
    "LEDForConditionalGeneration": THREE_D_SOFTMAX + " (its decoder)",
    "MraForMaskedLM": NO_SOFTMAX + " (multi-resolution)",
    "YosoForMaskedLM": NO_SOFTMAX + " (LSH Bernoulli sampling)",
    "LongT5ForConditionalGeneration": "its encoder's local attention takes a softmax over "
    "5-D blocks of logits: not intercepted",
}


def built_or_skipped(arch: Architecture, **overrides) -> nn.Module:
    """The tiny model, having taken one step unmonitored (no update); or skip, saying why."""
    if arch.class_name in KNOWN_LIMITS:
        pytest.skip(f"{arch.class_name}: {KNOWN_LIMITS[arch.class_name]}")
    start = time.perf_counter()
    try:
        model = build(arch, **overrides)
        model.train()
        loss_of(model, batches(arch, model, 1)[0]).backward()
    except Exception as error:  # the library's own limits, not gradwatch's
        pytest.skip(f"{arch.class_name}: does not build or train from a tiny config: "
                    f"{type(error).__name__}: {str(error).splitlines()[0][:120]}")
    model.zero_grad(set_to_none=True)
    size = sum(p.numel() for p in model.parameters())
    if size > MAX_PARAMETERS:
        pytest.skip(f"{arch.class_name}: its config does not shrink ({size:,} parameters)")
    if time.perf_counter() - start > MAX_FIRST_STEP_SECONDS:
        pytest.skip(f"{arch.class_name}: over {MAX_FIRST_STEP_SECONDS:g} s to a first step")
    return model


@pytest.mark.parametrize("arch", zoo(), ids=lambda a: a.id)
def test_hugging_face_architecture(arch):
    model = built_or_skipped(arch)
    data = batches(arch, model, STEPS)
    plain = Run(model, data, loss_of)
    check_run(plain)
    if not getattr(model, "supports_gradient_checkpointing", False):
        return
    again = build(arch)
    again.train()
    again.gradient_checkpointing_enable()
    checkpointed = Run(again, data, loss_of)
    check_run(checkpointed)
    # the steps whose losses torch computed alike: a recompute may round the gradients, and
    # so the next step's weights, otherwise
    ours, theirs = ([p.loss for p in r.keep.pulses] for r in (plain, checkpointed))
    alike = next((s for s, (a, b) in enumerate(zip(ours, theirs)) if a != b), len(ours))
    if not alike:  # torch's own forward differs: nothing to compare with
        pytest.skip(f"{arch.class_name}: its forward differs under gradient checkpointing "
                    f"(loss {ours[0]} vs {theirs[0]}); all other checks passed")
    same_activations(checkpointed, plain, steps=alike)


def by_class(class_name: str) -> Architecture:
    (arch,) = [a for a in architectures() if a.class_name == class_name]
    return arch


#: peft adapters on a few of them: (method, architecture, its config's arguments).
ADAPTERS = {
    "lora-llama": ("LoraConfig", "LlamaForCausalLM",
                   {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}),
    "lora-gpt2": ("LoraConfig", "GPT2LMHeadModel",
                  {"r": 4, "lora_alpha": 8, "target_modules": ["c_attn"],
                   "fan_in_fan_out": True}),
    "lora-bert": ("LoraConfig", "BertForMaskedLM",
                  {"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"]}),
    "lora-bart": ("LoraConfig", "BartForConditionalGeneration",
                  {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}),
    "ia3-llama": ("IA3Config", "LlamaForCausalLM",
                  {"target_modules": ["k_proj", "v_proj", "down_proj"],
                   "feedforward_modules": ["down_proj"]}),
}


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_peft_adapter(name):
    """A peft adapter on a tiny model: only the adapter trains (the frozen base's layers have
    no gradient, NaN, as torch's); no SymmetricInitialization on LoRA's zero B. LoRA on
    Llama also with gradient checkpointing: the same activation figures."""
    peft = pytest.importorskip("peft")
    method, class_name, arguments = ADAPTERS[name]
    arch = by_class(class_name)

    def adapted(checkpointing: bool) -> nn.Module:
        model = build(arch)
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        config = getattr(peft, method)(**arguments)
        return peft.get_peft_model(model, config)

    model = adapted(False)
    data = batches(arch, model, STEPS)
    plain = Run(model, data, loss_of)
    check_run(plain)
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained and all(("lora_" in n or "ia3_" in n) for n in trained)
    if name == "lora-llama":
        checkpointed = Run(adapted(True), data, loss_of)
        check_run(checkpointed)
        same_activations(checkpointed, plain)


def same_activations(ours: Run, theirs: Run, steps: int = STEPS) -> None:
    for mine, reference in zip(ours.keep.snapshots[:steps], theirs.keep.snapshots[:steps]):
        assert mine.layers == reference.layers
        for figure in ACTIVATION_FIGURES:
            np.testing.assert_allclose(getattr(mine, figure), getattr(reference, figure),
                                       rtol=1e-5, atol=1e-7, err_msg=figure)
        np.testing.assert_array_equal(mine.nonfinite, reference.nonfinite)


class TorchTransformer(nn.Module):
    """Token embedding, one of torch's Transformer modules, a vocabulary head."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.kind = kind
        self.embed = nn.Embedding(64, 32)
        options = dict(d_model=32, nhead=2, dim_feedforward=64, dropout=0.0, batch_first=True)
        if kind == "Transformer":
            self.body = nn.Transformer(num_encoder_layers=1, num_decoder_layers=1, **options)
        elif kind == "TransformerEncoder":
            self.body = nn.TransformerEncoder(nn.TransformerEncoderLayer(**options), 2,
                                              enable_nested_tensor=False)
        else:
            self.body = nn.TransformerDecoder(nn.TransformerDecoderLayer(**options), 2)
        self.lm_head = nn.Linear(32, 64)

    def forward(self, tokens):
        x = self.embed(tokens)
        causal = nn.Transformer.generate_square_subsequent_mask(tokens.shape[1])
        if self.kind == "Transformer":
            x = self.body(x, x, tgt_mask=causal, tgt_is_causal=True)
        elif self.kind == "TransformerEncoder":
            x = self.body(x, mask=causal, is_causal=True)
        else:
            x = self.body(x, x, tgt_mask=causal, tgt_is_causal=True)
        return self.lm_head(x)


def next_token_loss(model, tokens):
    logits = model(tokens[:, :-1])
    return nn.functional.cross_entropy(logits.reshape(-1, 64), tokens[:, 1:].reshape(-1))


@pytest.mark.parametrize("kind", ["Transformer", "TransformerEncoder", "TransformerDecoder"])
def test_torch_transformer_modules(kind):
    """torch's own modules: out_proj placed with its attention, attention on every
    MultiheadAttention, no alert at step 0, torch's gradient norms."""
    model = TorchTransformer(kind)
    generator = torch.Generator().manual_seed(1)
    data = [torch.randint(64, (2, 9), generator=generator) for _ in range(STEPS)]
    run = Run(model, data, next_token_loss)
    check_run(run)
    layers = run.keep.snapshots[0].layers
    for i, name in enumerate(layers):
        if name.endswith(".out_proj"):
            assert layers[i - 1] == name.removesuffix(".out_proj"), layers
    assert layers[-1] == "lm_head"
