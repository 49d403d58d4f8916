"""Generative models: a VAE and a GAN."""

from __future__ import annotations

import torch
from torch import nn

from ..realistic import Recording, Setup
from .data import low_rank_points
from .models import GAN, VAE, gan_batches, vae_loss
from .recipe import Recipe, healthy, loss_falls

FAMILY = "generative"
GAN_MEAN, GAN_STD = 3.0, 0.5


def vae_adam() -> Setup:
    torch.manual_seed(400)
    model = VAE()
    return Setup(model, torch.optim.Adam(model.parameters(), lr=1e-3),
                 low_rank_points(), loss_fn=vae_loss)


def vae_fp16_summed_loss() -> Setup:
    """fp16 with a GradScaler and the ELBO summed over the batch of 128 (PyTorch's VAE
    example sums): the scaler's first scale, 2^16, overflows the gradients of a loss ~1e3,
    so it backs off a few times before its first applied step (calibration, by design)."""
    torch.manual_seed(402)
    model = VAE()
    return Setup(model, torch.optim.Adam(model.parameters(), lr=1e-3),
                 low_rank_points(batch=128), loss_fn=summed_vae_loss, precision="fp16")


def summed_vae_loss(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return vae_loss(out, x) * x.shape[0]


def gan_adam() -> Setup:
    """The DCGAN optimizer settings (Adam lr 2e-4 scaled up for a tiny model, beta1 0.5)."""
    torch.manual_seed(401)
    model = GAN()
    return Setup(model, torch.optim.Adam(model.parameters(), lr=2e-3, betas=(0.5, 0.999)),
                 gan_batches(GAN_MEAN, GAN_STD),
                 loss_fn=nn.functional.binary_cross_entropy_with_logits)


def generator_learns_the_data(record: Recording, setup: Setup) -> None:
    """A GAN's loss does not fall (the game's value is log 4 at equilibrium): the claim is
    that the generator's samples moved from ~0 to the data's mean."""
    assert record.first_nonfinite is None
    gan = setup.model
    assert isinstance(gan, GAN)
    with torch.no_grad():
        samples = gan.generator(torch.randn(1000, gan.noise, generator=torch.Generator()
                                            .manual_seed(0)))
    assert abs(float(samples.mean()) - GAN_MEAN) < 0.5 * GAN_STD, float(samples.mean())


RECIPES: tuple[Recipe, ...] = (
    healthy("vae_adam", FAMILY, vae_adam, loss_falls(1.5)),
    healthy("vae_fp16_grad_scaler_summed_loss", FAMILY, vae_fp16_summed_loss, loss_falls(1.5),
            ci=True),
    healthy("gan_adam_beta1_half", FAMILY, gan_adam, generator_learns_the_data, ci=True),
)
