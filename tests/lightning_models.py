"""Tiny LightningModules for the tests, built for either Lightning package."""

from __future__ import annotations

import importlib

import torch
from torch import nn

from .helpers import loader, tanh_mlp

PACKAGES = ("lightning.pytorch", "pytorch_lightning")


def lightning(package: str = "lightning.pytorch"):
    return importlib.import_module(package)


def regression_module(package: str = "lightning.pytorch", lr: float = 0.05, net=None,
                      optimizer: str = "sgd"):
    pl = lightning(package)

    class Regression(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = net if net is not None else tanh_mlp()

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return ((self(x) - y) ** 2).mean()

        def configure_optimizers(self):
            if optimizer == "adam":
                return torch.optim.Adam(self.parameters(), lr=lr)
            return torch.optim.SGD(self.parameters(), lr=lr)

        def train_dataloader(self):
            return loader()

    return Regression()


def two_optimizer_module(package: str = "lightning.pytorch"):
    """Manual optimization with two optimizers (a GAN-like alternation)."""
    pl = lightning(package)

    class TwoOptimizers(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False
            self.encoder = nn.Linear(8, 8)
            self.head = nn.Linear(8, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            first, second = self.optimizers()
            loss_a = ((self.head(torch.tanh(self.encoder(x))) - y) ** 2).mean()
            first.zero_grad()
            self.manual_backward(loss_a)
            first.step()
            loss_b = ((self.head(torch.tanh(self.encoder(x).detach())) - y) ** 2).mean()
            second.zero_grad()
            self.manual_backward(loss_b)
            second.step()

        def configure_optimizers(self):
            return (torch.optim.SGD(self.encoder.parameters(), lr=0.1),
                    torch.optim.SGD(self.head.parameters(), lr=0.1))

        def train_dataloader(self):
            return loader()

    return TwoOptimizers()


def trainer(package: str = "lightning.pytorch", callbacks=(), root=None, **kwargs):
    pl = lightning(package)
    options = dict(max_steps=6, enable_progress_bar=False, enable_model_summary=False,
                   enable_checkpointing=False, log_every_n_steps=1, default_root_dir=root,
                   accelerator="cpu", devices=1)
    options.update(kwargs)
    return pl.Trainer(callbacks=list(callbacks), **options)
