"""The step in progress: its state, and the always-on figures it writes into its ring row.

Every function here runs on every step (or every optimizer step): device ops into the row's
cells (``RingColumn``), never a host read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from . import probes
from .layouts import RingColumn
from .param_table import ParamTable
from .responses import SkipOnSpike
from .watched import WatchedParams

Cells = tuple[torch.Tensor, ...]  # one ring row's cells, per RingColumn


@dataclass
class StepState:
    """State of the step in progress."""

    step: int
    row: int
    sampled: bool
    regular: bool
    learning_rates: tuple[tuple[float, ...], ...]  # read when the step starts: those it runs with
    optimizers_hooked: bool  # else ``stepped`` is not observed
    table: ParamTable | None = None  # sampled steps only
    loss_seen: bool = False
    grads_seen: bool = False
    lazy_seen: bool = False
    stepped: bool = False
    observed: set[int] = field(default_factory=set)  # positions whose gradient was read
    outlier: torch.Tensor | None = None  # skip-on-spike's device verdict on this step


def learning_rates(optimizers: list[torch.optim.Optimizer]) -> tuple[tuple[float, ...], ...]:
    """Per optimizer, the lr of each param group."""
    return tuple(tuple(_host_float(g.get("lr", math.nan)) for g in o.param_groups)
                 for o in optimizers)


def _host_float(value: object) -> float:
    """A learning rate as a float; NaN for a tensor on an accelerator (reading it would sync)."""
    if isinstance(value, torch.Tensor) and value.device.type != "cpu":
        return math.nan
    return float(value)


def add_loss(state: StepState, cells: Cells, loss: torch.Tensor) -> None:
    """The loss of one backward (micro-batch losses add up)."""
    value = cells[RingColumn.LOSS]
    loss = loss.detach()
    if loss.dim():
        loss = loss.reshape(-1)[0]
    # copy_ and add_ cast the dtype themselves: no extra op on the every-step path
    if state.loss_seen:
        value.add_(loss)
    else:
        value.copy_(loss)
        state.loss_seen = True


def add_gradient_squares(cells: Cells, squares: torch.Tensor,
                         sharded: torch.Tensor | None) -> None:
    """Squared gradient norms into the global norm (shards apart: their squares are summed
    across ranks at the next regular sample)."""
    if sharded is None:
        cells[RingColumn.GRAD_SQ].add_(squares.sum())
    else:
        cells[RingColumn.SHARDED_SQ].add_((squares * sharded).sum())
        cells[RingColumn.GRAD_SQ].add_((squares * ~sharded).sum())


def add_clipped_norm(cells: Cells, optimizer: torch.optim.Optimizer,
                     watched: WatchedParams) -> None:
    """After ``optimizer`` stepped: its gradients' squared norm, as clipped."""
    grads = [probes.sparse_values(p.grad) if p.grad.is_sparse else p.grad
             for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if grads:
        cell = cells[RingColumn.CLIP_SQ]
        cell.add_(watched.squared_norms(grads).sum().to(cell.device))


def skip_if_outlier(skip: SkipOnSpike, state: StepState, cells: Cells,
                    optimizer: torch.optim.Optimizer, world_size: int) -> None:
    """Skip-on-spike: judged once per step, on the loss and gradients seen so far."""
    if state.outlier is None:
        # every rank must decide alike: with several processes only the all-reduced
        # gradient norm is judged (each rank's loss is its own batch's)
        loss = cells[RingColumn.LOSS]
        if world_size > 1:
            loss = torch.zeros_like(loss)
        state.outlier = skip.decide(loss, cells[RingColumn.GRAD_SQ] + cells[RingColumn.SHARDED_SQ])
        cells[RingColumn.SKIPPED].copy_(state.outlier)
    skip.undo_if(optimizer, state.outlier)
