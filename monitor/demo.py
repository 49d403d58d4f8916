"""`gradwatch demo`: real training runs on CPU that show what gradwatch sees.

Each scenario is a small Lightning model trained with TrainingDiagnostics; the demo prints
the per-layer gradient-norm profile over depth and where the TensorBoard logs and /metrics
are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    activation: type[nn.Module]
    depth: int
    init: str
    lr: float


SCENARIOS = (
    Scenario("healthy", "ReLU MLP, He init, Adam", nn.ReLU, 6, "he", 1e-3),
    Scenario("vanishing", "12-layer sigmoid MLP, small init, SGD", nn.Sigmoid, 12, "small", 0.1),
)


def build_mlp(scenario: Scenario, features: int = 32, width: int = 64) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(scenario.depth):
        linear = nn.Linear(features if i == 0 else width, width)
        if scenario.init == "he":
            nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
        else:
            nn.init.normal_(linear.weight, std=0.5 / math.sqrt(linear.in_features))
        nn.init.zeros_(linear.bias)
        layers += [linear, scenario.activation()]
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


def make_module(scenario: Scenario):
    import lightning.pytorch as pl

    class DemoModel(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = build_mlp(scenario)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            if scenario.init == "he":
                return torch.optim.Adam(self.parameters(), lr=scenario.lr)
            return torch.optim.SGD(self.parameters(), lr=scenario.lr)

    return DemoModel()


def _Announce(console, diagnostics):
    """A callback that prints the /metrics address once the endpoint is up."""
    import lightning.pytorch as pl

    class Announce(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            console.print(f"/metrics: {diagnostics.prometheus_url} (while it trains)")

    return Announce()


def demo_data(n: int = 2048, features: int = 32, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=generator)
    y = torch.sin(x[:, :4].sum(dim=1, keepdim=True))
    dataset = torch.utils.data.TensorDataset(x, y)
    return torch.utils.data.DataLoader(dataset, batch_size=64, shuffle=True, generator=generator)


def run(out_dir: str = "gradwatch_demo", steps: int = 200, port: int = 9400,
        every_n_steps: int = 20) -> list[dict]:
    """Train every scenario; return one summary per run."""
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import TensorBoardLogger
    from rich.console import Console
    from rich.table import Table

    from callbacks import TrainingDiagnostics

    console = Console()
    summaries = []
    for scenario in SCENARIOS:
        torch.manual_seed(0)
        diagnostics = TrainingDiagnostics(run_name=f"demo/{scenario.name}",
                                          every_n_steps=every_n_steps, prometheus_port=port)
        logger = TensorBoardLogger(out_dir, name=scenario.name, version="")
        announce = _Announce(console, diagnostics)
        trainer = pl.Trainer(max_steps=steps, callbacks=[diagnostics, announce], logger=logger,
                             enable_checkpointing=False, enable_model_summary=False,
                             accelerator="cpu", devices=1, log_every_n_steps=every_n_steps)
        console.rule(f"[bold]{scenario.name}[/]: {scenario.description}")
        trainer.fit(make_module(scenario), demo_data())
        snapshot = diagnostics.last_snapshot
        table = Table(title=f"{scenario.name}: per-layer gradient norm at step {snapshot.step}")
        table.add_column("depth")
        table.add_column("layer")
        table.add_column("grad norm", justify="right")
        table.add_column("update ratio", justify="right")
        table.add_column("activation var", justify="right")
        for depth, layer in enumerate(snapshot.layers):
            table.add_row(str(depth), layer, f"{snapshot.grad_norm[depth]:.2e}",
                          f"{snapshot.update_ratio[depth]:.2e}",
                          f"{snapshot.activation_variance[depth]:.2e}")
        console.print(table)
        summaries.append({"run": scenario.name, "tensorboard": str(Path(logger.log_dir)),
                          "first_over_last": snapshot.grad_norm[0] / snapshot.grad_norm[-1]})
    console.rule("where to look")
    console.print(f"TensorBoard: tensorboard --logdir {out_dir}")
    for summary in summaries:
        console.print(f"  {summary['run']}: input-side / output-side gradient norm = "
                      f"{summary['first_over_last']:.1e}  ({summary['tensorboard']})")
    return summaries
