"""The per-parameter table of a sampled step: gradient, weight and update norms.

One device table [ParamRow, n_params] per sampled step, filled by in-place ops as the step
runs: gradient norms and non-finite counts when the gradients are observed, weight norms
once, and, around each optimizer step, the norm of the update W_before - W_after from a
transient copy of the updated parameters (freed right after that optimizer step).
"""

from __future__ import annotations

import torch

from ..records.columns import (
    PARAM_GRAD_NONFINITE,
    PARAM_ROWS,
    PARAM_SQUARED_NORMS,
    PARAM_WEIGHT_NONFINITE,
    UPDATE_STATISTICS,
    ParamRow,
    TransferPart,
)
from . import tensor_stats, update_stats
from .transfer import TransferLayout
from .watched import WatchedParams


class ParamTable:
    """The per-parameter figures of one sampled step, on the device.

    Args:
        watched: the parameters, their device and norms.
    """

    def __init__(self, watched: WatchedParams) -> None:
        self.watched = watched
        n_params = len(watched.params)
        self.values = torch.zeros(PARAM_ROWS, n_params, device=watched.device,
                                  dtype=torch.float32)
        self.update_table = update_stats.new_table(n_params, watched.device)
        self.has_grad: set[int] = set()  # positions whose gradient was seen
        self.updated: set[int] = set()  # positions an optimizer stepped
        self.weights_seen = False
        self._before: dict[int, tuple[list[int], list[torch.Tensor]]] = {}  # by optimizer

    # no_grad: no graph through the parameters, without an op per parameter to detach them
    @torch.no_grad()
    def measure_weights(self) -> None:
        """Norms and non-finite counts of every parameter, once (before the update)."""
        if self.weights_seen:
            return
        params: list[torch.Tensor] = list(self.watched.params)
        if params:
            squares = self.watched.squared_norms(params)
            self.values[ParamRow.WEIGHT_SQ] = squares
            if not tensor_stats.all_finite(squares):
                self.values[PARAM_WEIGHT_NONFINITE] = tensor_stats.nonfinite_counts(params).T
        self.weights_seen = True

    def add_gradients(self, positions: list[int], squares: torch.Tensor,
                      grads: list[torch.Tensor]) -> None:
        """The gradients of ``positions`` and their squared norms."""
        index = self.watched.index_of(positions)
        self.values[ParamRow.GRAD_SQ].index_copy_(0, index, squares)
        if not tensor_stats.all_finite(squares):
            self.values[PARAM_GRAD_NONFINITE].index_copy_(1, index,
                                                          tensor_stats.nonfinite_counts(grads).T)
        self.has_grad.update(positions)

    @torch.no_grad()
    def save_before(self, optimizer: torch.optim.Optimizer) -> None:
        """Before ``optimizer`` steps: copy the parameters it may update."""
        self.measure_weights()  # the update ratio's denominator: W before the step
        positions, watched = self.watched.of_optimizer(optimizer)
        kept = [k for k, p in enumerate(watched) if p.requires_grad]
        params = [watched[k] for k in kept]
        if params:
            self._before[id(optimizer)] = ([positions[k] for k in kept],
                                           list(torch._foreach_mul(params, 1.0)))

    @torch.no_grad()
    def record_update(self, optimizer: torch.optim.Optimizer) -> None:
        """After ``optimizer`` stepped: the norms of its update, then the copy is freed."""
        saved = self._before.pop(id(optimizer), None)
        if saved is None:
            return
        positions, before = saved
        params: list[torch.Tensor] = [self.watched.params[i] for i in positions]
        index = self.watched.index_of(positions)
        values = self.values
        values[ParamRow.UPDATED_WEIGHT_SQ].index_copy_(0, index, values[ParamRow.WEIGHT_SQ][index])
        torch._foreach_sub_(before, params)
        update_squares = self.watched.squared_norms(before)
        values[ParamRow.UPDATE_SQ].index_copy_(0, index, update_squares)
        update_stats.record_update(self.update_table, optimizer, index, params, before,
                                   update_squares, self.watched)
        # a parameter without a gradient (unused in forward) is not stepped: its update is
        # "not measured", not 0 (read now: a closure makes the gradients)
        self.updated.update(i for i, p in zip(positions, params) if p.grad is not None)

    def release(self) -> None:
        """Drop the copies of optimizers that never stepped."""
        self._before.clear()

    def add_to(self, layout: TransferLayout, values: torch.Tensor) -> None:
        """Per-layer figures of ``values`` (this table, sharded sums completed) by name."""
        by_layer = self.watched.by_layer
        # [4, n_layers], contiguous: each row goes by name without a copy
        norms = by_layer(values[PARAM_SQUARED_NORMS].T).sqrt().T.contiguous()
        for part, row in ((TransferPart.LAYER_GRAD_NORM, ParamRow.GRAD_SQ),
                          (TransferPart.LAYER_WEIGHT_NORM, ParamRow.WEIGHT_SQ),
                          (TransferPart.LAYER_UPDATE_NORM, ParamRow.UPDATE_SQ),
                          (TransferPart.LAYER_UPDATED_WEIGHT_NORM, ParamRow.UPDATED_WEIGHT_SQ)):
            layout.add(part, norms[row])
        layout.add(TransferPart.LAYER_GRAD_NONFINITE, by_layer(values[PARAM_GRAD_NONFINITE].T))
        layout.add(TransferPart.LAYER_WEIGHT_NONFINITE,
                   by_layer(values[PARAM_WEIGHT_NONFINITE].T))
        for name, figure in update_stats.per_layer(self.update_table, by_layer).items():
            layout.add(UPDATE_STATISTICS[name], figure)
