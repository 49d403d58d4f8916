"""Batches of the recipes: each source is ``step -> (inputs, targets)``, the same batch for
the same step on every run (a generator seeded by the step), so a recipe is one trajectory
wherever it trains."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Batches = Callable[[int], tuple[torch.Tensor, torch.Tensor]]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def regression(width: int = 16, batch: int = 32, noise: float = 0.1, seed: int = 1,
               scale: float = 1.0) -> Batches:
    """A fixed random teacher: y = tanh(x A) B + noise."""
    g = gen(seed)
    a, b = torch.randn(width, 32, generator=g), torch.randn(32, 1, generator=g) * scale

    def batches(step: int):
        g = gen(1000 + step)
        x = torch.randn(batch, width, generator=g)
        y = torch.tanh(x @ a / math.sqrt(width)) @ b + noise * torch.randn(batch, 1, generator=g)
        return x, y
    return batches


def classification(width: int = 16, classes: int = 4, batch: int = 32, seed: int = 2,
                   spread: float = 0.5) -> Batches:
    """Gaussian clusters around fixed centres (``spread`` apart in every coordinate)."""
    g = gen(seed)
    centers = torch.randn(classes, width, generator=g) * spread

    def batches(step: int):
        g = gen(5000 + step)
        y = torch.randint(0, classes, (batch,), generator=g)
        return centers[y] + torch.randn(batch, width, generator=g), y
    return batches


def images(batch: int = 16, seed: int = 3, noise: float = 1.5, size: int = 8,
           channels: int = 1) -> Batches:
    """Noisy copies of 4 random prototype images, the label their prototype."""
    g = gen(seed)
    prototypes = torch.randn(4, channels, size, size, generator=g)

    def batches(step: int):
        g = gen(7000 + step)
        y = torch.randint(0, 4, (batch,), generator=g)
        return prototypes[y] + noise * torch.randn(batch, channels, size, size, generator=g), y
    return batches


def one_outlier_batch(source: Batches, at: int, noise: float) -> Batches:
    """``source``'s batches, but at step ``at`` its inputs buried in extra Gaussian noise of
    standard deviation ``noise``: one hard batch (a corrupted shard, a bad augmentation)."""
    def batches(step: int):
        x, y = source(step)
        if step == at:
            x = x + noise * torch.randn(x.shape, generator=gen(17000 + step))
        return x, y
    return batches


def tokens(vocab: int = 16, batch: int = 8, length: int = 16, noise: float = 0.2) -> Batches:
    """Sequences counting up mod vocab, a random token now and then (next-token targets)."""
    def batches(step: int):
        g = gen(9000 + step)
        start = torch.randint(0, vocab, (batch, 1), generator=g)
        seq = (start + torch.arange(length + 1)) % vocab
        swapped = torch.rand(seq.shape, generator=g) < noise
        seq = torch.where(swapped, torch.randint(0, vocab, seq.shape, generator=g), seq)
        return seq[:, :-1], seq[:, 1:].flatten()
    return batches


def sequence_sums(batch: int = 16, length: int = 20, width: int = 4) -> Batches:
    """Sequences of noise; the target is the sum of their first feature (a long dependency
    an RNN carries in its state)."""
    def batches(step: int):
        g = gen(11000 + step)
        x = torch.randn(batch, length, width, generator=g)
        return x, x[:, :, :1].sum(1) / math.sqrt(length)
    return batches


def shuffled_labels(source: Batches, classes: int) -> Batches:
    """``source``'s inputs with labels drawn at random: nothing to learn but memorisation."""
    def batches(step: int):
        x, y = source(step)
        return x, torch.randint(0, classes, y.shape, generator=gen(13000 + step))
    return batches


def low_rank_points(width: int = 16, rank: int = 3, batch: int = 32, seed: int = 10,
                    noise: float = 0.1) -> Batches:
    """Points near a curved ``rank``-dimensional manifold in ``width`` dimensions, as their
    own targets (what an autoencoder compresses)."""
    g = gen(seed)
    lift = torch.randn(rank, width, generator=g)

    def batches(step: int):
        g = gen(17000 + step)
        x = torch.tanh(torch.randn(batch, rank, generator=g) @ lift)
        x = x + noise * torch.randn(batch, width, generator=g)
        return x, x
    return batches
