"""What gradwatch does to a ``torch.compile``d model: graphs, graph breaks and recompiles.

Trains the same small compiled model with Lightning twice, bare and with
TrainingDiagnostics, and reads ``torch._dynamo.utils.counters`` around every step: frames
compiled (a compile after warm-up is a recompile), graphs captured and graph breaks. Steps are
told apart as sampled (per-layer statistics: forward hooks on) and unsampled. Counts, not
times: they are the same on any machine.

    python -m benchmarks.compile_graphs [--backend inductor] [--how in-place] [--steps 20]
"""

from __future__ import annotations

import argparse
import logging
import warnings
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import nn
from torch._dynamo.utils import counters

from gradwatch.callbacks import TrainingDiagnostics
from gradwatch.callbacks._lightning import lightning_package

#: Steps before this one are warm-up: step 0 is sampled (run eagerly), step 1 compiles.
WARM_UP = 2


@dataclass
class StepCounts:
    frames: int = 0  # frames compiled: after warm-up, each one a recompile
    graphs: int = 0  # graphs captured
    breaks: int = 0  # graph breaks


@dataclass
class Figures:
    """Dynamo's counts of one training, per kind of step after warm-up, and in all."""

    total: StepCounts = field(default_factory=StepCounts)
    warm_up: StepCounts = field(default_factory=StepCounts)
    sampled: StepCounts = field(default_factory=StepCounts)
    unsampled: StepCounts = field(default_factory=StepCounts)
    break_reasons: Counter = field(default_factory=Counter)
    layers: tuple[str, ...] = ()


def _read() -> StepCounts:
    return StepCounts(frames=counters["frames"]["total"],
                      graphs=counters["stats"]["unique_graphs"],
                      breaks=sum(counters["graph_break"].values()))


def _add(into: StepCounts, before: StepCounts, after: StepCounts) -> None:
    into.frames += after.frames - before.frames
    into.graphs += after.graphs - before.graphs
    into.breaks += after.breaks - before.breaks


def _step_counter(figures: Figures, every_n_steps: int):
    pl = lightning_package()

    class CountSteps(pl.Callback):
        """Dynamo's counters read around each training step."""

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.before = _read()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            step = batch_idx
            if step < WARM_UP:
                kind = figures.warm_up
            elif step % every_n_steps == 0:
                kind = figures.sampled
            else:
                kind = figures.unsampled
            _add(kind, self.before, _read())

    return CountSteps()


class _MLP(nn.Sequential):
    """nn.Sequential with its own forward: dynamo skips the frames of torch.nn's own code, so
    an in-place compiled plain Sequential would compile nothing."""

    def forward(self, x):
        for layer in self:
            x = layer(x)
        return x


def _model(seed: int = 0):
    pl = lightning_package()
    torch.manual_seed(seed)

    class Compiled(pl.LightningModule):
        def __init__(self, how: str, backend: str):
            super().__init__()
            net = _MLP(
                nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))
            if how == "wrapper":
                net = torch.compile(net, backend=backend)
            elif how == "in-place":
                net.compile(backend=backend)
            self.net = net

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return ((self(x) - y) ** 2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    return Compiled


#: How the model is compiled: its submodule wrapped (``torch.compile(net)``) or compiled in
#: place (``net.compile()``), or the whole LightningModule handed compiled to ``fit``.
HOW = ("wrapper", "in-place", "LightningModule")


def measure(with_gradwatch: bool, steps: int = 20, every_n_steps: int = 5,
            backend: str = "eager", how: str = "wrapper", root: str | None = None) -> Figures:
    """Train ``steps`` steps of a small MLP compiled ``how`` (one of HOW); dynamo's counts
    per kind of step."""
    pl = lightning_package()
    torch._dynamo.reset()
    counters.clear()
    figures = Figures()
    module = _model()(how, backend)
    if how == "LightningModule":
        module = torch.compile(module, backend=backend)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(steps * 16, 8, generator=generator)
    data = torch.utils.data.TensorDataset(x, x[:, :1] * 0.5)
    callbacks = [_step_counter(figures, every_n_steps)]
    diagnostics = None
    if with_gradwatch:
        diagnostics = TrainingDiagnostics(every_n_steps=every_n_steps, tensorboard=False,
                                          alerts=False)
        callbacks.append(diagnostics)
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, callbacks=callbacks, default_root_dir=root)
    start = _read()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=16))
    _add(figures.total, start, _read())
    figures.break_reasons = Counter(counters["graph_break"])
    if diagnostics is not None and diagnostics.last_snapshot is not None:
        figures.layers = diagnostics.last_snapshot.layers
    return figures


def _row(name: str, counts: StepCounts) -> str:
    return f"| {name} | {counts.frames} | {counts.graphs} | {counts.breaks} |"


def report(bare: Figures, watched: Figures) -> str:
    lines = ["| training / steps | frames compiled | graphs | graph breaks |",
             "|---|---|---|---|"]
    for name, figures in (("bare", bare), ("gradwatch", watched)):
        for kind in ("total", "warm_up", "sampled", "unsampled"):
            lines.append(_row(f"{name} / {kind}", getattr(figures, kind)))
    lines.append(f"\nlayer names with gradwatch: {', '.join(watched.layers)}")
    for reason, count in watched.break_reasons.most_common():
        lines.append(f"graph break with gradwatch ({count}x): {reason}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="eager", help="torch.compile backend")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--every", type=int, default=5, help="every_n_steps")
    parser.add_argument("--how", choices=HOW, default=HOW[0], help="what is compiled")
    args = parser.parse_args(argv)
    for name in ("lightning.pytorch", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    torch.set_num_threads(1)
    bare = measure(False, args.steps, args.every, args.backend, args.how)
    watched = measure(True, args.steps, args.every, args.backend, args.how)
    text = report(bare, watched)
    print(text)
    return text


if __name__ == "__main__":
    main()
