"""Small models of the families people train, written here (torchvision's C ops do not load
on this CPU build). Each is a few thousand parameters: 600 steps take seconds on one thread."""

from __future__ import annotations

import torch
from torch import nn

from .data import gen


class SmallCNN(nn.Module):
    """Two conv + BatchNorm + ReLU stages and a linear head, on 1x8x8 images."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(8 * 4 * 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(self.relu(self.bn1(self.conv1(x))), 2)
        x = self.relu(self.bn2(self.conv2(x)))
        return self.fc(x.flatten(1))


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels)
        self.conv2, self.bn2 = nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(h)))


class TinyResNet(nn.Module):
    """A stem, ``blocks`` residual blocks (BatchNorm), global average pooling, a head."""

    def __init__(self, blocks: int = 3, channels: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.BatchNorm2d(channels),
                                  nn.ReLU())
        self.blocks = nn.Sequential(*(ResidualBlock(channels) for _ in range(blocks)))
        self.head = nn.Linear(channels, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class PlainDeepCNN(nn.Module):
    """``depth`` 3x3 convolutions with ``activation`` between them, no normalisation, no
    residual: the network whose gradients vanish with a saturating activation."""

    def __init__(self, depth: int = 20, channels: int = 8,
                 activation: type[nn.Module] = nn.Sigmoid) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, channels, 3, padding=1), activation()]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(channels, channels, 3, padding=1), activation()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


class RecurrentRegressor(nn.Module):
    """An RNN (``cell``: nn.LSTM, nn.GRU or nn.RNN) reading a sequence; a linear readout of
    its last state."""

    def __init__(self, cell: type[nn.RNNBase] = nn.LSTM, width: int = 4, hidden: int = 32,
                 **cell_options) -> None:
        super().__init__()
        self.rnn = cell(width, hidden, batch_first=True, **cell_options)
        self.readout = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.readout(out[:, -1])


class TinyLM(nn.Module):
    """A one-block pre-norm transformer language model with Hugging Face-style init
    (normal std 0.02, zero biases) and a tied output head."""

    def __init__(self, vocab: int = 16, d: int = 32, dropout: float = 0.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.zeros(16, d))
        self.block = nn.TransformerEncoderLayer(d, 2, 64, dropout=dropout, batch_first=True,
                                                norm_first=True)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.embed.weight
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.block.self_attn.in_proj_weight, std=0.02)
        self.mask = nn.Transformer.generate_square_subsequent_mask(16)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens) + self.pos[: tokens.shape[1]]
        h = self.block(h, src_mask=self.mask[: tokens.shape[1], : tokens.shape[1]],
                       is_causal=True)
        return self.head(self.norm(h)).flatten(0, 1)


class HuggingFaceLM(nn.Module):
    """A transformers causal LM (its own init) returning flat next-token logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.lm = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=tokens).logits.flatten(0, 1)


def tiny_gpt2_config(vocab: int = 16):
    from transformers import GPT2Config

    return GPT2Config(vocab_size=vocab, n_positions=16, n_embd=32, n_layer=2, n_head=2,
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0,
                      eos_token_id=0)


class VAE(nn.Module):
    """A Gaussian VAE on 16-d inputs; returns [reconstruction, mu, logvar] side by side
    (one tensor, the loss splits it)."""

    def __init__(self, width: int = 16, latent: int = 4, hidden: int = 32) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(),
                                     nn.Linear(hidden, 2 * latent))
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(),
                                     nn.Linear(hidden, width))
        self.latent = latent

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return torch.cat([self.decoder(z), mu, logvar], dim=1)


def vae_loss(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Negative ELBO per sample: squared reconstruction error + KL(q(z|x) || N(0, 1))."""
    width = x.shape[1]
    recon, (mu, logvar) = out[:, :width], out[:, width:].chunk(2, dim=1)
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
    return ((recon - x).pow(2).sum(1) + kl).mean()


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -grad


class GAN(nn.Module):
    """A 1-d GAN trained by one optimizer: the discriminator minimises its cross-entropy on
    [real; fake], the generator maximises it through a gradient-reversal layer (the minimax
    game of Goodfellow et al. in one backward pass). Input: [real, noise] columns;
    output: the discriminator's logits for [real; fake]."""

    def __init__(self, noise: int = 4, hidden: int = 32) -> None:
        super().__init__()
        self.generator = nn.Sequential(nn.Linear(noise, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.discriminator = nn.Sequential(nn.Linear(1, hidden), nn.LeakyReLU(0.2),
                                           nn.Linear(hidden, 1))
        self.noise = noise

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        real, z = batch[:, :1], batch[:, 1:]
        fake = _ReverseGradient.apply(self.generator(z))
        return self.discriminator(torch.cat([real, fake])).squeeze(1)


def gan_batches(mean: float = 3.0, std: float = 0.5, batch: int = 32, noise: int = 4):
    """Real samples from N(mean, std^2) beside generator noise; targets 1 (real), 0 (fake)."""
    def batches(step: int):
        g = gen(15000 + step)
        real = mean + std * torch.randn(batch, 1, generator=g)
        z = torch.randn(batch, noise, generator=g)
        return torch.cat([real, z], 1), torch.cat([torch.ones(batch), torch.zeros(batch)])
    return batches
