"""The model's parameters as the Monitor reads them: positions, layers, shards and norms.

Rebuilt whenever the layers are indexed again; everything here is derived from the
LayerIndex and cached, since the every-step path looks it up.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from . import collectives, tensor_stats
from .layers import LayerIndex

log = logging.getLogger("gradwatch")


def warn_if_unwatchable(model: nn.Module, layers: LayerIndex) -> None:
    """Say so, once, when the layers of ``model`` cannot be watched as they are."""
    if not layers.params and not layers.lazy:
        log.warning("gradwatch: %s has no parameters: there is nothing to watch "
                    "but the loss", type(model).__name__)
    if any(type(p).__name__ == "FlatParameter" for p in layers.params):
        log.warning("gradwatch: FSDP1 flat parameters found: per-layer figures would "
                    "be those of flattened local shards. Use FSDP2 (fully_shard) for "
                    "exact per-layer norms.")


def warn_skip_off_for_shards() -> None:
    log.warning("gradwatch: skip_on_spike is off: with sharded (FSDP2) parameters the "
                "global gradient norm is only whole at regular samples, so ranks "
                "could not decide alike")


class _OptimizerParams(NamedTuple):
    group_sizes: tuple[int, ...]  # renewed when they change
    positions: list[int]
    params: list[torch.Tensor]  # the nn.Parameters themselves


def _unseen(positions: list[int], params: list[torch.Tensor], observed: set[int]
            ) -> tuple[list[int], list[torch.Tensor]]:
    """Positions and gradients of the parameters with a gradient, not ``observed``."""
    found = [p.grad if p.requires_grad else None for p in params]  # frozen: stale grad
    kept = [k for k, (i, g) in enumerate(zip(positions, found))
            if g is not None and i not in observed]
    return [positions[k] for k in kept], [g for g in (found[k] for k in kept) if g is not None]


class WatchedParams:
    """Positions (in ``layers.params``) of the parameters watched, and their device tensors.

    Args:
        layers: the model's layer index.
    """

    def __init__(self, layers: LayerIndex) -> None:
        self.layers = layers
        self.params = layers.params
        self.layer_params: list[list[int]] = [[] for _ in layers.names]
        for p, layer in zip(layers.pair_param.tolist(), layers.pair_layer.tolist()):
            self.layer_params[layer].append(p)
        sharded = [collectives.is_sharded(p) for p in self.params]
        self.sharded = torch.tensor(sharded, dtype=torch.bool)
        self.any_sharded = any(sharded)  # a host bool: testing the tensor would sync
        self.device = self.params[0].device if self.params else torch.device("cpu")
        self._norm_options: dict[str, bool] = {}
        self._norm_key: tuple[torch.device, torch.dtype | None] | None = None
        self._index: dict[tuple[int, ...], torch.Tensor] = {}
        self._by_optimizer: dict[int, _OptimizerParams] = {}
        # positions of parameters with sparse gradients: of modules built for them, and
        # those seen on sampled steps
        position = layers.param_position
        self.sparse_grads = {position[id(p)] for m in layers.modules
                             if getattr(m, "sparse", False) is True
                             for p in m._parameters.values() if id(p) in position}

    def settle(self) -> torch.device:
        """The parameters' device now (the model may have moved); norms fit their dtype."""
        params = self.params
        self.device = params[0].device if params else torch.device("cpu")
        dtype = params[0].dtype if params else None
        if self._norm_key != (self.device, dtype):  # first step, or model moved
            # gradients and update copies have their parameters' dtype and device
            self._norm_options = {
                "shards": self.any_sharded,
                "cpu_float32": all(p.device.type == "cpu" and p.dtype == torch.float32
                                   for p in params),
                "float64": any(p.dtype == torch.float64 for p in params),
                "one_device": all(p.device == self.device for p in params)}
            self._norm_key = (self.device, dtype)
        return self.device

    @property
    def cpu_float32(self) -> bool:
        """Every parameter (so gradient and update) is a float32 CPU tensor."""
        return self._norm_options["cpu_float32"]

    def squared_norms(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """Squared norms of gradients, weights or updates of these parameters."""
        return tensor_stats.squared_norms(tensors, **self._norm_options)

    def add_squared_sum(self, cell: torch.Tensor, tensors: list[torch.Tensor],
                        first: bool) -> None:
        """Add the sum of the squared norms of these parameters' ``tensors`` into ``cell``
        (``first``: it holds 0)."""
        tensor_stats.add_squared_sum(cell, tensors, first, **self._norm_options)

    def index_of(self, positions: list[int]) -> torch.Tensor:
        """``positions`` as a device index tensor (cached: the same sets recur every step)."""
        key = tuple(positions)
        index = self._index.get(key)
        if index is None or index.device != self.device:
            index = torch.tensor(positions, dtype=torch.long, device=self.device)
            self._index[key] = index
        return index

    def sharded_mask(self, positions: list[int]) -> torch.Tensor:
        """Mask of the sharded ones among ``positions``."""
        return self.sharded.to(self.device)[self.index_of(positions)]

    def of_optimizer(self, optimizer: torch.optim.Optimizer | None
                     ) -> tuple[list[int], list[torch.Tensor]]:
        """Positions and parameters watched through ``optimizer`` (all for None), cached:
        this runs every step; a change of the param groups' sizes renews it."""
        groups = () if optimizer is None else tuple(len(g["params"]) for g in
                                                    optimizer.param_groups)
        cached = self._by_optimizer.get(id(optimizer))
        if cached is None or cached.group_sizes != groups:
            if optimizer is None:
                positions = list(range(len(self.params)))
            else:
                position = self.layers.param_position
                positions = [position[id(p)] for g in optimizer.param_groups for p in g["params"]
                             if id(p) in position]
            cached = _OptimizerParams(groups, positions, [self.params[i] for i in positions])
            self._by_optimizer[id(optimizer)] = cached
        return cached.positions, cached.params

    def unseen_gradients(self, optimizer: torch.optim.Optimizer | None, observed: set[int],
                         sampled: bool) -> tuple[list[int], list[torch.Tensor]]:
        """Positions and gradients of ``optimizer``'s parameters not ``observed`` yet in the
        step (then added to it); sparse gradients as their values."""
        positions, params = self.of_optimizer(optimizer)
        # the usual step: the first read, every parameter has its gradient (one pass)
        grads = [] if observed else [p.grad for p in params
                                     if p.grad is not None and p.requires_grad]
        if len(grads) != len(params):
            positions, grads = _unseen(positions, params, observed)
        observed.update(positions)
        if sampled:  # a parameter's gradient layout is that of its module: looked at here
            self.sparse_grads.difference_update(positions)
            self.sparse_grads.update(i for i, g in zip(positions, grads) if g.is_sparse)
        if self.sparse_grads:
            grads = [tensor_stats.sparse_values(g) if i in self.sparse_grads else g
                     for i, g in zip(positions, grads)]
        return positions, grads

    def layer_mask(self, positions: set[int]) -> np.ndarray:
        """Per layer (registration order): does it own any of ``positions``?"""
        return np.array([any(p in positions for p in params) for params in self.layer_params],
                        dtype=bool)

    def by_layer(self, values: torch.Tensor) -> torch.Tensor:
        """Per-layer sums [n_layers, ...] of per-parameter rows [n_params, ...]."""
        layers = self.layers
        if layers.pair_param.device != values.device:
            layers.pair_param = layers.pair_param.to(values.device)
            layers.pair_layer = layers.pair_layer.to(values.device)
        return tensor_stats.per_layer_sum(values, layers.pair_param, layers.pair_layer, len(layers))
