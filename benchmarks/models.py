"""Reference models of the overhead benchmark, as LightningModules over synthetic batches.

Each model is described by a ModelSpec (how to build the network, one batch, the loss and
the optimizer), so every benchmark configuration trains exactly the same thing. Batches are
made once and cycled by a map-style dataset as long as the run, so the timed window never
crosses an epoch boundary and never waits on data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import lightning.pytorch as pl
import torch
from torch import nn
from torch.nn import functional as F

#: Distinct batches cycled through by the dataset (enough to avoid a constant input).
DISTINCT_BATCHES = 8


@dataclass(frozen=True)
class ModelSpec:
    """One reference model: the network, one synthetic batch, its loss, its optimizer."""

    name: str
    description: str
    build: Callable[[], nn.Module]
    batch: Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer]
    #: timed windows (of the plan's steps each) per run: more for a fast model, so that its
    #: timed window lasts long enough (about a second) to rise above the machine's jitter
    windows: int = 1


class CycledBatches(torch.utils.data.Dataset):
    """``length`` items cycling through a few pre-made batches (use with batch_size=None)."""

    def __init__(self, batches: list, length: int) -> None:
        self.batches, self.length = batches, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        return self.batches[index % len(self.batches)]


class ReferenceModule(pl.LightningModule):
    """Trains ``spec``'s network on its synthetic batches for ``steps`` steps (one epoch)."""

    def __init__(self, spec: ModelSpec, steps: int, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.spec = spec
        self.net = spec.build()
        generator = torch.Generator().manual_seed(seed)
        self.batches = [spec.batch(generator) for _ in range(DISTINCT_BATCHES)]
        self.steps = steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.spec.loss(self(x), y)

    def configure_optimizers(self):
        return self.spec.optimizer(list(self.parameters()))

    def train_dataloader(self):
        return torch.utils.data.DataLoader(CycledBatches(self.batches, self.steps),
                                           batch_size=None, shuffle=False)


# ---------------------------------------------------------------------- the networks


def deep_mlp(width: int = 256, depth: int = 16, classes: int = 10) -> nn.Sequential:
    """``depth`` x (Linear(width) + Tanh), then a linear classifier."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(width, classes))


class TokenModel(nn.Module):
    """Token embedding + learned positions + a TransformerEncoder + a vocabulary head.

    ``causal`` masks attention to earlier positions (a GPT-style decoder-only model).
    """

    def __init__(self, vocab: int, seq: int, d_model: int, heads: int, layers: int,
                 causal: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.position = nn.Parameter(torch.zeros(seq, d_model))
        layer = nn.TransformerEncoderLayer(d_model, heads, 4 * d_model, dropout=0.0,
                                           activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab, bias=False)
        self.causal = causal

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        seq = tokens.shape[1]
        h = self.embed(tokens) + self.position[:seq]
        mask = nn.Transformer.generate_square_subsequent_mask(seq, device=tokens.device) \
            if self.causal else None
        return self.head(self.norm(self.encoder(h, mask=mask, is_causal=self.causal)))


def small_cnn(classes: int = 10) -> nn.Sequential:
    """Three Conv + BatchNorm + ReLU blocks, global pooling, a linear classifier."""
    def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(*block(3, 16, 1), *block(16, 32, 2), *block(32, 32, 2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, classes))


def token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


def token_batch(batch: int, seq: int, vocab: int):
    def make(generator: torch.Generator):
        tokens = torch.randint(vocab, (batch, seq + 1), generator=generator)
        return tokens[:, :-1], tokens[:, 1:]
    return make


def classification_batch(batch: int, shape: tuple[int, ...], classes: int = 10):
    def make(generator: torch.Generator):
        return (torch.randn(batch, *shape, generator=generator),
                torch.randint(classes, (batch,), generator=generator))
    return make


@dataclass(frozen=True)
class CpuSizes:
    """The sizes of the CPU reference models."""

    width: int = 256
    depth: int = 16
    batch: int = 128
    d_model: int = 128
    seq: int = 64
    tokens_batch: int = 32
    vocab: int = 256
    image: int = 16
    images_batch: int = 32
    windows: tuple[int, int, int] = (2, 1, 4)  # mlp, transformer, cnn


SMOKE_SIZES = CpuSizes(32, 4, 8, 32, 16, 4, 100, 8, 4)


def cpu_models(smoke: bool = False, sizes: CpuSizes | None = None) -> list[ModelSpec]:
    """The CPU reference models (``smoke``: tiny sizes for the test suite)."""
    z = SMOKE_SIZES if smoke else sizes or CpuSizes()
    return [
        ModelSpec("mlp", f"{z.depth} x Linear({z.width})+Tanh, batch {z.batch}, Adam",
                  lambda: deep_mlp(z.width, z.depth), classification_batch(z.batch, (z.width,)),
                  F.cross_entropy, lambda p: torch.optim.Adam(p, lr=1e-3), windows=z.windows[0]),
        ModelSpec("transformer", f"4-layer encoder, d_model {z.d_model}, seq {z.seq}, "
                  f"batch {z.tokens_batch}, vocabulary {z.vocab}, AdamW",
                  lambda: TokenModel(z.vocab, z.seq, z.d_model, 4, 4),
                  token_batch(z.tokens_batch, z.seq, z.vocab), token_loss,
                  lambda p: torch.optim.AdamW(p, lr=3e-4), windows=z.windows[1]),
        ModelSpec("cnn", f"3 x Conv+BatchNorm+ReLU, {z.image}x{z.image} images, batch "
                  f"{z.images_batch}, SGD momentum",
                  small_cnn, classification_batch(z.images_batch, (3, z.image, z.image)),
                  F.cross_entropy, lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
                  windows=z.windows[2]),
    ]


def gpu_models() -> list[ModelSpec]:
    """A GPT-2-small-class decoder (12 layers, d_model 768, 12 heads, seq 1024, vocab 50257)."""
    vocab, seq = 50257, 1024
    return [
        ModelSpec("gpt2-small", "12-layer causal decoder, d_model 768, seq 1024, batch 8, "
                  "AdamW, bf16-mixed",
                  lambda: TokenModel(vocab, seq, 768, 12, 12, causal=True),
                  token_batch(8, seq, vocab), token_loss,
                  lambda p: torch.optim.AdamW(p, lr=3e-4, fused=True)),
    ]
