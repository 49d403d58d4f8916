"""`gradwatch demo`: four real trainings on CPU that show what gradwatch catches.

healthy (ReLU, He init, Adam), vanishing (deep sigmoid MLP), exploding (over-scaled init)
and nan (a far too high learning rate), each a small Lightning run with TrainingDiagnostics:
live progress, alerts printed as they fire, a TensorBoard run and an HTML report per run,
/metrics served while it trains, and a closing table of verdicts. Alerts go to an
Alertmanager, and metrics to a Pushgateway, only when named (``--alertmanager-url``,
``--pushgateway-url``): one listening on the usual port may be somebody's on-call.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    build: Callable[[], nn.Module]
    optimizer: str
    lr: float
    steps: int
    clip: float | None = None


def mlp(widths: list[int], activation: type[nn.Module],
        init: Callable[[torch.Tensor], object] | None = None) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        linear = nn.Linear(a, b)
        if init is not None:
            init(linear.weight)
            nn.init.zeros_(linear.bias)
        layers.append(linear)
        if i < len(widths) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def he(weight: torch.Tensor) -> None:
    nn.init.kaiming_normal_(weight, nonlinearity="relu")


def over_scaled(weight: torch.Tensor) -> None:
    nn.init.normal_(weight, std=4 * math.sqrt(2 / weight.shape[1]))


SCENARIOS = (
    Scenario("healthy", "ReLU MLP, He init, Adam", lambda: mlp([32, 64, 64, 64, 1], nn.ReLU, he),
             "adam", 1e-3, 200),
    Scenario("vanishing", "9-layer sigmoid MLP, SGD",
             lambda: mlp([32] + [32] * 8 + [1], nn.Sigmoid), "sgd", 0.1, 120),
    Scenario("exploding", "ReLU MLP with 4x the He init scale, gradients clipped at 1.0",
             lambda: mlp([32] + [64] * 6 + [1], nn.ReLU, over_scaled), "sgd", 1e-3, 60,
             clip=1.0),
    Scenario("nan", "linear regression, learning rate 1.0 (far too high)",
             lambda: nn.Sequential(nn.Linear(32, 1)), "sgd", 1.0, 120),
)


def regression_data(steps: int, batch: int = 64, features: int = 32):
    generator = torch.Generator().manual_seed(0)
    teacher = torch.randn(features, 1, generator=generator)
    x = torch.randn(steps * batch, features, generator=generator)
    dataset = torch.utils.data.TensorDataset(x, x @ teacher)
    return torch.utils.data.DataLoader(dataset, batch_size=batch)


def make_module(scenario: Scenario):
    from .callbacks._lightning import lightning_package

    pl = lightning_package()

    # the base is whichever Lightning is installed, known only at run time
    class DemoModel(pl.LightningModule):  # type: ignore[name-defined]
        def __init__(self):
            super().__init__()
            self.net = scenario.build()

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = nn.functional.mse_loss(self.net(x), y)
            self.log("loss", loss, prog_bar=True)
            return loss

        def configure_optimizers(self):
            make = torch.optim.Adam if scenario.optimizer == "adam" else torch.optim.SGD
            return make(self.parameters(), lr=scenario.lr)

    return DemoModel()


def summarize(name: str, engine, report: Path, log_dir: str) -> dict:
    """The closing table's row: worst regime, first alert, culprit layers, remedy."""
    fired = [a for a in engine.history if a.status == "firing"]
    regimes = {a.regime for a in fired if a.regime}
    order = ("nonfinite", "exploding", "vanishing")
    regime = next((r for r in order if r in regimes), "healthy")
    key = next((a for a in fired if a.regime == regime), fired[0] if fired else None)
    first = min(fired, key=lambda a: a.step) if fired else None
    located = key if key and key.layers else next((a for a in fired if a.layers), None)
    return {
        "run": name,
        "regime": regime,
        "alerts": [a.name for a in fired],
        "first_alert": f"{first.name} @ step {first.step}" if first else "-",
        "layers": ", ".join(located.layers[:3]) if located else "-",
        "remedy": key.remedy.split("; ")[0] if key else "-",
        "report": str(report),
        "tensorboard": log_dir,
    }


def _quiet_library_deprecations() -> None:
    """pytorch_lightning 2.6 flattens batches with a torch API that torch 2.13 deprecates:
    neither the user's code nor ours, so the demo's output stays about training."""
    warnings.filterwarnings("ignore", category=FutureWarning,
                            module=r"pytorch_lightning\.utilities\._pytree")


def run(out_dir: str = "gradwatch_demo", port: int = 9400, every_n_steps: int = 10,
        scenarios: tuple[Scenario, ...] = SCENARIOS, progress: bool = True,
        alertmanager_url: str | None = None, pushgateway_url: str | None = None) -> list[dict]:
    """Train every scenario; return one summary per run."""
    # rich is in the demo extra, no base dependency: installed, it restyles every user's Trainer
    from rich.console import Console
    from rich.markup import escape

    from .callbacks import TrainingDiagnostics
    from .callbacks._lightning import lightning_package
    from .monitor.report.html import write_report

    pl = lightning_package()
    _quiet_library_deprecations()
    console = Console()
    if alertmanager_url or pushgateway_url:
        console.print(f"alerts -> {alertmanager_url or '-'}, metrics pushed -> "
                      f"{pushgateway_url or '-'}")

    def print_alert(alert) -> None:
        colour = "red" if alert.severity == "critical" else "yellow"
        where = f" [{', '.join(alert.layers[:3])}]" if alert.layers else ""
        # layer lists and summaries are text, not Rich markup ("[net.0, ...]" would vanish)
        console.print(f"  [{colour}]{alert.status.upper()} {alert.name}[/] step {alert.step}"
                      f"{escape(where)}: {escape(alert.summary)}")

    # the alerts are printed compactly here (the full text is in the reports); the
    # logger's state is given back, for a caller that runs the demo in its own process
    alert_log = logging.getLogger("gradwatch.alerts")
    was_disabled, alert_log.disabled = alert_log.disabled, True
    try:
        summaries = []
        for scenario in scenarios:
            torch.manual_seed(0)
            diagnostics = TrainingDiagnostics(
                run_name=f"demo/{scenario.name}", every_n_steps=every_n_steps,
                prometheus_port=port, port_in_use="warn", on_alert=print_alert,
                alertmanager_url=alertmanager_url,
                pushgateway_url=pushgateway_url, pushgateway_keep=True)
            logger = pl.loggers.TensorBoardLogger(out_dir, name=scenario.name, version="")
            callbacks = [diagnostics]  # its start-up line names /metrics
            if progress:
                callbacks.append(pl.callbacks.RichProgressBar())
            # one epoch of scenario.steps batches (max_epochs too: the bar reads "Epoch 0/0")
            trainer = pl.Trainer(max_steps=scenario.steps, max_epochs=1, callbacks=callbacks,
                                 logger=logger,
                                 gradient_clip_val=scenario.clip,
                                 enable_checkpointing=False, enable_model_summary=False,
                                 enable_progress_bar=progress, accelerator="cpu", devices=1,
                                 log_every_n_steps=every_n_steps)
            console.rule(f"[bold]{scenario.name}[/]: {scenario.description}")
            trainer.fit(make_module(scenario), regression_data(scenario.steps))
            report = write_report(logger.log_dir)
            summaries.append(summarize(scenario.name, diagnostics.engine, report,
                                       logger.log_dir))
    finally:
        alert_log.disabled = was_disabled
    _print_verdicts(console, summaries, out_dir)
    return summaries


def _print_verdicts(console, summaries: list[dict], out_dir: str) -> None:
    """The verdict table of the runs (narrow enough for 80 columns: names are never split),
    what to try for each, and where their logs and reports are, as commands that run."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="gradwatch demo: what each run looked like")
    for column in ("run", "regime", "first alert"):
        table.add_column(column, no_wrap=True)
    table.add_column("culprit layers", overflow="fold")
    colours = {"healthy": "green", "vanishing": "yellow", "exploding": "red", "nonfinite": "red"}
    for s in summaries:
        table.add_row(s["run"], f"[{colours[s['regime']]}]{s['regime']}[/]", s["first_alert"],
                      escape(s["layers"]))
    console.print(table)
    console.rule("what to try")
    for s in summaries:
        console.print(f"{s['run']}: {escape(s['remedy'])}")
    console.rule("where to look")
    # commands and paths are never wrapped: they are copied as printed
    console.print(f"TensorBoard: {command('tensorboard')} --logdir {out_dir}", soft_wrap=True)
    for s in summaries:
        console.print(f"  {s['run']}: report {s['report']}", soft_wrap=True)
    console.print(f"A report again: {command('gradwatch')} report {out_dir}", soft_wrap=True)


def command(name: str) -> str:
    """``name`` as a user types it to run this environment's script: bare when the shell
    finds this one on PATH, else its path (e.g. ``.venv/bin/tensorboard`` after
    ``make demo``, whose .venv is not activated)."""
    script = Path(sys.executable).parent / name
    found = shutil.which(name)
    if found and Path(found).resolve() == script.resolve():
        return name
    relative = os.path.relpath(script)
    return relative if not relative.startswith("..") else str(script)
