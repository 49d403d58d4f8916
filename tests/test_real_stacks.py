"""The stack people train with today (issue 26): gradient checkpointing, peft LoRA,
``nn.MultiheadAttention``, Hugging Face activations, real logit heads, the exact attention
maximum, the last step with two optimizers; each against an independent torch computation."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from benchmarks.instability import monitored_step
from gradwatch.monitor.capture.monitor import Monitor

pytestmark = pytest.mark.training

ACTIVATION_FIGURES = ("activation_mean", "activation_variance", "activation_max_abs",
                      "activation_dead_ratio", "layer_output_max_abs")


def snapshots(model, batches, loss_fn, lr=0.05):
    """A plain loop under a Monitor sampling every step: the Snapshot of each step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    monitor = Monitor(model, optimizers=[optimizer], every_n_steps=1)
    taken = []
    for step, batch in enumerate(batches):
        monitored_step(monitor, step, optimizer, partial(loss_fn, model, batch))
        taken.append(monitor.last_snapshot)
    monitor.close()
    return taken


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.inner = nn.Linear(width, width)
        self.act = nn.Tanh()
        self.drop = nn.Dropout(0.3)

    def forward(self, x):
        return self.drop(self.act(self.inner(x)))


class Checkpointed(nn.Module):
    """Two blocks run under ``torch.utils.checkpoint`` (or not, ``mode`` None)."""

    def __init__(self, mode: str | None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.mode = mode
        self.embed = nn.Linear(8, 16)
        self.blocks = nn.ModuleList([Block(16), Block(16)])
        self.head = nn.Linear(16, 1)

    def forward(self, x):
        x = self.embed(x)
        for block in self.blocks:
            if self.mode is None:
                x = block(x)
            else:  # a recompute that differs: the dropout masks are drawn again
                x = checkpoint(block, x, use_reentrant=self.mode == "reentrant",
                               preserve_rng_state=False)
        return self.head(x)


def regression_loss(model, batch):
    x, y = batch
    return (model(x) - y).square().nanmean()


@pytest.mark.parametrize("mode", ["reentrant", "non-reentrant"])
def test_checkpointed_forwards_are_counted_once(mode):
    """NaN counts and activation figures equal the same seeded run without checkpointing;
    the NaN counts equal torch's count of each layer's output."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(32, 8, generator=generator)
    x[:5, 2] = math.nan  # rows of NaN through every layer
    batch = (x, torch.randn(32, 1, generator=generator))
    plain_model = Checkpointed(None)
    outputs: dict[str, torch.Tensor] = {}

    def keep(name, module, args, output):
        outputs[name] = output.detach().clone()

    for name, module in plain_model.named_modules():
        if isinstance(module, nn.Linear):
            module.register_forward_hook(partial(keep, name))
    torch.manual_seed(2)
    (plain,) = snapshots(plain_model, [batch], regression_loss)
    torch.manual_seed(2)
    (checkpointed,) = snapshots(Checkpointed(mode), [batch], regression_loss)
    assert checkpointed.layers == plain.layers
    nan_counts = checkpointed.nonfinite[1, :, 0]
    for depth, name in enumerate(checkpointed.layers):
        assert nan_counts[depth] == int(outputs[name].isnan().sum()) > 0, name
    assert (checkpointed.nonfinite == plain.nonfinite).all()
    for figure in ACTIVATION_FIGURES:
        np.testing.assert_array_equal(getattr(checkpointed, figure), getattr(plain, figure),
                                      err_msg=figure)


def llama(**overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16)
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**{**config, **overrides}))


def lm_loss(model, tokens):
    return model(input_ids=tokens, labels=tokens).loss


def tokens(batches=1, batch=2, seq=8, vocab=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(vocab, (batch, seq), generator=generator) for _ in range(batches)]


def test_hugging_face_activation_modules_are_the_activation_of_the_layer_before():
    """In a Llama MLP, gate_proj's activation is the output of the SiLU applied after it."""
    pytest.importorskip("transformers")
    model = llama()
    mlp = model.model.layers[0].mlp
    assert type(mlp.act_fn).__module__ == "transformers.activations"
    seen: dict[str, torch.Tensor] = {}
    mlp.act_fn.register_forward_hook(lambda m, a, out: seen.__setitem__("act", out.detach()))
    mlp.gate_proj.register_forward_hook(lambda m, a, out: seen.__setitem__("gate", out.detach()))
    (snapshot,) = snapshots(model, tokens(), lm_loss)
    depth = snapshot.layers.index("model.layers.0.mlp.gate_proj")
    act, gate = seen["act"].double(), seen["gate"].double()
    assert snapshot.activation_variance[depth] == pytest.approx(
        act.var(unbiased=False).item(), rel=1e-4)
    assert snapshot.activation_mean[depth] == pytest.approx(act.mean().item(), rel=1e-4,
                                                            abs=1e-7)
    assert abs(gate.var().item() - act.var().item()) > 1e-3  # the test can tell them apart


@pytest.mark.parametrize("limits", [{"max_steps": 10}, {"max_epochs": 1, "limit_train_batches": 3}])
def test_the_fits_last_step_is_sampled_with_two_optimizers(tmp_path, limits):
    """Manual optimization, both optimizers stepping each batch (global_step moves by 2):
    the last batch's step is sampled, with the weights it started from."""
    from gradwatch.callbacks import TrainingDiagnostics

    from .lightning_models import lightning, trainer, two_optimizer_module

    pl = lightning()
    started: list[tuple[int, float]] = []

    class Watch(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            norm = torch.linalg.vector_norm(torch.cat([p.detach().flatten()
                                                       for p in module.head.parameters()]))
            started.append((trainer.global_step, float(norm)))

    torch.manual_seed(0)
    diagnostics = TrainingDiagnostics(every_n_steps=1000)
    run = trainer(callbacks=[Watch(), diagnostics], root=str(tmp_path), **limits)
    run.fit(two_optimizer_module())
    last_step, head_norm = started[-1]
    assert last_step == run.global_step - 2 > 0
    snapshot = diagnostics.last_snapshot
    assert snapshot is not None and snapshot.step == last_step
    assert snapshot.weight_norm[snapshot.layers.index("head")] == pytest.approx(head_norm,
                                                                               rel=1e-6)


def lora(model, **overrides):
    peft = pytest.importorskip("peft")
    config = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    return peft.get_peft_model(model, peft.LoraConfig(**{**config, **overrides}))


def test_peft_lora_raises_nothing_at_step_0_and_its_zero_b_has_no_update_ratio():
    """lora_B is zero by design (B @ A starts at 0; A's rows break B's symmetry): no
    SymmetricInitialization, and no +Inf update ratio ||dB|| / ||B|| with ||B|| = 0; the
    other ratios equal torch's. A zeroed A leaves nothing to break it: that still warns."""
    from gradwatch.monitor.judging.init_audit import INIT_SYMMETRY, audit_initialization
    from gradwatch.monitor.probes.weight_audit import audit_weights

    model = lora(llama())
    assert audit_initialization(audit_weights(model)) == []
    named = dict(model.named_modules())
    before = {name: [p.detach().clone() for p in module.parameters(recurse=False)]
              for name, module in named.items() if "lora_" in name}
    (snapshot,) = snapshots(model, tokens(), lm_loss, lr=0.1)
    b_layers = [n for n in snapshot.layers if ".lora_B." in n]
    a_layers = [n for n in snapshot.layers if ".lora_A." in n]
    assert len(b_layers) == len(a_layers) == 2
    for name in b_layers:
        assert math.isnan(snapshot.update_ratio[snapshot.layers.index(name)])
        assert snapshot.update_norm[snapshot.layers.index(name)] > 0  # it did move
    for name in a_layers:
        (weight,) = before[name]
        (after,) = named[name].parameters(recurse=False)
        ratio = torch.linalg.vector_norm(after.detach() - weight) / torch.linalg.vector_norm(weight)
        assert snapshot.update_ratio[snapshot.layers.index(name)] == pytest.approx(
            ratio.item(), rel=1e-4)
    zeroed = lora(llama())
    with torch.no_grad():
        for name, module in zeroed.named_modules():
            if name.endswith("lora_A.default"):
                module.weight.zero_()
    (finding,) = audit_initialization(audit_weights(zeroed))
    assert finding.name == INIT_SYMMETRY


def encoder_layer_order(prefix: str) -> list[str]:
    """A post-norm nn.TransformerEncoderLayer's layers in the order its forward uses them:
    x = norm1(x + out_proj(attention(x))); x = norm2(x + linear2(act(linear1(x))))."""
    return [f"{prefix}.{name}" for name in ("self_attn", "self_attn.out_proj", "norm1",
                                            "linear1", "linear2", "norm2")]


def test_multihead_attention_out_proj_is_placed_where_its_weight_is_used(tmp_path):
    """``out_proj`` is never called (torch uses its weight inside the attention function):
    its depth is right after its attention, not after the head; also when the
    LightningModule's training_step calls its submodules, never its own forward."""
    from gradwatch.callbacks import TrainingDiagnostics

    from .lightning_models import lightning, trainer

    pl = lightning()

    class Encoder(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(4, 16)
            layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
            self.head = nn.Linear(16, 3)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self.head(self.encoder(self.embed(x))[:, 0]), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

        def train_dataloader(self):
            generator = torch.Generator().manual_seed(0)
            data = torch.utils.data.TensorDataset(torch.randn(8, 5, 4, generator=generator),
                                                  torch.randint(3, (8,), generator=generator))
            return torch.utils.data.DataLoader(data, batch_size=4)

    torch.manual_seed(0)
    diagnostics = TrainingDiagnostics(every_n_steps=1)
    trainer(callbacks=[diagnostics], root=str(tmp_path), max_steps=2).fit(Encoder())
    expected = ["embed", *encoder_layer_order("encoder.layers.0"),
                *encoder_layer_order("encoder.layers.1"), "head"]
    assert list(diagnostics.last_snapshot.layers) == expected


class MaskedAttention(nn.Module):
    """Grouped-query SDPA with a padding mask and an additive bias; then an MHA with a key
    padding mask and a float attention mask."""

    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(8, 16)  # 4 heads of 4
        self.kv = nn.Linear(8, 16)  # 2 key heads of 4, keys and values
        self.mha = nn.MultiheadAttention(16, 4, batch_first=True)
        self.head = nn.Linear(16, 3)

    def sdpa_inputs(self, x, padding, bias):
        b, s, _ = x.shape
        q = self.q(x).view(b, s, 4, 4).transpose(1, 2)
        k, v = self.kv(x).view(b, s, 2, 2, 4).permute(2, 0, 3, 1, 4)
        allowed = ~padding[:, None, None, :]  # True: attend
        return q, k, v, allowed, bias

    def forward(self, x, padding, bias, mha_mask):
        q, k, v, allowed, bias = self.sdpa_inputs(x, padding, bias)
        mask = torch.zeros(allowed.shape).masked_fill(~allowed, -math.inf) + bias
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        out = out.transpose(1, 2).reshape(*x.shape[:2], 16)
        out, _ = self.mha(out, out, out, key_padding_mask=padding, attn_mask=mha_mask,
                          need_weights=False)
        return self.head(out)


def test_attention_logit_max_is_the_exact_max_over_the_whole_batch(monkeypatch):
    """Every sequence, head and query row, in chunks (here of 64 logits), masks and biases
    included: torch's max of q.k^T / sqrt(d) + mask + bias, for SDPA (grouped-query) and
    nn.MultiheadAttention."""
    from gradwatch.monitor.probes import attention_logits

    monkeypatch.setattr(attention_logits, "CHUNK_LOGITS", 64)
    generator = torch.Generator().manual_seed(3)
    batch, length = 7, 70  # more sequences and rows than the entropy's sample
    x = torch.randn(batch, length, 8, generator=generator)
    x[6] *= 3  # the largest logits in a sequence the entropy's sample leaves out
    padding = torch.zeros(batch, length, dtype=torch.bool)
    padding[1, 50:] = padding[5, 20:] = True
    bias = torch.randn(1, 4, length, length, generator=generator)
    mha_mask = torch.randn(length, length, generator=generator)
    torch.manual_seed(0)
    model = MaskedAttention()
    seen: dict[str, torch.Tensor] = {}
    model.mha.register_forward_pre_hook(
        lambda m, args, kwargs: seen.__setitem__("hidden", args[0].detach()),
        with_kwargs=True)
    with torch.no_grad():
        q, k, _, allowed, bias = model.sdpa_inputs(x, padding, bias)
        k = k.repeat_interleave(2, dim=1)
        sdpa = (q @ k.transpose(-2, -1) / 2.0 + bias).masked_fill(~allowed, -math.inf)
    (snapshot,) = snapshots(model, [(x, padding, bias, mha_mask)],
                            lambda m, b: m(*b).square().mean(), lr=0.0)
    with torch.no_grad():
        hidden, w, b = seen["hidden"], model.mha.in_proj_weight, model.mha.in_proj_bias
        mq = (hidden @ w[:16].T + b[:16]).view(batch, length, 4, 4).transpose(1, 2)
        mk = (hidden @ w[16:32].T + b[16:32]).view(batch, length, 4, 4).transpose(1, 2)
        mha = (mq @ mk.transpose(-2, -1) / 2.0 + mha_mask).masked_fill(
            padding[:, None, None, :], -math.inf)
    assert snapshot.attention_layers == ("model", "mha")
    expected = [sdpa.max().item(), mha.max().item()]
    np.testing.assert_allclose(snapshot.attention_logit_max, expected, rtol=1e-5)
    for scores, exported in zip((sdpa, mha), snapshot.attention_logit_max):
        sampled = scores[:4, :, torch.linspace(0, length - 1, 64).round().long()]
        assert exported > sampled.max().item() + 1e-3  # the test tells the batch from a sample


def test_only_a_real_logit_head_has_output_logits(tmp_path):
    """The README's regression MLP (one output) and the demo's exploding MLP have no logit
    head: no output logits, no OutputLogitDivergence about a hidden layer. A classifier's
    head and a Hugging Face classifier's ``classifier`` have them, equal to torch's."""
    from gradwatch import demo
    from gradwatch.callbacks import TrainingDiagnostics

    from .lightning_models import trainer

    torch.manual_seed(0)
    readme = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 1))
    data = torch.randn(32, 16)
    (snapshot,) = snapshots(readme, [(data, data[:, :1])], regression_loss)
    assert math.isnan(snapshot.output_logit_logsumexp) and math.isnan(snapshot.output_logit_max)

    (exploding,) = [s for s in demo.SCENARIOS if s.name == "exploding"]
    torch.manual_seed(0)
    diagnostics = TrainingDiagnostics(every_n_steps=10)
    run = trainer(callbacks=[diagnostics], root=str(tmp_path), max_steps=exploding.steps,
                  gradient_clip_val=exploding.clip)
    run.fit(demo.make_module(exploding), demo.regression_data(exploding.steps))
    fired = {a.name for a in diagnostics.engine.history if a.status == "firing"}
    assert "OutputLogitDivergence" not in fired
    assert math.isnan(diagnostics.last_snapshot.output_logit_logsumexp)

    torch.manual_seed(0)
    classifier = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 5))
    labels = torch.randint(5, (32,))
    (snapshot,) = snapshots(classifier, [(data, labels)],
                            lambda m, b: F.cross_entropy(m(b[0]), b[1]), lr=0.0)
    with torch.no_grad():
        logits = classifier(data).double()
    assert snapshot.output_logit_logsumexp == pytest.approx(
        torch.logsumexp(logits, -1).mean().item(), rel=1e-6)
    assert snapshot.output_logit_max == pytest.approx(logits.max().item(), rel=1e-6)


def test_a_hugging_face_classifiers_logits_are_its_classifiers():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(num_hidden_layers=1, hidden_size=16, num_attention_heads=2,
                                     intermediate_size=32, vocab_size=64, num_labels=3,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config)
    batch, labels = tokens()[0], torch.tensor([0, 2])
    (snapshot,) = snapshots(model, [batch], lambda m, t: m(input_ids=t, labels=labels).loss,
                            lr=0.0)
    with torch.no_grad():
        logits = model(input_ids=batch).logits.double()
    assert snapshot.output_logit_logsumexp == pytest.approx(
        torch.logsumexp(logits, -1).mean().item(), rel=1e-6)
    assert snapshot.output_logit_mean == pytest.approx(logits.mean().item(), rel=1e-6)


def test_channels_last_outputs_are_recorded():
    """A copy keeps its output's strides: channels-last outputs are recorded (Segformer's
    crashed the sampled step), their figures torch's."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 2)).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 8, 8).to(memory_format=torch.channels_last)
    seen: dict[str, torch.Tensor] = {}
    model[2].register_forward_hook(lambda m, a, out: seen.__setitem__("conv", out.detach()))
    (snapshot,) = snapshots(model, [(x, torch.randn(2, 2))], regression_loss)
    assert not seen["conv"].is_contiguous()
    assert snapshot.activation_variance[snapshot.layers.index("2")] == pytest.approx(
        seen["conv"].double().var(unbiased=False).item(), rel=1e-5)
