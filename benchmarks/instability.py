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
