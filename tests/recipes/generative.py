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
    healthy("gan_adam_beta1_half", FAMILY, gan_adam, generator_learns_the_data, ci=True),
)
