"""Optimizer-update statistics of a sampled step: signs of Adam instability (arXiv 2304.09871).

- update/gradient cosine per layer: cos(W_before - W_after, grad). Plain SGD gives 1; Adam
  stays clearly positive while it follows the gradient, and falls toward 0 (or below) when
  its updates decorrelate from it;
- Adam eps-dominated ratio per layer: the fraction of elements whose bias-corrected second
  moment has sqrt(v_hat) <= 10 eps, where eps, not the gradient, sets the step size.

Device tensors only, no host read: the Monitor packs them into the sampled step's transfer.
Sharded (FSDP2) parameters count with this rank's shard only.
"""

from __future__ import annotations

import numpy as np
import torch

from .collectives import local_shard
from .tensor_stats import SMALL_NUMEL
from .watched import WatchedParams

#: sqrt(v_hat) at or below this many eps counts as eps-dominated.
EPS_FACTOR = 10.0
# per-parameter rows: <-delta, grad>, |delta|^2, |grad|^2, eps-dominated count, Adam elements
_DOT, _DELTA_SQ, _GRAD_SQ, _EPS_COUNT, _ADAM_NUMEL = range(5)
ROWS = 5
#: Elements one batched reduction concatenates at most (whole parameters; a larger one is
#: reduced alone): bounds the sampled step's extra memory at a few such buffers.
BUCKET_ELEMENTS = 1 << 22


def new_table(n_params: int, device: torch.device) -> torch.Tensor:
    return torch.zeros(ROWS, n_params, device=device)


@torch.no_grad()
def record_update(table: torch.Tensor, optimizer: torch.optim.Optimizer, index: torch.Tensor,
                  params: list[torch.Tensor], descent: list[torch.Tensor],
                  descent_squares: torch.Tensor, watched: WatchedParams) -> None:
    """Fill ``table`` columns ``index`` for ``params`` after ``optimizer``'s step, given
    their ``descent`` (W_before - W_after) and its squared norms. On a float32 CPU model a
    BLAS dot per parameter; otherwise parameters are reduced in buckets of concatenated
    tensors, a few ops per bucket instead of per parameter."""
    # a sparse gradient (nn.Embedding(sparse=True)) densified: sampled steps only
    grads = [torch.zeros_like(p) if p.grad is None else
             p.grad.to_dense() if p.grad.is_sparse else p.grad for p in params]
    cpu_float32 = watched.cpu_float32
    flat_d = [_flat(local_shard(d)) for d in descent]
    flat_g = [_flat(local_shard(g)) for g in grads]  # under no_grad: no graph to detach
    dots = _dots(flat_d, flat_g, cpu_float32, table.device)
    rows = torch.cat([torch.stack([dots, descent_squares, watched.squared_norms(grads)]),
                      _eps_dominated(optimizer, params, table.device, cpu_float32)])
    table.index_copy_(1, index, rows)


def _flat(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.dim() == 1:  # a bias: no op
        return tensor
    return tensor.view(-1) if tensor.is_contiguous() else tensor.reshape(-1)


def _buckets(flat: list[torch.Tensor]) -> list[tuple[int, int]]:
    """[start, end) ranges of ``flat`` on one device, up to BUCKET_ELEMENTS elements each."""
    ranges, start, size = [], 0, 0
    for i, t in enumerate(flat):
        if i > start and (size + t.numel() > BUCKET_ELEMENTS or t.device != flat[start].device):
            ranges.append((start, i))
            start, size = i, 0
        size += t.numel()
    return ranges + [(start, len(flat))] if flat else ranges


def _dots(descent: list[torch.Tensor], grads: list[torch.Tensor], cpu_float32: bool,
          device: torch.device) -> torch.Tensor:
    """<-delta, grad> of each parameter (flat tensors), in float32."""
    if cpu_float32:  # a BLAS dot each: on a CPU, one pass and no intermediate tensor
        return torch.stack([d.dot(g) for d, g in zip(descent, grads)])
    sums = []
    for a, b in _buckets(descent):
        products = torch.cat(descent[a:b]).float().mul_(torch.cat(grads[a:b]).float())
        sums.append(_segment_sums(products, descent[a:b]).to(device))
    return torch.cat(sums)


def _segment_sums(values: torch.Tensor, parts: list[torch.Tensor]) -> torch.Tensor:
    """Sums of the consecutive rows of ``values`` that belong to each of ``parts``."""
    lengths = torch.tensor([p.numel() for p in parts], device=values.device)
    # unsafe: skips the checks of lengths, which read them on the host (a sync)
    return torch.segment_reduce(values, "sum", lengths=lengths, axis=0, unsafe=True)


def _eps_dominated(optimizer: torch.optim.Optimizer, params: list[torch.Tensor],
                   device: torch.device, cpu_float32: bool) -> torch.Tensor:
    """[2, len(params)]: eps-dominated elements and elements of each Adam-family
    parameter, 0 for the others."""
    groups = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    adam = [(i, optimizer.state[p]["exp_avg_sq"], groups[id(p)]) for i, p in enumerate(params)
            if isinstance(optimizer.state.get(p, {}).get("exp_avg_sq"), torch.Tensor)
            and {"eps", "betas"} <= groups.get(id(p), {}).keys()]
    out = torch.zeros(2, len(params), device=device)
    if not adam:
        return out
    v = [local_shard(second_moment) for _, second_moment, _ in adam]
    # sqrt(v / (1 - beta2^t)) <= k eps  <=>  v <= (k eps)^2 (1 - beta2^t), per parameter
    step = _steps([optimizer.state[params[i]].get("step", 1) for i, _, _ in adam], device)
    beta2 = torch.tensor([g["betas"][1] for _, _, g in adam], device=device)
    eps = torch.tensor([(EPS_FACTOR * g["eps"]) ** 2 for _, _, g in adam], device=device)
    bound = eps * (1 - beta2 ** step)
    if cpu_float32:  # per tensor: no concatenated copy of v
        counts = [torch.stack([_counts_at_most(t, limit)  # bounds: host memory already
                               for t, limit in zip(v, bound.tolist())])]
    else:
        counts = _bucketed_counts(v, bound)
    columns = torch.tensor([i for i, _, _ in adam], device=device)
    out[0].index_copy_(0, columns, torch.cat(counts))
    out[1].index_copy_(0, columns, torch.tensor([float(t.numel()) for t in v], device=device))
    return out


def _counts_at_most(t: torch.Tensor, limit: float) -> torch.Tensor:
    """How many elements of the float32 CPU tensor ``t`` are <= ``limit`` (a NaN is not)."""
    if t.numel() <= SMALL_NUMEL:  # few elements: the fewest ops win
        return (t <= limit).sum(dtype=torch.float32)
    # float arithmetic, several times faster on a CPU than a bool mask's sum: t <= limit
    # exactly when t < the next float32 above limit, when that minus t is > 0 (and NaN
    # gives NaN, whose sign is 0)
    above = float(np.nextafter(np.float32(limit), np.float32(np.inf)))
    return torch.rsub(t, above).sign_().relu_().sum()


def _bucketed_counts(v: list[torch.Tensor], bound: torch.Tensor) -> list[torch.Tensor]:
    """Per bucket of ``v``, the count of elements <= their parameter's ``bound``."""
    counts = []
    v = [_flat(t) for t in v]
    for a, b in _buckets(v):
        elements = torch.cat(v[a:b]).float()
        limits = bound[a:b].to(elements.device).repeat_interleave(
            torch.tensor([t.numel() for t in v[a:b]], device=elements.device),
            output_size=elements.numel())  # given: not read back from the device
        counts.append(_segment_sums((elements <= limits).float(), v[a:b]).to(bound.device))
    return counts


def _steps(steps: list, device: torch.device) -> torch.Tensor:
    """Adam's step counts (tensors on the CPU or the device, or numbers), as one tensor."""
    if all(isinstance(s, torch.Tensor) and s.device == steps[0].device for s in steps):
        return torch.stack(steps).to(device, torch.float32)
    return torch.stack([s.to(device, torch.float32) if isinstance(s, torch.Tensor)
                        else torch.tensor(float(s), device=device) for s in steps])


def per_layer(table: torch.Tensor, per_layer_sum) -> dict[str, torch.Tensor]:
    """Per layer [n_layers], by Snapshot field: the update/grad cosine and the
    eps-dominated ratio (NaN where undefined)."""
    sums = per_layer_sum(table.T)  # [n_layers, ROWS]
    return {"update_grad_cosine": sums[:, _DOT] / (sums[:, _DELTA_SQ] * sums[:, _GRAD_SQ]).sqrt(),
            "adam_eps_dominated_ratio": sums[:, _EPS_COUNT] / sums[:, _ADAM_NUMEL]}

