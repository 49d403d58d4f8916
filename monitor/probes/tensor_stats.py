"""Statistics computed on the device, as tensors: never a host read in here.

Everything returns device tensors that the Monitor packs into one tensor and copies to the
host once per sampled step.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..records.columns import ACTIVATION_SUMMED, ActivationField, RawActivationField
from .collectives import local_shard
from .layers import SATURATION_SIGMOID, SATURATION_TANH

#: A shared constant for the counts a CPU record knows to be 0 (stacked, never written).
_CPU_ZERO = torch.zeros(())

#: Up to this many elements, the per-op overhead (~5-10 us on a CPU), not the per-element
#: work, is a tensor's cost: the fewest ops win, and parameters are counted together.
SMALL_NUMEL = 1 << 12


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
def raw_activation_records(
    rows: torch.Tensor,
    saturation: int,
    sigmoid_flat: float,
    tanh_flat: float,
) -> torch.Tensor:
    """The raw records [k, RawActivationField] of the k output tensors flattened as the rows
    of ``rows`` [k, n], one op per statistic for all of them: without their counts, and
    with the counts of NON-zero values: ``complete_records`` adds the counts and turns them
    into zeros for all records of a step at once (an op per step, not per output).

    ``saturation`` selects the flat-region test: a sigmoid output below ``sigmoid_flat`` or
    above ``1 - sigmoid_flat``, a tanh-like output with |y| above ``tanh_flat``.
    """
    if rows.dtype != torch.float32:
        rows = rows.float()  # half-precision sums overflow
    low, high = rows.amin(dim=1), rows.amax(dim=1)  # aminmax(dim=) is slower on a CPU
    finite = _known_finite(low, high)
    mean, m2, nonzero, saturated = _moments_and_counts(rows, finite, saturation,
                                                       sigmoid_flat, tanh_flat)
    if finite:
        nonfinite: tuple[torch.Tensor, ...] = (_CPU_ZERO.expand(len(rows)),) * 3
    else:  # exact counts whatever the values (an accelerator is never asked: a sync)
        flags, signed_inf = _nonfinite_flags(rows)
        nonfinite = _kinds(flags.sum(dim=1), signed_inf.sum(dim=1),
                           signed_inf.square().sum(dim=1))
    return torch.stack([mean, m2, low, high, nonzero, saturated, *nonfinite], dim=1)


@dataclass(frozen=True)
class RowSample:
    """Whole rows of one large output drawn at random, and what was read over all of it."""

    values: torch.Tensor  # the rows drawn, flat, float32
    low: torch.Tensor  # the output's exact min and max
    high: torch.Tensor
    scale: float  # the output's values per value drawn
    nonfinite: torch.Tensor | None  # exact (NaN, +Inf, -Inf) counts; None: known finite


@torch.no_grad()
def draw_rows(output: torch.Tensor, sample_values: int,
              generator: torch.Generator) -> RowSample | None:
    """Whole rows (vectors along the last dim) of ``output`` drawn at random, with
    replacement, up to ``sample_values`` values (at least one row), with its extremes and,
    unless they show every value finite, its non-finite counts read over all of it; None
    for an output of at most one sample's rows (recorded exactly instead).

    The rows come from ``generator`` (on the output's device): the global RNG, and so the
    training, is untouched, and the draw follows no sequence position or channel.
    """
    width = output.shape[-1] if output.dim() else 1
    leading = output.shape[:-1] if output.dim() else ()
    n_rows = output.numel() // width
    take = max(1, sample_values // width)
    if take >= n_rows:
        return None
    # the full tensor, in its own strides (a reshape would copy a non-contiguous output)
    low, high = output.amin(), output.amax()
    finite = _known_finite(low, high)
    index = torch.randint(n_rows, (take,), generator=generator, device=output.device)
    if len(leading) == 1:  # one op, in any strides
        rows = output.index_select(0, index)
    elif output.is_contiguous():  # one op
        rows = output.view(-1, width).index_select(0, index)
    else:  # the rows picked in the output's own strides: no copy of the whole output
        rows = output[torch.unravel_index(index, leading)]
    # on a CPU the counts are made only when the extremes say non-finite
    nonfinite = None if finite else torch.stack(_nonfinite(output))
    return RowSample(rows.float().view(-1), low, high, output.numel() / rows.numel(),
                     nonfinite)


@torch.no_grad()
def sampled_records(samples: Sequence[RowSample], saturation: int, sigmoid_flat: float,
                    tanh_flat: float) -> torch.Tensor:
    """The raw records [k, RawActivationField] of the k outputs ``samples`` were drawn from
    (samples of one size, on one device), one op per statistic for all of them: extremes
    and non-finite counts exact, moments and ratios of the rows drawn, their sums (M2, the
    non-zero and saturated counts) scaled to the whole output, so that ``complete_records``
    and ``combine_records`` treat them as exact records."""
    rows = torch.stack([s.values for s in samples])
    finite = all(s.nonfinite is None for s in samples)
    mean, m2, nonzero, saturated = _moments_and_counts(rows, finite, saturation,
                                                       sigmoid_flat, tanh_flat)
    extremes = torch.stack([s.low for s in samples] + [s.high for s in samples])
    extremes = extremes.view(2, -1).T.float()  # [k, (min, max)]
    if finite:
        nonfinite = _CPU_ZERO.expand(len(samples), 3)
    else:
        none = torch.zeros(3, device=rows.device)
        nonfinite = torch.stack([none if s.nonfinite is None else s.nonfinite.to(rows.device)
                                 for s in samples])
    scale = torch.tensor([s.scale for s in samples], device=rows.device)
    sums = torch.stack([m2, nonzero, saturated], dim=1).mul_(scale[:, None])
    return torch.cat([mean[:, None], sums[:, :1], extremes, sums[:, 1:], nonfinite], dim=1)


def _known_finite(low: torch.Tensor, high: torch.Tensor) -> bool:
    """True when these extremes show every value finite (NaN would make them NaN): only on
    a CPU, where they are host memory already and reading them is free; an accelerator is
    never asked (a sync), its values are always counted."""
    if low.device.type != "cpu":
        return False
    if low.dtype == torch.bfloat16:  # numpy has none
        low, high = low.float(), high.float()
    # numpy's views, not .item(): a scalar read is a sync where the code runs on a device
    # (and counted as one by the profilers that check it)
    return bool(np.isfinite(low.numpy()).all()) and bool(np.isfinite(high.numpy()).all())


def _moments_and_counts(
    rows: torch.Tensor, finite: bool, saturation: int, sigmoid_flat: float, tanh_flat: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row of the float32 ``rows``: mean, sum of squared deviations, non-zero count and
    saturated count (``finite``: every value is known finite)."""
    # mean, then the norm of the centred values: as exact as var_mean (no cancellation) and
    # several times cheaper on a CPU than its Welford loop
    mean = rows.mean(dim=1)
    m2 = torch.linalg.vector_norm(rows - mean[:, None], dim=1).square_()
    if finite:
        # counts by float arithmetic, which a CPU does up to 10x faster than reductions of
        # bool masks
        nonzero = rows.sign().abs_().sum(dim=1)
        if saturation == SATURATION_SIGMOID:
            saturated = (_count_positive(sigmoid_flat - rows)
                         + _count_positive(rows - (1.0 - sigmoid_flat)))
        elif saturation == SATURATION_TANH:
            saturated = _count_positive(rows.abs().sub_(tanh_flat))
        else:
            saturated = _CPU_ZERO.expand(len(rows))
        return mean, m2, nonzero, saturated
    f32 = torch.float32
    nonzero = torch.count_nonzero(rows, dim=1).to(f32)
    if saturation == SATURATION_SIGMOID:
        saturated = ((rows < sigmoid_flat) | (rows > 1.0 - sigmoid_flat)).sum(1, dtype=f32)
    elif saturation == SATURATION_TANH:
        saturated = (rows.abs() > tanh_flat).sum(dim=1, dtype=f32)
    else:
        saturated = mean.new_zeros(len(rows))
    return mean, m2, nonzero, saturated


def _count_positive(rows: torch.Tensor) -> torch.Tensor:
    """How many of the finite values of each row are > 0 (x - t > 0 exactly when x > t)."""
    return rows.sign_().relu_().sum(dim=1)


def complete_records(raw: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Records [R, ActivationField] from ``raw_activation_record`` rows [R,
    RawActivationField] and their counts [R]."""
    counts = counts.to(raw.dtype)[:, None]
    nonzero = RawActivationField.NONZERO
    return torch.cat([counts, raw[:, :nonzero], counts - raw[:, nonzero:nonzero + 1],
                      raw[:, nonzero + 1:]], dim=1)


def combine_records(records: torch.Tensor, group: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Merge activation records [R, F] into [n_groups, F] (Chan's parallel variance).

    Groups without records get count 0 and NaN moments.
    """
    fields = records.shape[1]
    out = torch.zeros(n_groups, fields, dtype=records.dtype, device=records.device)
    f = ActivationField
    count = out[:, f.COUNT].index_add(0, group, records[:, f.COUNT])
    weighted = torch.zeros_like(count).index_add(0, group,
                                                 records[:, f.COUNT] * records[:, f.MEAN])
    mean = weighted / count
    spread = records[:, f.M2] + records[:, f.COUNT] * (records[:, f.MEAN] - mean[group]).square()
    out[:, f.COUNT] = count
    out[:, f.MEAN] = mean
    out[:, f.M2] = torch.zeros_like(count).index_add(0, group, spread)
    nan = torch.full_like(count, float("nan"))
    out[:, f.MIN] = nan.scatter_reduce(0, group, records[:, f.MIN], "amin", include_self=False)
    out[:, f.MAX] = nan.scatter_reduce(0, group, records[:, f.MAX], "amax", include_self=False)
    summed = ACTIVATION_SUMMED
    out[:, summed] = out[:, summed].index_add(0, group, records[:, summed])
    return out


def squared_norms(tensors: Sequence[torch.Tensor], shards: bool = False,
                  cpu_float32: bool = False, float64: bool = False,
                  one_device: bool = False) -> torch.Tensor:
    """float32 squared L2 norm of each tensor as one 1-D tensor; with ``shards``, of each
    DTensor's local shard.

    ``cpu_float32`` (the caller knows that every tensor is a float32 CPU tensor): a BLAS
    dot product each, faster there than ``_foreach_norm``; otherwise one fused
    ``torch._foreach_norm`` per device, accumulated in float32; with ``float64`` (some
    tensors are float64, which ``_foreach_norm`` cannot narrow), those in float64.
    ``one_device`` (the caller knows that every tensor is on one device): no look at each.
    """
    if not tensors:
        return torch.zeros(0)
    if shards:
        tensors = [local_shard(t) for t in tensors]
    if cpu_float32:
        flat = [t if t.dim() == 1 else t.reshape(-1) for t in tensors]  # biases: no op
        return torch.stack([f.dot(f) for f in flat])
    if one_device and not float64:
        return _fused_norms(tensors).square()
    # one fused _foreach_norm per device (and, with float64, for the float64 tensors apart)
    groups: dict[tuple[torch.device, bool], list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.device, float64 and t.dtype == torch.float64), []).append(i)
    if len(groups) == 1:
        [(_, wide)] = groups
        norms = torch.stack(torch._foreach_norm(list(tensors), 2,
                                                dtype=None if wide else torch.float32))
        return norms.square().to(torch.float32)
    home = tensors[0].device
    out = torch.empty(len(tensors), device=home, dtype=torch.float32)
    for (_, wide), positions in groups.items():
        parts = torch._foreach_norm([tensors[i] for i in positions], 2,
                                    dtype=None if wide else torch.float32)
        index = torch.tensor(positions, device=home)
        out.index_copy_(0, index, torch.stack(parts).square().to(home, torch.float32,
                                                                 non_blocking=True))
    return out


def add_squared_sum(cell: torch.Tensor, tensors: Sequence[torch.Tensor], first: bool,
                    shards: bool = False, cpu_float32: bool = False, float64: bool = False,
                    one_device: bool = False) -> None:
    """Add the sum of the squared norms of ``tensors`` (options: ``squared_norms``') into
    the 0-dim ``cell``; ``first``: the cell holds 0. On one device, not float64: one fused
    norm, a stack and ONE dot into the cell, for every tensor together."""
    if one_device and not (cpu_float32 or float64 or shards):
        norms = _fused_norms(tensors)
        if first and norms.device == cell.device:
            torch.dot(norms, norms, out=cell)
        else:
            cell.add_(norms.dot(norms).to(cell.device))
        return
    squares = squared_norms(tensors, shards, cpu_float32, float64, one_device)
    if first and squares.device == cell.device:
        torch.sum(squares, dim=0, out=cell)  # ONE op: the sum written in place
    else:
        cell.add_(squares.sum().to(cell.device))


def _fused_norms(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The float32 L2 norms of tensors on one device, as one 1-D tensor (one fused op)."""
    return torch.stack(torch._foreach_norm(list(tensors), 2, dtype=torch.float32))


def sparse_values(tensor: torch.Tensor) -> torch.Tensor:
    """The values of a sparse tensor, coalesced (repeated indices summed): they hold all
    its non-zero entries, so their norm and non-finite counts are the tensor's."""
    return tensor.coalesce().values()


def all_finite(squared_norms: torch.Tensor) -> bool:
    """True when these squared norms show their tensors free of NaN/Inf (a finite sum of
    squares has only finite terms). Only ever True on a CPU, where reading them is free: an
    accelerator is never asked (a sync), its tensors are always counted."""
    return squared_norms.device.type == "cpu" and bool(np.isfinite(squared_norms.numpy()).all())


@torch.no_grad()
def nonfinite_counts(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """[N, 3] float32 counts of NaN, +Inf and -Inf in each tensor."""
    tensors = [local_shard(t.detach()) for t in tensors]
    if not tensors:
        return torch.zeros(0, 3)
    home = tensors[0].device
    small, large = [], []
    for i, t in enumerate(tensors):
        (small if t.numel() <= SMALL_NUMEL and t.device == home else large).append(i)
    out = torch.empty(len(tensors), 3, device=home, dtype=torch.float32)
    if small:
        sizes = [tensors[i].numel() for i in small]
        flat = torch.cat([tensors[i].reshape(-1) for i in small])
        # output_size given: otherwise repeat_interleave reads the total back (a host sync)
        segment = torch.repeat_interleave(torch.arange(len(small), device=home),
                                          torch.tensor(sizes, device=home),
                                          output_size=sum(sizes))
        nonfinite, signed_inf = _nonfinite_flags(flat)
        flags = torch.stack([nonfinite, signed_inf, signed_inf.square()], dim=1)
        per_tensor = flags.new_zeros(len(small), 3).index_add_(0, segment, flags)
        out[torch.tensor(small, device=home)] = torch.stack(
            _kinds(*per_tensor.unbind(1)), 1).to(out.dtype)
    if large:
        rows = [torch.stack(_nonfinite(tensors[i])).to(home) for i in large]
        out[torch.tensor(large, device=home)] = torch.stack(rows)
    return out


def _nonfinite(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(NaN, +Inf, -Inf) counts of ``t`` as float32 scalars."""
    f32 = torch.float32
    if t.numel() <= SMALL_NUMEL:  # few elements: the fewest ops win
        return (torch.isnan(t).sum(dtype=f32), torch.isposinf(t).sum(dtype=f32),
                torch.isneginf(t).sum(dtype=f32))
    nonfinite, signed_inf = _nonfinite_flags(t.reshape(-1))
    counts = _kinds(nonfinite.sum(), signed_inf.sum(), signed_inf.dot(signed_inf))
    return tuple(c.to(f32) for c in counts)


def _nonfinite_flags(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flags of ``t``, of its shape: 1 where non-finite, else 0; and +1 at +Inf, -1 at
    -Inf, else 0.

    Float arithmetic only: on a CPU, isnan/isposinf/isneginf and the sums of their bool
    masks cost several times a vectorised float op per element. ``x * 0`` is NaN exactly
    for the non-finite x. Half-precision values are flagged in float32, so that the sums
    of the flags stay exact (below 2**24 non-finite values).
    """
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    nonfinite = (t * 0).nan_to_num_(nan=1.0)
    signed_inf = t.nan_to_num(nan=0.0, posinf=1.0, neginf=-1.0).mul_(nonfinite)
    return nonfinite, signed_inf


def _kinds(nonfinite: torch.Tensor, inf_difference: torch.Tensor, infinite: torch.Tensor):
    """(NaN, +Inf, -Inf) counts from the counts of the non-finite values, of +Inf minus
    -Inf, and of the infinite values."""
    return (nonfinite - infinite, (infinite + inf_difference) / 2,
            (infinite - inf_difference) / 2)


def per_layer_sum(values: torch.Tensor, pair_param: torch.Tensor, pair_layer: torch.Tensor,
                  n_layers: int) -> torch.Tensor:
    """Per-layer sum of per-parameter rows (any trailing shape)."""
    total = torch.zeros((n_layers, *values.shape[1:]), dtype=values.dtype, device=values.device)
    return total.index_add(0, pair_layer, values[pair_param])
