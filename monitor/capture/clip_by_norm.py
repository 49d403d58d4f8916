"""Gradient clipping by norm that is also the step's read of the gradients.

``torch.nn.utils.clip_grad_norm_`` is ``get_total_norm`` (one pass over the gradients)
followed by ``clip_grads_with_norm_``. That total is the global gradient norm the monitor
reads every step, and the norm after clipping follows from it (the total times the clip
coefficient). So a step that needs only the global norm takes both from the clip's own pass,
instead of two passes of its own (before and after clipping). The same two torch functions
run in the same order as in ``clip_grad_norm_``, so training is bit-identical to it.
"""

from __future__ import annotations

import time

import torch

from ..probes.overhead import Stopwatch
from ..probes.watched import WatchedParams
from .steps import StepState

try:  # torch >= 2.6 splits clip_grad_norm_ into these two; before, nothing is fused
    from torch.nn.utils import clip_grads_with_norm_, get_total_norm
    FUSABLE = True
except ImportError:
    FUSABLE = False
LOW_PRECISION = (torch.float16, torch.bfloat16)


def fusable_gradients(state: StepState | None, watched: WatchedParams,
                      parameters: list[torch.Tensor], optimizer: torch.optim.Optimizer | None,
                      norm_type: float) -> list[torch.Tensor] | None:
    """The gradients the clip will read, when its total norm can stand for the step's read
    of them: an unsampled step (a sampled one needs each parameter's norm), nothing read yet,
    the L2 norm, exactly the watched parameters of ``optimizer`` (all with ``None``), dense
    float32/float64 gradients (a half-precision total is too coarse for the figures), no
    shards, no lazy parameters still to count; else None."""
    if (state is None or not FUSABLE or state.table is not None or state.observed
            or norm_type != 2.0 or watched.any_sharded or watched.sparse_grads
            or (watched.layers.lazy and not state.lazy_seen)):
        return None
    positions, params = watched.of_optimizer(optimizer)
    if len(params) != len(parameters) or any(a is not b for a, b in zip(params, parameters)):
        return None
    grads = [p.grad for p in parameters if p.grad is not None]
    if any(not p.requires_grad for p in parameters if p.grad is not None) or any(
            g.dtype in LOW_PRECISION or g.is_sparse for g in grads):
        return None  # a frozen parameter's stale gradient: the monitor does not count it
    state.observed.update(positions)
    return grads



def clip_noting_total(state: StepState, grads: list[torch.Tensor],
                      parameters: list[torch.Tensor], max_norm: float, norm_type: float,
                      error_if_nonfinite: bool, foreach: bool | None,
                      stopwatch: Stopwatch) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` of ``parameters`` (whose gradients are the
    ``fusable_gradients``), its total norm noted in the step (timed on ``stopwatch``: the
    clip itself is the training's work)."""
    total = get_total_norm(grads, norm_type, error_if_nonfinite, foreach)
    start = time.perf_counter()
    state.add_clip_total(total, max_norm)
    stopwatch.add_since(start)
    clip_grads_with_norm_(parameters, max_norm, total, foreach)
    return total
