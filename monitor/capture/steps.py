"""The step in progress: its state, and the always-on figures it writes into its ring row.

Everything here runs on every step (or every optimizer step): device ops into the row's
cells (``RingColumn``), never a host read. A sampled step also fills its ``ParamTable``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch.nn.parameter import is_lazy

from ..probes import tensor_stats
from ..probes.param_table import ParamTable
from ..probes.watched import WatchedParams
from ..records.columns import RingColumn
from .ring import Measured, RingRow
from .skip_on_spike import SkipOnSpike


def learning_rates(optimizers: list[torch.optim.Optimizer]) -> tuple[tuple[float, ...], ...]:
    """Per optimizer, the lr of each param group."""
    return tuple(tuple(_host_float(g.get("lr", math.nan)) for g in o.param_groups)
                 for o in optimizers)


def _host_float(value: object) -> float:
    """A learning rate as a float; NaN for a tensor on an accelerator (reading it would sync)."""
    if isinstance(value, torch.Tensor) and value.device.type != "cpu":
        return math.nan
    return float(value)  # type: ignore[arg-type]  # a float, an int or a CPU tensor


@dataclass
class StepState:
    """The step in progress and its ring row's cells (one per RingColumn)."""

    step: int
    row: int
    cells: tuple[torch.Tensor, ...]
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
    clip_noted: bool = False  # the norms before and after clipping came from the clip's total

    def add_loss(self, loss: torch.Tensor) -> None:
        """The loss of one backward (micro-batch losses add up)."""
        value = self.cells[RingColumn.LOSS]
        loss = loss.detach()
        if loss.dim():
            loss = loss.reshape(-1)[0]
        # copy_ and add_ cast the dtype themselves: no extra op on the every-step path
        if self.loss_seen:
            value.add_(loss)
        else:
            value.copy_(loss)
            self.loss_seen = True

    def add_gradients(self, watched: WatchedParams,
                      optimizer: torch.optim.Optimizer | None) -> None:
        """The gradients of ``optimizer``'s parameters (all for None) not read yet."""
        if self.table is not None:
            self.table.measure_weights()
        if watched.layers.lazy and not self.lazy_seen:
            self._add_materialised(watched.layers.lazy)
        positions, grads = watched.unseen_gradients(optimizer, self.observed, self.sampled)
        if not grads:
            return
        # the ring cell holds 0 until the step's first gradients (a read row is zeroed)
        first, self.grads_seen = not self.grads_seen, True
        if self.table is None and not watched.any_sharded:  # only the total is needed
            watched.add_squared_sum(self.cells[RingColumn.GRAD_SQ], grads, first)
            return
        squares = watched.squared_norms(grads)
        if watched.any_sharded:  # shards: their squares are summed across ranks later
            sharded = watched.sharded_mask(positions)
            self.cells[RingColumn.SHARDED_SQ].add_((squares * sharded).sum())
            self.cells[RingColumn.GRAD_SQ].add_((squares * ~sharded).sum())
        else:
            self.cells[RingColumn.GRAD_SQ].add_(squares.sum())
        if self.table is not None:
            self.table.add_gradients(positions, squares, grads)

    def add_clip_total(self, total: torch.Tensor, max_norm: float) -> None:
        """The global norm of the gradients as norm clipping computed it (all of them, read
        nowhere else this step), and the norm after clipping: the total times the clip
        coefficient, computed as ``torch.nn.utils.clip_grads_with_norm_`` does."""
        self.grads_seen = self.clip_noted = True
        total = total.to(torch.float32)
        torch.mul(total, total, out=self.cells[RingColumn.GRAD_SQ])  # the cell held 0
        clipped = total * (max_norm / (total + 1e-6)).clamp_(max=1.0)
        torch.mul(clipped, clipped, out=self.cells[RingColumn.CLIP_SQ])

    def _add_materialised(self, lazy: list[torch.Tensor]) -> None:
        """Gradients of lazy parameters materialised by this step's forward count in its
        global norm (their layers are indexed from the next step)."""
        self.lazy_seen = True
        grads = [p.grad for p in lazy if p.grad is not None and not is_lazy(p)]
        if grads:
            float64 = any(g.dtype == torch.float64 for g in grads)
            self.cells[RingColumn.GRAD_SQ].add_(
                tensor_stats.squared_norms(grads, float64=float64).sum())
            self.grads_seen = True

    def before_optimizer_step(self, optimizer: torch.optim.Optimizer, skip: SkipOnSpike | None,
                              update_ratio: bool) -> None:
        if skip is not None:
            skip.save(optimizer)
        if self.table is not None and update_ratio:
            self.table.save_before(optimizer)

    def after_optimizer_step(self, optimizer: torch.optim.Optimizer, skip: SkipOnSpike | None,
                             clipped: WatchedParams | None, world_size: int) -> None:
        """Note the step; judge a spike; the post-clip norm (``clipped``: of these
        parameters); the update of a sampled step."""
        self.stepped = True
        if skip is not None:
            self._skip_if_outlier(skip, optimizer, world_size)
        if clipped is not None and not self.clip_noted:
            grads = [tensor_stats.sparse_values(p.grad) if p.grad.is_sparse else p.grad
                     for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            if grads:
                cell = self.cells[RingColumn.CLIP_SQ]
                cell.add_(clipped.squared_norms(grads).sum().to(cell.device))
        if self.table is not None:
            self.table.record_update(optimizer)

    def _skip_if_outlier(self, skip: SkipOnSpike, optimizer: torch.optim.Optimizer,
                         world_size: int) -> None:
        """Skip-on-spike: judged once per step, on the loss and gradients seen so far."""
        cells = self.cells
        if self.outlier is None:
            # every rank must decide alike: with several processes only the all-reduced
            # gradient norm is judged (each rank's loss is its own batch's)
            loss = cells[RingColumn.LOSS]
            if world_size > 1:
                loss = torch.zeros_like(loss)
            self.outlier = skip.decide(loss,
                                       cells[RingColumn.GRAD_SQ] + cells[RingColumn.SHARDED_SQ])
            cells[RingColumn.SKIPPED].copy_(self.outlier)
        skip.undo_if(optimizer, self.outlier)

    def ring_row(self, grad_scaler: object | None, clipped: bool, local_check: bool,
                 skip: bool) -> RingRow:
        """The host-side facts of the step's row, as it ends (the AMP scale copied in)."""
        scale = getattr(grad_scaler, "_scale", None)  # a tensor: reading it needs no sync
        has_scale = isinstance(scale, torch.Tensor)
        if isinstance(scale, torch.Tensor):
            self.cells[RingColumn.SCALE].copy_(scale.reshape(-1)[0], non_blocking=True)
        return RingRow(
            step=self.step, time=time.time(),
            # unhooked (no AMP scaler): a step that saw gradients is taken to have stepped
            stepped=self.stepped if self.optimizers_hooked else self.grads_seen,
            learning_rates=self.learning_rates,
            measured=Measured(self.loss_seen, self.grads_seen, clipped, has_scale, local_check,
                              skip))
