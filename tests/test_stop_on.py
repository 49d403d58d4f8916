"""stop_on says why the fit ended (issue 28, item 4): one line naming the alert, its step and
layers, and what Lightning does with ``trainer.should_stop``."""

from __future__ import annotations

import logging

import pytest
import torch

from gradwatch.callbacks import TrainingDiagnostics

from .helpers import loader, tanh_mlp
from .lightning_models import lightning

pytestmark = pytest.mark.training

pl = lightning()
POISONED_STEP = 3


class PoisonedWeights(pl.LightningModule):
    """Its first layer's weights turn NaN before step POISONED_STEP's forward."""

    def __init__(self):
        super().__init__()
        self.net = tanh_mlp()

    def training_step(self, batch, batch_idx):
        if self.global_step == POISONED_STEP:
            with torch.no_grad():
                self.net[0].weight[0, 0] = float("nan")
        x, y = batch
        return ((self.net(x) - y) ** 2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        return loader()


def test_stop_on_says_which_alert_stopped_the_fit_where(caplog):
    diagnostics = TrainingDiagnostics(every_n_steps=100, tensorboard=False,
                                      stop_on=("NonFiniteValues",))
    trainer = pl.Trainer(max_steps=20, logger=False, callbacks=[diagnostics],
                         enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False, accelerator="cpu")
    with caplog.at_level(logging.INFO, logger="gradwatch"):
        trainer.fit(PoisonedWeights())
    lines = [r.getMessage() for r in caplog.records
             if r.name == "gradwatch" and "stopping" in r.getMessage()]
    last_step = trainer.global_step - 1
    assert last_step < 19, "the fit stopped early"
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        f"gradwatch: stopping the fit after step {last_step}: NonFiniteValues fired at step "
        f"{POISONED_STEP} on net.0"), lines[0]  # the poisoned layer first
    assert lines[0].endswith("(stop_on); Lightning ends it now that trainer.should_stop is set "
                             "(later if min_steps/min_epochs say so)")
