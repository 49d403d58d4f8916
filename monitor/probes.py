"""Statistics computed on the device, as tensors: never a host read in here.

Everything returns device tensors that the Monitor packs into one tensor and copies to the
host once per sampled step.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch

from .distributed import local_shard
from .layers import SATURATION_SIGMOID, SATURATION_TANH

#: Fields of one activation record, in order.
ACTIVATION_FIELDS = (
    "count", "mean", "m2", "min", "max", "zeros", "saturated", "nan", "posinf", "neginf",
)
_COUNT, _MEAN, _M2, _MIN, _MAX = range(5)
_SUMMED = slice(5, len(ACTIVATION_FIELDS))


def floating_tensors(output: object) -> list[torch.Tensor]:
    """The floating-point tensors inside a module output (tensor, tuple, list, dict, None)."""
    if isinstance(output, torch.Tensor):
        return [output] if output.is_floating_point() and output.numel() else []
    if isinstance(output, Mapping):
        output = list(output.values())
    if isinstance(output, Sequence) and not isinstance(output, (str, bytes)):
        return [t for item in output for t in floating_tensors(item)]
    return []


@torch.no_grad()
def activation_record(
    tensors: Sequence[torch.Tensor],
    saturation: int,
    sigmoid_flat: float,
    tanh_flat: float,
) -> torch.Tensor:
    """One float32 record (ACTIVATION_FIELDS) over all values of ``tensors``.

    ``saturation`` selects the flat-region test: a sigmoid output below ``sigmoid_flat`` or
    above ``1 - sigmoid_flat``, a tanh-like output with |y| above ``tanh_flat``.
    """
    records = [_one_record(t.detach(), saturation, sigmoid_flat, tanh_flat) for t in tensors]
    if len(records) == 1:
        return records[0]
    stacked = torch.stack(records)
    zeros = torch.zeros(len(records), dtype=torch.long, device=stacked.device)
    return combine_records(stacked, zeros, 1)[0]


def _one_record(y: torch.Tensor, saturation: int, sigmoid_flat: float, tanh_flat: float):
    if y.dtype != torch.float32:
        y = y.float()  # half-precision sums overflow
    var, mean = torch.var_mean(y, correction=0)
    low, high = torch.aminmax(y)
    if saturation == SATURATION_SIGMOID:
        saturated = ((y < sigmoid_flat) | (y > 1.0 - sigmoid_flat)).sum(dtype=torch.float32)
    elif saturation == SATURATION_TANH:
        saturated = (y.abs() > tanh_flat).sum(dtype=torch.float32)
    else:
        saturated = var.new_zeros(())
    count = var.new_full((), float(y.numel()))
    return torch.stack([
        count,
        mean,
        var * count,
        low,
        high,
        (y == 0).sum(dtype=torch.float32),
        saturated,
        *_nonfinite(y),
    ])


def combine_records(records: torch.Tensor, group: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Merge activation records [R, F] into [n_groups, F] (Chan's parallel variance).

    Groups without records get count 0 and NaN moments.
    """
    fields = records.shape[1]
    out = torch.zeros(n_groups, fields, dtype=records.dtype, device=records.device)
    count = out[:, _COUNT].index_add(0, group, records[:, _COUNT])
    weighted = torch.zeros_like(count).index_add(0, group, records[:, _COUNT] * records[:, _MEAN])
    mean = weighted / count
    spread = records[:, _M2] + records[:, _COUNT] * (records[:, _MEAN] - mean[group]).square()
    out[:, _COUNT] = count
    out[:, _MEAN] = mean
    out[:, _M2] = torch.zeros_like(count).index_add(0, group, spread)
    nan = torch.full_like(count, float("nan"))
    out[:, _MIN] = nan.scatter_reduce(0, group, records[:, _MIN], "amin", include_self=False)
    out[:, _MAX] = nan.scatter_reduce(0, group, records[:, _MAX], "amax", include_self=False)
    out[:, _SUMMED] = out[:, _SUMMED].index_add(0, group, records[:, _SUMMED])
    return out


def norms(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """float32 L2 norm of each tensor (of its local shard for a DTensor), as one 1-D tensor
    (fused, grouped by device)."""
    if not tensors:
        return torch.zeros(0)
    tensors = [local_shard(t) for t in tensors]
    by_device: dict[torch.device, list[int]] = {}
    for i, t in enumerate(tensors):
        by_device.setdefault(t.device, []).append(i)
    if len(by_device) == 1:
        return torch.stack(torch._foreach_norm(list(tensors), 2, dtype=torch.float32))
    home = tensors[0].device
    out = torch.empty(len(tensors), device=home)
    for positions in by_device.values():
        parts = torch._foreach_norm([tensors[i] for i in positions], 2, dtype=torch.float32)
        index = torch.tensor(positions, device=home)
        out.index_copy_(0, index, torch.stack(parts).to(home, non_blocking=True))
    return out


@torch.no_grad()
def nonfinite_counts(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """[N, 3] float32 counts of NaN, +Inf and -Inf in each tensor."""
    rows = [torch.stack(_nonfinite(local_shard(t.detach()))) for t in tensors]
    return torch.stack(rows) if rows else torch.zeros(0, 3)


def _nonfinite(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    f32 = torch.float32
    return (torch.isnan(t).sum(dtype=f32), torch.isposinf(t).sum(dtype=f32),
            torch.isneginf(t).sum(dtype=f32))


def per_layer_sum(values: torch.Tensor, pair_param: torch.Tensor, pair_layer: torch.Tensor,
                  n_layers: int) -> torch.Tensor:
    """Per-layer sum of per-parameter rows (any trailing shape)."""
    total = torch.zeros((n_layers, *values.shape[1:]), dtype=values.dtype, device=values.device)
    return total.index_add(0, pair_layer, values[pair_param])
