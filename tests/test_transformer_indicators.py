"""Leading indicators of transformer instability (issue 17): the new sampled-step statistics
against independent computations, their detectors on a CPU reproduction and its healthy
twins, and the opt-in responses (skip-on-spike, checkpoint-on-alert) in real Lightning fits."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from prometheus_client import generate_latest
from torch import nn
from torch.profiler import ProfilerActivity, profile

from benchmarks.instability import (ADAM_RUNS, ANISOTROPY_RUNS, OUTPUT_RUNS, RUNS,
                                    TinyDecoder, divergence_step, lm_loss, monitored_step,
                                    output_geometry, run_alerts, token_batches, train)
from gradwatch.callbacks import TrainingDiagnostics
from gradwatch.monitor.probes import attention
from gradwatch.monitor.probes.attention_logits import MAX_QUERY_ROWS, MAX_SEQUENCES
from gradwatch.monitor.judging.engine import AlertEngine
from gradwatch.monitor.records.findings import Finding, Verdict
from gradwatch.monitor.records.thresholds import Thresholds
from gradwatch.monitor.judging.transformer import AdamUpdateDecorrelation, OutputLogitDivergence
from gradwatch.monitor.capture.monitor import Monitor
from gradwatch.monitor.capture.skip_on_spike import SkipOnSpike

from .detect_fixtures import pulse
from .detect_fixtures import snapshot as make_snapshot
from .test_monitor_values import Collect
from .helpers import read_scalars, regression_data, sample, samples, scrape, tanh_mlp
from .lightning_models import lightning, trainer
from .test_host_syncs import SCALAR_READS, CountHostCopies


def run_monitored(model, optimizer, batches, step_fn):
    """A plain loop under a Monitor sampling every step; the last Snapshot."""
    monitor = Monitor(model, optimizers=[optimizer], every_n_steps=1)
    for step, batch in enumerate(batches):
        monitored_step(monitor, step, optimizer, partial(step_fn, model, batch))
    monitor.close()
    return monitor.last_snapshot


def reference_attention(logits: torch.Tensor) -> tuple[float, float]:
    """Max unmasked logit, mean row entropy -sum p log p (masked entries are -inf)."""
    p = torch.softmax(logits.double(), dim=-1)
    entropy = -(p * torch.log(p.clamp(min=1e-300))).sum(-1)
    return logits[torch.isfinite(logits)].max().item(), entropy.mean().item()


@pytest.mark.unit
def test_attention_and_output_logit_statistics_of_sdpa_equal_a_direct_computation():
    torch.manual_seed(0)
    model = TinyDecoder(seq=32)
    tokens = token_batches(1, seq=33)[0]
    captured = {}
    for i, block in enumerate(model.blocks):
        block.qkv.register_forward_hook(
            lambda m, a, out, i=i: captured.__setitem__(i, out.detach().clone()))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # weights stay: one forward
    snapshot = run_monitored(model, optimizer, [tokens], lm_loss)
    with torch.no_grad():
        logits = model(tokens[:, :-1])
    assert snapshot.attention_layers == ("blocks.0", "blocks.1")
    assert tokens.shape[0] > MAX_SEQUENCES  # the entropy: the first sequences; max: all
    for i, block in enumerate(model.blocks):
        qkv = captured[i]
        b, s, _ = qkv.shape
        q, k, _ = qkv.view(b, s, 3, block.heads, -1).unbind(2)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
        scores = scores.masked_fill(~torch.ones(s, s, dtype=torch.bool).tril(), -math.inf)
        top, _ = reference_attention(scores)
        _, entropy = reference_attention(scores[:MAX_SEQUENCES])
        assert snapshot.attention_logit_max[i] == pytest.approx(top, rel=1e-5)
        assert snapshot.attention_entropy[i] == pytest.approx(entropy, rel=1e-5)
    log_z = torch.logsumexp(logits.double(), dim=-1).mean().item()
    assert snapshot.output_logit_logsumexp == pytest.approx(log_z, rel=1e-6)
    assert snapshot.output_logit_max == pytest.approx(logits.max().item(), rel=1e-6)
    assert snapshot.output_logit_mean == pytest.approx(logits.double().mean().item(), abs=1e-6)


class LongAttention(nn.Module):
    """One causal SDPA call over the projections of ``x``."""

    def __init__(self) -> None:
        super().__init__()
        self.qk = nn.Linear(8, 16)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        q, k = self.qk(x).view(*x.shape[:2], 2, 2, 4).transpose(1, 3).unbind(1)
        out = F.scaled_dot_product_attention(q, k, k, is_causal=True)
        return self.head(out.transpose(1, 2).reshape(x.shape))


@pytest.mark.unit
@pytest.mark.parametrize("interception", ["sdpa", "softmax"])
def test_long_sequences_have_the_exact_max_and_the_entropy_of_spaced_rows_of_the_first_ones(
        interception):
    torch.manual_seed(0)
    model = LongAttention()
    if interception == "softmax":  # the way Hugging Face eager attention computes it
        def eager(q, k, v, is_causal):
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
            causal = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).triu(1)
            return scores.masked_fill(causal, -math.inf).softmax(dim=-1) @ v
        patch = pytest.MonkeyPatch()
        patch.setattr(F, "scaled_dot_product_attention", eager)
    x = torch.randn(7, 150, 8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    try:
        snapshot = run_monitored(model, optimizer, [x], lambda m, x: m(x).square().mean())
    finally:
        if interception == "softmax":
            patch.undo()
    with torch.no_grad():
        q, k = model.qk(x).view(7, 150, 2, 2, 4).transpose(1, 3).unbind(1)
    rows = torch.linspace(0, 149, MAX_QUERY_ROWS).round().long()
    scores = (q @ k.transpose(-2, -1)) / 2.0
    causal = torch.ones(150, 150, dtype=torch.bool).triu(1)
    scores = scores.masked_fill(causal, -math.inf)
    top, _ = reference_attention(scores)
    sampled_top, entropy = reference_attention(scores[:MAX_SEQUENCES, :, rows])
    assert snapshot.attention_logit_max[0] == pytest.approx(top, rel=1e-5)
    assert snapshot.attention_entropy[0] == pytest.approx(entropy, rel=1e-5)
    assert top > sampled_top + 0.1  # the test can tell the whole batch from the sample
    _, all_entropy = reference_attention(scores[:MAX_SEQUENCES])
    assert abs(all_entropy - entropy) > 1e-3  # the test can tell the rows apart


class MhaModel(nn.Module):
    def __init__(self, need_weights: bool) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.head = nn.Linear(16, 8)
        self.need_weights = need_weights

    def forward(self, x):
        out, _ = self.attn(x, x, x, need_weights=self.need_weights)
        return self.head(out)


@pytest.mark.unit
@pytest.mark.parametrize("need_weights", [True, False])
def test_multihead_attention_is_intercepted_with_or_without_weights(need_weights):
    torch.manual_seed(0)
    model = MhaModel(need_weights)
    x = torch.randn(6, 10, 16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    snapshot = run_monitored(model, optimizer, [x], lambda m, x: m(x).square().mean())
    attn = model.attn
    with torch.no_grad():  # the max: over the whole batch
        q = (x @ attn.in_proj_weight[:16].T + attn.in_proj_bias[:16]).view(6, 10, 4, 4)
        k = (x @ attn.in_proj_weight[16:32].T + attn.in_proj_bias[16:32]).view(6, 10, 4, 4)
        scores = q.transpose(1, 2) @ k.transpose(1, 2).transpose(-2, -1) / 2.0
    top, _ = reference_attention(scores)
    x = x[:MAX_SEQUENCES]  # the entropy: the first sequences
    with torch.no_grad():
        _, weights = attn(x, x, x, need_weights=True, average_attn_weights=False)
    p = weights.double()
    entropy = -(p * p.log()).sum(-1).mean().item()
    assert snapshot.attention_layers == ("attn",)
    assert snapshot.attention_logit_max[0] == pytest.approx(top, rel=1e-5)
    assert snapshot.attention_entropy[0] == pytest.approx(entropy, rel=1e-5)


class LateAttention(nn.Module):
    """An MLP whose attention branch runs only once ``attending`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.mlp = nn.Sequential(*(m for _ in range(4) for m in (nn.Linear(16, 16), nn.Tanh())))
        self.head = nn.Linear(16, 8)
        self.attending = False

    def forward(self, x):
        if self.attending:
            x = x + self.attn(x, x, x, need_weights=False)[0]
        return self.head(self.mlp(x))


@pytest.mark.unit
def test_attention_is_looked_for_in_the_whole_forward_on_one_sampled_step_in_scan_every(
        monkeypatch):
    """On the other sampled steps only the modules attention was found in are watched:
    the same figures, far fewer calls seen; a model without attention has none seen; a
    branch that starts attending later is found by the next scan."""
    seen = Counter()
    look = attention._AttentionMode.__torch_function__

    def counted(self, func, types, args=(), kwargs=None):
        seen[step] += 1
        return look(self, func, types, args, kwargs)

    monkeypatch.setattr(attention._AttentionMode, "__torch_function__", counted)
    torch.manual_seed(0)
    model = LateAttention()
    x = torch.randn(6, 10, 16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # the same figures every step
    sink = Collect()
    monitor = Monitor(model, optimizers=[optimizer], every_n_steps=1, sinks=[sink])
    steps = attention.SCAN_EVERY + 3
    for step in range(steps):
        model.attending = step >= 3
        monitored_step(monitor, step, optimizer, lambda: model(x).square().mean())
    monitor.close()
    scans = {0, attention.SCAN_EVERY}
    assert seen[0] > 0 and all(seen[s] == 0 for s in range(1, 3))  # no attention: none seen
    assert all(not sink.snapshots[s].attention_layers for s in range(attention.SCAN_EVERY))
    measured = sink.snapshots[attention.SCAN_EVERY:]
    assert all(s.attention_layers == ("attn",) for s in measured)
    assert all(s.attention_logit_max[0] == measured[0].attention_logit_max[0] and
               s.attention_entropy[0] == measured[0].attention_entropy[0] for s in measured)
    watched = [seen[s] for s in range(steps) if s not in scans and s >= attention.SCAN_EVERY]
    assert 0 < max(watched) and 2 * max(watched) < seen[attention.SCAN_EVERY]


@pytest.mark.unit
def test_hugging_face_eager_and_sdpa_attention_give_the_same_figures():
    transformers = pytest.importorskip("transformers")
    figures = {}
    for implementation in ("eager", "sdpa"):
        config = transformers.LlamaConfig(
            vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
            attn_implementation=implementation)
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(config)
        tokens = torch.randint(32, (2, 9), generator=torch.Generator().manual_seed(1))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        figures[implementation] = run_monitored(
            model, optimizer, [tokens], lambda m, t: m(t, labels=t).loss)
        if implementation == "eager":
            with torch.no_grad():
                probabilities = model(tokens, output_attentions=True).attentions
    eager, sdpa = figures["eager"], figures["sdpa"]
    assert eager.attention_layers == sdpa.attention_layers == (
        "model.layers.0.self_attn", "model.layers.1.self_attn")
    np.testing.assert_allclose(eager.attention_logit_max, sdpa.attention_logit_max, rtol=1e-5)
    np.testing.assert_allclose(eager.attention_entropy, sdpa.attention_entropy, rtol=1e-5)
    for i, p in enumerate(probabilities):
        p = p.double()
        entropy = -(p * torch.log(p.clamp(min=1e-300))).sum(-1).mean().item()
        assert eager.attention_entropy[i] == pytest.approx(entropy, rel=1e-5)


@pytest.mark.unit
def test_update_grad_cosine_and_adam_eps_ratio_equal_a_direct_computation():
    torch.manual_seed(0)
    model = tanh_mlp()
    eps = 1e-3  # large: a good share of the elements is eps-dominated
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, eps=eps)
    data = regression_data(96)
    batches = [(data.tensors[0][i:i + 32], data.tensors[1][i:i + 32]) for i in (0, 32, 64)]
    seen = {}

    def step_fn(m, batch):
        seen["before"] = [p.detach().clone() for p in m.parameters()]
        return F.mse_loss(m(batch[0]), batch[1])

    optimizer.register_step_post_hook(lambda *_: seen.__setitem__(
        "grads", [p.grad.clone() for p in model.parameters()]))
    snapshot = run_monitored(model, optimizer, batches, step_fn)
    grads = seen["grads"]
    ratios = []
    for layer in (0, 2, 4):
        params = list(model[layer].parameters())
        k = [i for i, p in enumerate(model.parameters()) if any(p is q for q in params)]
        descent = torch.cat([(seen["before"][i] - p.detach()).flatten()
                             for i, p in zip(k, params)]).double()
        grad = torch.cat([grads[i].flatten() for i in k]).double()
        cosine = F.cosine_similarity(descent, grad, dim=0).item()
        v_hat = torch.cat([(optimizer.state[p]["exp_avg_sq"]
                            / (1 - 0.999 ** optimizer.state[p]["step"].item())).flatten()
                           for p in params])
        ratio = (v_hat.sqrt() <= 10 * eps).double().mean().item()
        ratios.append(ratio)
        position = snapshot.layers.index(str(layer))
        assert snapshot.update_grad_cosine[position] == pytest.approx(cosine, rel=1e-4)
        assert snapshot.adam_eps_dominated_ratio[position] == pytest.approx(ratio, rel=1e-6)
    assert any(0 < r < 1 for r in ratios)  # the test can tell a wrong count


@pytest.mark.unit
def test_sgd_updates_have_cosine_one_and_no_eps_ratio():
    torch.manual_seed(0)
    model = tanh_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = regression_data(32).tensors
    snapshot = run_monitored(model, optimizer, [(x, y)],
                             lambda m, b: F.mse_loss(m(b[0]), b[1]))
    np.testing.assert_allclose(snapshot.update_grad_cosine, 1.0, rtol=1e-5)
    assert np.isnan(snapshot.adam_eps_dominated_ratio).all()


@pytest.mark.training
def test_the_new_statistics_add_no_host_sync_and_do_not_change_training():
    """Sampled steps of a transformer with AdamW (and skip-on-spike on): one copy to the host
    each, no scalar read; the weights equal those of the same loop without gradwatch."""
    batches = token_batches(6, seq=17)

    def fit(monitored: bool):
        torch.manual_seed(0)
        model = TinyDecoder(seq=16)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        copies = CountHostCopies()
        monitor = (Monitor(model, optimizers=[optimizer], every_n_steps=2,
                           skip_on_spike=SkipOnSpike(min_steps=2)) if monitored else None)
        with profile(activities=[ProfilerActivity.CPU]) as profiler, copies:
            for step, tokens in enumerate(batches):
                if monitor:
                    monitored_step(monitor, step, optimizer, partial(lm_loss, model, tokens))
                else:
                    lm_loss(model, tokens).backward()
                    optimizer.step()
                    optimizer.zero_grad()
        reads = Counter(e.name for e in profiler.events() if e.name in SCALAR_READS)
        if monitor:
            assert monitor.last_snapshot.attention_layers  # measured
            monitor.close()
        return [p.detach() for p in model.parameters()], copies.count, sum(reads.values())

    bare, bare_copies, bare_reads = fit(False)
    watched, copies, reads = fit(True)
    assert all(torch.equal(a, b) for a, b in zip(bare, watched))
    assert copies - bare_copies == 3  # steps 0, 2, 4
    assert reads - bare_reads == 0


@pytest.mark.training
def test_lightning_exports_them_to_prometheus_and_tensorboard(tmp_path):
    pl = lightning()
    batches = token_batches(4, seq=17)

    class Decoder(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.model = TinyDecoder(seq=16)

        def training_step(self, batch, batch_idx):
            return lm_loss(self.model, batch[0])

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-2)

        def train_dataloader(self):
            return torch.utils.data.DataLoader(batches, batch_size=1)

    scraped = {}

    class Scrape(pl.Callback):
        def on_train_end(self, trainer, module):  # after gradwatch's: /metrics is up to date
            scraped["text"] = scrape(diagnostics.prometheus_url)

    diagnostics = TrainingDiagnostics(every_n_steps=2, prometheus_port=0,
                                      tensorboard_dir=str(tmp_path / "tb"))
    trainer(callbacks=[diagnostics, Scrape()], root=str(tmp_path), max_steps=4,
            logger=False).fit(Decoder())
    snapshot = diagnostics.last_snapshot
    parsed = samples(scraped["text"])
    scalars = read_scalars(str(tmp_path / "tb"))
    assert snapshot.attention_layers == ("model.blocks.0", "model.blocks.1")
    for i, module in enumerate(snapshot.attention_layers):
        for name in ("attention_logit_max", "attention_entropy"):
            value = getattr(snapshot, name)[i]
            assert sample(parsed, f"gradwatch_{name}", layer=module) == pytest.approx(value)
            assert scalars[f"gradwatch/{name}/{module}"][-1] == (3, pytest.approx(value))
    for name in ("output_logit_logsumexp", "output_logit_max"):
        assert sample(parsed, f"gradwatch_{name}") == pytest.approx(getattr(snapshot, name))
    position = snapshot.layers.index("model.lm_head")
    assert sample(parsed, "gradwatch_update_grad_cosine", layer="model.lm_head") == \
        pytest.approx(snapshot.update_grad_cosine[position])
    assert sample(parsed, "gradwatch_skipped_updates_total") == 0


# ---------------------------------------------------------------------------- detectors


@pytest.mark.training
def test_attention_logit_growth_leads_the_divergence_and_the_twins_stay_quiet():
    """Seed 0 (it holds on seeds 0-2, docs/benchmarks.md "Across seeds"): this pins one real
    trajectory."""
    unstable, *twins = (run_alerts(recipe, 300) for recipe in RUNS)
    assert unstable["diverged_at"] is not None
    assert unstable["alerts"]["AttentionLogitGrowth"] <= unstable["diverged_at"] - 20
    for twin in twins:
        assert twin["diverged_at"] is None
        assert twin["alerts"] == {}


@pytest.mark.training
def test_adam_collapse_and_output_logit_divergence_lead_the_spike():
    """Seed 0 of the memorising run (it holds on seeds 0-2): the second moment collapses,
    the gradient grows under it and the logits' shared shift walks far below 0 (log Z with
    it), then the loss spikes (step 1120); both alerts lead it by >= 20 steps. With beta2
    0.999 nothing collapses: no alert. mu-centering removes the walk, and the spike with it:
    the second moment collapses the same way, but the gradient keeps falling, so no
    AdamUpdateDecorrelation either."""
    unstable, healthy, centred = (run_alerts(recipe, 1200) for recipe in ADAM_RUNS[:3])
    assert unstable["diverged_at"] is not None
    for leading in ("AdamUpdateDecorrelation", "OutputLogitDivergence"):
        assert unstable["alerts"][leading] <= unstable["diverged_at"] - 20
    assert unstable["log_z"] < -Thresholds().output_logsumexp_level  # the walk
    assert healthy["diverged_at"] is None and healthy["alerts"] == {}
    assert centred["diverged_at"] is None and centred["alerts"] == {}
    assert centred["eps_dominated_ratio"] > Thresholds().eps_dominated_ratio  # collapsed
    assert abs(centred["mean_logit"]) < 1e-4


@pytest.mark.unit
def test_a_memorisable_batch_has_distinct_first_tokens_and_follows_the_language():
    """Seed 1's batch of 4 repeats a first token (3, continued by 0 and by 1): a loss floor
    of 2 ln 2 / 128 that kept its gradients alive. distinct_starts replaces the repeat by
    the smallest unused token, draws nothing more (seed 0's batch is unchanged), and every
    later token still follows from the two before it."""
    plain = token_batches(1, batch=4, vocab=16, seed=1, noise=0.0)[0]
    tokens = token_batches(1, batch=4, vocab=16, seed=1, noise=0.0, distinct_starts=True)[0]
    assert plain[:, 0].tolist() == [0, 3, 2, 3] and tokens[:, 0].tolist() == [0, 3, 2, 1]
    assert torch.equal(tokens[:, 1], plain[:, 1])
    follows = {}
    for row in tokens.tolist():
        for a, b, c in zip(row, row[1:], row[2:]):
            assert follows.setdefault((a, b), c) == c
    assert torch.equal(token_batches(1, batch=4, vocab=16, seed=0, noise=0.0)[0],
                       token_batches(1, batch=4, vocab=16, seed=0, noise=0.0,
                                     distinct_starts=True)[0])


@pytest.mark.training
def test_the_mean_logit_is_the_mean_output_embedding_dot_the_mean_hidden_state():
    """output_geometry's mu . h_bar against the logits' mean; with mu-centering every
    Snapshot after the first step measures a mean logit of 0 and mu ends at 0."""
    torch.manual_seed(0)
    model = TinyDecoder(vocab=128)
    tokens = token_batches(1, vocab=64)[0]
    with torch.no_grad():
        mean_logit = model(tokens[:, :-1]).double().mean().item()
    assert output_geometry(model, tokens)["mu_dot_h_bar"] == pytest.approx(mean_logit, abs=1e-5)
    marching, centred = (train(dataclasses.replace(r, vocab=128, steps=40))
                         for r in ANISOTROPY_RUNS)
    _, snapshots, geometry = centred
    assert [s.step for s in snapshots] == [0, 10, 20, 30]
    assert all(abs(s.output_logit_mean) < 1e-4 for s in snapshots[1:])
    assert geometry[-1]["mu"] < 1e-5
    _, snapshots, geometry = marching  # without: the 64 unused tokens' logits sink at once
    assert snapshots[-1].output_logit_mean < -1.0 and geometry[-1]["mu"] > 1.0

def fit_recording(model, optimizer, batches, loss_fn, steps, warmup=None, every_n_steps=10):
    """``steps`` steps of a plain loop under a Monitor and the default AlertEngine (with a
    linear warm-up and cosine decay over ``warmup`` steps if given): (losses, Snapshots,
    [(alert, step) fired])."""
    torch.manual_seed(0)
    engine, snapshots, losses = AlertEngine(), [], []
    keep = type("Keep", (), {"on_pulse": lambda self, p, m: None,
                             "on_snapshot": lambda self, s, m: snapshots.append(s)})()
    monitor = Monitor(model, optimizers=[optimizer], every_n_steps=every_n_steps,
                      observers=[engine, keep])
    base = optimizer.param_groups[0]["lr"]
    try:
        for step in range(steps):
            if warmup:
                optimizer.param_groups[0]["lr"] = base * (
                    (step + 1) / warmup if step < warmup
                    else 0.5 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup))))
            losses.append(monitored_step(monitor, step, optimizer,
                                         lambda step=step: loss_fn(model, batches(step))).item())
        engine.flush(monitor)
    finally:
        monitor.close()
    return losses, snapshots, [(a.name, a.step) for a in engine.history
                               if a.status == "firing"]


def confident_classifier():
    """Adam 1e-2, no weight decay, on 8 well-separated clusters: the loss falls to ~1e-8."""
    torch.manual_seed(0)
    centers = torch.randn(8, 16, generator=torch.Generator().manual_seed(1)) * 2

    def batches(step):
        generator = torch.Generator().manual_seed(100 + step)
        labels = torch.randint(0, 8, (64,), generator=generator)
        return centers[labels] + 0.5 * torch.randn(64, 16, generator=generator), labels
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 8))
    return (model, torch.optim.Adam(model.parameters(), lr=1e-2), batches,
            lambda m, b: F.cross_entropy(m(b[0]), b[1]), 1000)


def decoder(recipe):
    """A reproduction's decoder (benchmarks.instability) on its language, 400 steps."""
    torch.manual_seed(0)
    model = TinyDecoder(vocab=recipe.vocab, final_norm=recipe.final_norm,
                        head_bias=recipe.head_bias)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.0)
    data = token_batches(recipe.steps, vocab=recipe.vocab, noise=recipe.noise)
    return model, optimizer, data.__getitem__, lm_loss, recipe.steps


@pytest.mark.training
@pytest.mark.parametrize("make", [confident_classifier, lambda: decoder(OUTPUT_RUNS[0])],
                         ids=["classifier", "decoder without final LayerNorm"])
def test_a_model_growing_confident_raises_no_output_logit_alarm(make):
    """log Z climbs more than output_logsumexp_drift nats (the rule that judged log Z itself
    fired on each) while the mean logit does not rise with it: confidence, not drift."""
    losses, snapshots, fired = fit_recording(*make())
    until = divergence_step(losses) or len(losses)  # seed 0's decoder spikes at the end
    log_z = [s.output_logit_logsumexp for s in snapshots if s.step < until]
    shift = [s.output_logit_mean for s in snapshots if s.step < until]
    assert max(log_z) - log_z[0] > Thresholds().output_logsumexp_drift
    # the shift moved log Z (above 0 here) no further from 0: its rise is confidence
    assert max(m - shift[0] for m in shift) < Thresholds().output_logsumexp_drift / 2
    assert not [step for name, step in fired if name == "OutputLogitDivergence" and step < until]


@pytest.mark.training
@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_hugging_face_models_trained_with_warm_up_and_cosine_raise_nothing(family):
    """A Hugging Face-initialised GPT-2 / BERT (1 layer) learning a deterministic 16-token
    language with AdamW 1e-2, warm-up and cosine decay: every statistic measured, no alert."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if family == "gpt2":
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=16, n_positions=16, n_embd=32, n_layer=1, n_head=2, bos_token_id=0,
            eos_token_id=0))
    else:
        model = transformers.BertForMaskedLM(transformers.BertConfig(
            vocab_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=16))
    data = token_batches(200, batch=8, seq=16, vocab=16, noise=0.0)

    def loss(m, tokens):
        if family == "gpt2":
            return m(tokens, labels=tokens).loss
        hidden = torch.rand(tokens.shape, generator=torch.Generator().manual_seed(
            int(tokens[0, 0]))) < 0.15
        return m(torch.where(hidden, 0, tokens), labels=torch.where(hidden, tokens, -100)).loss
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    losses, snapshots, fired = fit_recording(model, optimizer, data.__getitem__, loss, 200,
                                             warmup=20, every_n_steps=5)
    assert fired == []
    # it learned (GPT-2 most of the language; BERT, masking 15%, slower)
    assert sum(losses[-20:]) < (0.5 if family == "gpt2" else 0.95) * sum(losses[:20])
    last = snapshots[-1]
    assert len(last.attention_layers) == 1 and math.isfinite(last.output_logit_logsumexp)
    assert np.isfinite(last.update_grad_cosine).any()


def judge(detector, snapshots) -> list[str]:
    """Each verdict as "fire", "clear" or "-" (None)."""
    names = {Verdict.CLEAR: "clear", None: "-"}
    return ["fire" if isinstance(r, Finding) else names[r]
            for r in map(detector.on_snapshot, snapshots)]


@pytest.mark.unit
def test_output_logit_divergence_judges_the_shift_of_the_logits_not_the_confidence():
    def run(log_zs, shifts):
        return judge(OutputLogitDivergence(Thresholds()), [
            dataclasses.replace(make_snapshot(i), output_logit_logsumexp=z,
                                output_logit_mean=m)
            for i, (z, m) in enumerate(zip(log_zs, shifts))])

    healthy = [4.3 + 0.01 * i + 0.3 * math.sin(i) for i in range(200)]  # slow drift, noise
    assert set(run(healthy, [0.0] * 200)) == {"clear"}
    # a model growing confident: log Z 3 -> 25, its mean logit unmoved (the old rule fired)
    confident = [3.0 + 0.22 * i for i in range(100)]
    assert set(run(confident, [0.3 * math.sin(i) for i in range(100)])) == {"clear"}
    # z-loss at work: the shift falls while the confidence rises, log Z stays near 0
    assert set(run([3.0] * 100, [-0.2 * i for i in range(100)])) == {"clear"}
    drifting = [5.0] * 10 + [5.0 + 2.0 * i for i in range(1, 10)]  # 10 nats after 6 samples
    assert run(drifting, [x - 5.0 for x in drifting])[10:] == ["clear"] * 7 + ["fire"] * 2
    falling = [-x for x in drifting]  # the same drift below 0
    assert run(falling, [x + 5.0 for x in falling])[10:] == ["clear"] * 7 + ["fire"] * 2
    assert run([-120.0] * 4, [0.0] * 4) == ["clear", "clear", "fire", "fire"]  # above 100
    assert set(run([-40.0] * 4, [0.0] * 4)) == {"clear"}  # a pretrained model's steady offset
    # without the shift (a Snapshot of another version): the level rule alone
    assert set(run(drifting, [math.nan] * len(drifting))) == {"clear"}


@pytest.mark.unit
def test_adam_update_decorrelation_judges_the_gradient_growing_under_the_collapse():
    def samples(eps, norms, cosine=0.4):
        """One sample per entry: per-layer eps ratios, and its steps' gradient norms."""
        return [dataclasses.replace(
            make_snapshot(10 * i, pulses=[pulse(10 * i + k, norm=n) for k, n in enumerate(steps)]),
            update_grad_cosine=np.full(4, cosine), adam_eps_dominated_ratio=np.array(e))
            for i, (e, steps) in enumerate(zip(eps, norms))]

    def run(eps, norms, cosine=0.4):
        return judge(AdamUpdateDecorrelation(Thresholds()), samples(eps, norms, cosine))

    collapsed = [[0.9, 0.8, 0.7, 0.0]] * 12
    low, high = [1e-7] * 10, [1e-6] * 10  # 10 steps per sample
    growing = [low] * 5 + [high] * 7
    # the window of 3 samples' medians: 1e-6 from the 7th sample; held 3 in a row -> fire
    assert run(collapsed, growing) == ["clear"] * 8 + ["fire"] * 4
    detector = AdamUpdateDecorrelation(Thresholds())
    finding = [r for r in map(detector.on_snapshot, samples(collapsed, growing))
               if isinstance(r, Finding)][0]
    assert (finding.step, finding.value, finding.threshold) == (80, pytest.approx(10.0), 4.0)
    assert "median eps-dominated ratio 0.75" in finding.description
    assert "grown 10x, from 1e-07 to 1e-06" in finding.description
    # the collapse alone, gradient steady but noisy, or still falling: no alarm
    noisy = [[1e-7, 3e-7] * 5] * 12
    assert set(run(collapsed, noisy)) == {"clear"}
    assert set(run(collapsed, [[1e-6 / 2 ** i] * 10 for i in range(12)])) == {"clear"}
    # one noisy step per sample, 30x the rest, is no growth: the median of the window
    spiky = [low[:9] + [3e-6]] * 12
    assert set(run(collapsed, spiky)) == {"clear"}
    # the growth without the collapse (end of warm-up), or with one collapsed layer only
    assert set(run([[0.0] * 4] * 12, growing)) == {"clear"}
    assert set(run([[1.0, 0.0, 0.0, 0.0]] * 12, growing)) == {"clear"}
    # the low is the one since the collapse: a gradient that fell into it, then came back to
    # where it was before, is judged against its low within the collapse
    before = [[0.0] * 4] * 3 + collapsed[:9]
    fell_then_grew = [[1e-5] * 10] * 3 + [low] * 4 + [[3e-6] * 10] * 5
    assert run(before, fell_then_grew)[-1] == "fire"
    assert set(run(before, [[1e-5] * 10] * 3 + [[3e-6] * 10] * 9)) == {"clear"}
    # no Adam: NaN ratios; a NaN or missing gradient norm is no level
    assert set(run([[math.nan] * 4] * 12, growing)) == {"clear"}
    assert set(run(collapsed, [[math.nan] * 10] * 5 + [high] * 7)) == {"clear"}
    # SGD (NaN cosines): no verdict at all
    assert set(run(collapsed, growing, cosine=math.nan)) == {"-"}


# ---------------------------------------------------------------------------- responses


class Poisoned(torch.utils.data.Dataset):
    """Regression batches; batch ``poisoned`` (if any) has its targets x 1000 (bad data)."""

    def __init__(self, poisoned: int | None) -> None:
        self.x, self.y = regression_data(64 * 32).tensors
        self.poisoned = poisoned

    def __len__(self):
        return 64

    def __getitem__(self, index):
        rows = slice(32 * index, 32 * index + 32)
        scale = 1000.0 if index == self.poisoned else 1.0
        return self.x[rows], self.y[rows] * scale


def fit_regression(tmp_path, poisoned, callbacks):
    pl = lightning()

    class Regression(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = tanh_mlp()

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.mse_loss(self.net(x[0]), y[0])

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-2)

        def train_dataloader(self):
            return torch.utils.data.DataLoader(Poisoned(poisoned), batch_size=1)

    module = Regression()
    trainer(callbacks=callbacks, root=str(tmp_path), max_steps=64, logger=False).fit(module)
    x, y = regression_data(64 * 32).tensors
    with torch.no_grad():
        final = F.mse_loss(module.net(x), y).item()
    return module, final


@pytest.mark.training
def test_skip_on_spike_is_bit_identical_on_a_healthy_run_and_rescues_a_poisoned_one(tmp_path):
    bare, clean_loss = fit_regression(tmp_path / "bare", None, [])
    healthy = TrainingDiagnostics(skip_on_spike=SkipOnSpike(), tensorboard=False, alerts=False)
    watched, _ = fit_regression(tmp_path / "healthy", None, [healthy])
    assert all(torch.equal(a, b) for a, b in zip(bare.parameters(), watched.parameters()))
    _, hurt_loss = fit_regression(tmp_path / "hurt", 40, [])
    assert hurt_loss > 1.05 * clean_loss  # the poison does harm without the response
    alerts = []
    rescue = TrainingDiagnostics(
        skip_on_spike=SkipOnSpike(), tensorboard=False, prometheus_port=0,
        on_alert=alerts.append, checkpoint_on=("UpdateSkipped",),
        checkpoint_dir=str(tmp_path / "ckpt"))
    _, rescued_loss = fit_regression(tmp_path / "rescued", 40, [rescue])
    assert rescued_loss == pytest.approx(clean_loss, rel=0.05)
    exposition = samples(generate_latest(rescue.prometheus.registry).decode())
    skipped = [v for (name, _), v in exposition.items()
               if name == "gradwatch_skipped_updates_total"]
    assert skipped == [1.0]
    fired = [a for a in alerts if a.name == "UpdateSkipped" and a.status == "firing"]
    assert [a.step for a in fired] == [40]
    path = tmp_path / "ckpt" / "gradwatch-UpdateSkipped-step40.ckpt"
    assert fired[0].checkpoint == str(path) and str(path) in fired[0].description
    checkpoint = torch.load(path, weights_only=False)
    assert checkpoint["global_step"] == 41  # saved at the end of the alerting step
    assert set(checkpoint["state_dict"]) == {f"net.{n}" for n, _ in watched.net.named_parameters()}


@pytest.mark.unit
def test_response_options_are_checked_at_construction():
    with pytest.raises(ValueError, match="skip_on_spike"):
        TrainingDiagnostics(skip_on_spike="yes")
    with pytest.raises(ValueError, match="checkpoint_on"):
        TrainingDiagnostics(checkpoint_on=("NoSuchAlert",))
    with pytest.raises(ValueError, match="sigmas"):
        SkipOnSpike(sigmas=0)
    with pytest.raises(ValueError, match="window"):
        SkipOnSpike(window=1)
