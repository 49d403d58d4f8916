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

import torch

from .distributed import local_shard

#: sqrt(v_hat) at or below this many eps counts as eps-dominated.
EPS_FACTOR = 10.0
# per-parameter rows: <-delta, grad>, |delta|^2, |grad|^2, eps-dominated count, Adam elements
_DOT, _DELTA_SQ, _GRAD_SQ, _EPS_COUNT, _ADAM_NUMEL = range(5)
ROWS = 5


def new_table(n_params: int, device: torch.device) -> torch.Tensor:
    return torch.zeros(ROWS, n_params, device=device)


@torch.no_grad()
def record_update(table: torch.Tensor, optimizer: torch.optim.Optimizer, index: torch.Tensor,
                  params: list[torch.Tensor], descent: list[torch.Tensor]) -> None:
    """Fill ``table`` columns ``index`` for ``params`` after ``optimizer``'s step, given
    their ``descent`` (W_before - W_after)."""
    # a sparse gradient (nn.Embedding(sparse=True)) densified: sampled steps only
    grads = [torch.zeros_like(p) if p.grad is None else
             p.grad.to_dense() if p.grad.is_sparse else p.grad for p in params]
    flat_d = [local_shard(d).reshape(-1).float() for d in descent]
    flat_g = [local_shard(g.detach()).reshape(-1).float() for g in grads]
    rows = [torch.stack([d.dot(g) for d, g in zip(flat_d, flat_g)]),
            torch.stack([d.dot(d) for d in flat_d]),
            torch.stack([g.dot(g) for g in flat_g])]
    groups = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    eps_rows = [_eps_dominated(optimizer.state.get(p, {}), groups.get(id(p), {}), p)
                for p in params]
    rows += [torch.stack([r[0] for r in eps_rows]).to(table.device),
             torch.stack([r[1] for r in eps_rows]).to(table.device)]
    table.index_copy_(1, index, torch.stack([r.to(table.device) for r in rows]))


def _eps_dominated(state: dict, group: dict, param: torch.Tensor):
    """(eps-dominated elements, elements) of an Adam-family parameter, else (0, 0)."""
    v = state.get("exp_avg_sq")
    if not isinstance(v, torch.Tensor) or "eps" not in group or "betas" not in group:
        zero = torch.zeros((), device=param.device)
        return zero, zero
    beta2 = group["betas"][1]
    step = state.get("step", 1)
    # sqrt(v / (1 - beta2^t)) <= k eps  <=>  v <= (k eps)^2 (1 - beta2^t); t may be a tensor
    bias_correction = 1 - beta2 ** step if isinstance(step, torch.Tensor) else \
        torch.tensor(1 - beta2 ** float(step), device=v.device)
    bound = (EPS_FACTOR * group["eps"]) ** 2 * bias_correction.to(v.device, torch.float32)
    v = local_shard(v)
    count = (v.float() <= bound.to(v.device)).sum(dtype=torch.float32)
    return count, torch.tensor(float(v.numel()), device=v.device)


def per_layer(table: torch.Tensor, per_layer_sum) -> dict[str, torch.Tensor]:
    """Per layer [n_layers], by Snapshot field: the update/grad cosine and the
    eps-dominated ratio (NaN where undefined)."""
    sums = per_layer_sum(table.T)  # [n_layers, ROWS]
    return {"update_grad_cosine": sums[:, _DOT] / (sums[:, _DELTA_SQ] * sums[:, _GRAD_SQ]).sqrt(),
            "adam_eps_dominated_ratio": sums[:, _EPS_COUNT] / sums[:, _ADAM_NUMEL]}

