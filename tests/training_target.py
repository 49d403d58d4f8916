"""A REAL Lightning training serving /metrics, for the tests that need a scrape target.

The training runs in a background thread with TrainingDiagnostics, paced so that
Prometheus scrapes it many times, and holds its endpoint open after the last step until
closed. Scenarios:
- ``healthy``: fp16 autocast with a GradScaler, gradient clipping, tanh and ReLU layers,
  so every metric of the contract has samples;
- ``diverging``: the same model with a far too high learning rate: the gradient norm
  explodes, then turns into NaN/Inf.
"""

from __future__ import annotations

import threading
import time

import torch
from torch import nn

from gradwatch.callbacks import TrainingDiagnostics

from .helpers import loader
from .lightning_models import lightning

#: Layer names whose alphabetical order differs from their depth order, on purpose.
LAYERS = ("net.stem", "net.blocks.0", "net.blocks.1", "net.head")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(8, 32)
        self.act = nn.Tanh()
        self.blocks = nn.ModuleList([nn.Linear(32, 32), nn.Linear(32, 32)])
        self.relu = nn.ReLU()
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        x = self.act(self.stem(x))
        for block in self.blocks:
            x = self.relu(block(x))
        return self.head(x)


class TrainingTarget:
    """A training in a background thread; ``target`` is its host:port once serving."""

    def __init__(self, run: str, scenario: str = "healthy", steps: int = 400,
                 step_seconds: float = 0.05, port: int = 0, addr: str = "127.0.0.1") -> None:
        if scenario not in ("healthy", "diverging"):
            raise ValueError(f"unknown scenario {scenario!r}")
        self.run, self.scenario, self.steps, self.step_seconds = run, scenario, steps, step_seconds
        self.diagnostics = TrainingDiagnostics(run_name=run, every_n_steps=1, prometheus_port=port,
                                               prometheus_addr=addr, tensorboard=False)
        self._serving, self._release = threading.Event(), threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._train, name=f"training-{run}", daemon=True)
        self._thread.start()
        if not self._serving.wait(60):
            raise RuntimeError(f"the training {run} did not start serving: {self.error!r}")
        self.target = self.diagnostics.prometheus_url.removeprefix("http://").removesuffix(
            "/metrics")

    def _train(self) -> None:
        from lightning.pytorch.plugins.precision import MixedPrecision

        pl = lightning()
        target = self

        class Pace(pl.Callback):
            def on_train_start(self, trainer, module):
                target._serving.set()

            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                time.sleep(target.step_seconds)

            def on_train_end(self, trainer, module):
                target._release.wait(300)  # keep serving until the test is done

        diverging = self.scenario == "diverging"
        torch.manual_seed(0)

        class Model(pl.LightningModule):
            def __init__(self):
                super().__init__()
                self.net = Net()

            def training_step(self, batch, batch_idx):
                x, y = batch
                return ((self.net(x) - y) ** 2).mean()

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=20.0 if diverging else 0.01)

            def train_dataloader(self):
                return loader(n=512)

        options = {} if diverging else {
            "plugins": [MixedPrecision("16-mixed", "cpu",
                                       scaler=torch.amp.GradScaler("cpu", init_scale=2.0 ** 8))],
            "gradient_clip_val": 0.5,
        }
        try:
            pl.Trainer(max_steps=self.steps, callbacks=[self.diagnostics, Pace()], logger=False,
                       enable_progress_bar=False, enable_checkpointing=False,
                       enable_model_summary=False, accelerator="cpu", devices=1,
                       **options).fit(Model())
        except BaseException as error:  # reported by the fixture that waits on it
            self.error = error
            self._serving.set()

    def close(self) -> None:
        self._release.set()
        self._thread.join(60)
