"""CPU reproductions of transformer instability (issue 17) and their healthy twins.

A tiny decoder-only transformer WITHOUT qk-layernorm trained with AdamW at a high learning
rate grows its attention logits, then diverges (Wortsman et al. 2023, arXiv 2309.14322);
its twins (a lower learning rate, or qk-layernorm) stay healthy. ``python -m
benchmarks.instability`` trains each under gradwatch and reports each leading detector's
first alert, the step the loss diverged and the cost of the new statistics per sampled step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    """Pre-LayerNorm attention + MLP block; attention through F.scaled_dot_product_attention."""

    def __init__(self, d_model: int, heads: int, qk_norm: bool) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        head_dim = d_model // heads
        self.q_norm = nn.LayerNorm(head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(head_dim) if qk_norm else nn.Identity()
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(),
                                 nn.Linear(4 * d_model, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, s, 3, self.heads, d // self.heads).unbind(2)
        q, k, v = self.q_norm(q).transpose(1, 2), self.k_norm(k).transpose(1, 2), v.transpose(1, 2)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attended.transpose(1, 2).reshape(b, s, d))
        return x + self.mlp(self.norm2(x))


class TinyDecoder(nn.Module):
    """Token + position embeddings, ``layers`` Blocks, a final LayerNorm and an lm_head."""

    def __init__(self, vocab: int = 64, seq: int = 32, d_model: int = 64, heads: int = 4,
                 layers: int = 2, qk_norm: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.position = nn.Embedding(seq, d_model)
        self.blocks = nn.Sequential(*(Block(d_model, heads, qk_norm) for _ in range(layers)))
        self.norm = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        return self.lm_head(self.norm(self.blocks(self.embed(tokens) + self.position(positions))))


def token_batches(steps: int, batch: int = 16, seq: int = 33, vocab: int = 64, seed: int = 0):
    """A learnable synthetic language: each token is a fixed function of the two before it,
    with 10% noise tokens."""
    generator = torch.Generator().manual_seed(seed)
    table = torch.randint(vocab, (vocab, vocab), generator=generator)
    out = []
    for _ in range(steps):
        tokens = torch.randint(vocab, (batch, seq), generator=generator)
        for i in range(2, seq):
            follow = table[tokens[:, i - 2], tokens[:, i - 1]]
            noise = torch.rand(batch, generator=generator) < 0.1
            tokens[:, i] = torch.where(noise, tokens[:, i], follow)
        out.append(tokens)
    return out


#: The reproductions: (name, learning rate, qk-layernorm). The first diverges.
RUNS = (("unstable: AdamW lr 0.1, no qk-layernorm", 0.1, False),
        ("healthy twin: lr 0.03", 0.03, False),
        ("healthy twin: lr 0.1 with qk-layernorm", 0.1, True))


def train(lr: float, qk_norm: bool, steps: int, every_n_steps: int = 10, observers=(),
          seed: int = 0):
    """Train a TinyDecoder with AdamW (20 warm-up steps) under a Monitor; returns the
    per-step losses and the Snapshots."""
    from monitor.monitor import Monitor

    class Keep:
        def __init__(self):
            self.snapshots = []

        def on_pulse(self, pulse, monitor):
            pass

        def on_snapshot(self, snapshot, monitor):
            self.snapshots.append(snapshot)

    torch.manual_seed(seed)
    model = TinyDecoder(qk_norm=qk_norm)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    keep = Keep()
    monitor = Monitor(model, optimizers=[optimizer], every_n_steps=every_n_steps,
                      observers=[keep, *observers])
    losses = []
    for step, tokens in enumerate(token_batches(steps, seed=seed)):
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 20)
        with monitor.step(step):
            logits = model(tokens[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                   tokens[:, 1:].reshape(-1))
            monitor.observe_loss(loss)
            loss.backward()
            monitor.observe_gradients()
            optimizer.step()
            optimizer.zero_grad()
        losses.append(loss.item())
    monitor.close()
    return losses, keep.snapshots


#: The loss has diverged at the first step whose 20-step mean loss is this many nats above
#: the best 20-step mean before it.
DIVERGED_NATS = 0.5
LEADING = ("AttentionLogitGrowth", "OutputLogitDivergence", "AdamUpdateDecorrelation")


def divergence_step(losses: list[float], window: int = 20) -> int | None:
    """The first step whose ``window``-step mean loss is DIVERGED_NATS above the best
    ``window``-step mean before it (or not finite); None if the loss never diverged."""
    best = math.inf
    for end in range(window, len(losses) + 1):
        mean = sum(losses[end - window:end]) / window
        if not math.isfinite(mean) or mean > best + DIVERGED_NATS:
            return end - 1
        best = min(best, mean)
    return None


def reproduce(steps: int = 600, every_n_steps: int = 10, seed: int = 0) -> list[dict]:
    """Each RUN under the default detectors: its divergence step and its first alerts."""
    from monitor.alerts import AlertEngine

    results = []
    for name, lr, qk_norm in RUNS:
        engine = AlertEngine()
        losses, _ = train(lr, qk_norm, steps, every_n_steps, observers=[engine], seed=seed)
        first: dict[str, int] = {}
        for alert in engine.history:
            if alert.status == "firing":
                first.setdefault(alert.name, alert.step)
        results.append({"run": name, "diverged_at": divergence_step(losses),
                        "final_loss": sum(losses[-20:]) / 20, "alerts": first})
    return results


if __name__ == "__main__":
    torch.set_num_threads(1)
    for result in reproduce():
        print(result)
