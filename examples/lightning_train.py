"""gradwatch with a Lightning Trainer: one callback (runs on the base install).

    python examples/lightning_train.py --steps 300 --port 9400

serves /metrics on 127.0.0.1:9400 while it trains; TensorBoard: tensorboard --logdir lightning_logs
With the `lightning` package instead of `pytorch_lightning`: import lightning.pytorch as pl.
"""

from __future__ import annotations

import argparse

import pytorch_lightning as pl
import torch
from torch import nn

from gradwatch import TrainingDiagnostics


class RegressionModel(pl.LightningModule):
    """A small MLP regressor."""

    def __init__(self, width: int = 64, depth: int = 4, lr: float = 1e-3):
        super().__init__()
        self.save_hyperparameters()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(16 if i == 0 else width, width), nn.GELU()]
        self.net = nn.Sequential(*layers, nn.Linear(width, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)


class RegressionData(pl.LightningDataModule):
    """Synthetic data: y = sin(sum of the first four features)."""

    def __init__(self, size: int = 4096, batch_size: int = 64):
        super().__init__()
        self.size, self.batch_size = size, batch_size

    def train_dataloader(self):
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(self.size, 16, generator=generator)
        y = torch.sin(x[:, :4].sum(dim=1, keepdim=True))
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y),
                                           batch_size=self.batch_size, shuffle=True)


def main(steps: int = 300, port: int | None = 9400, root: str = ".") -> TrainingDiagnostics:
    diagnostics = TrainingDiagnostics(every_n_steps=25, prometheus_port=port)
    trainer = pl.Trainer(max_steps=steps, callbacks=[diagnostics], default_root_dir=root,
                         accelerator="cpu", enable_checkpointing=False, log_every_n_steps=10)
    trainer.fit(RegressionModel(), RegressionData())
    return diagnostics


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--port", type=int, default=9400)
    parser.add_argument("--root", default=".")
    options = parser.parse_args()
    main(options.steps, options.port, options.root)
