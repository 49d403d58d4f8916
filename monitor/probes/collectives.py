"""Data-parallel and sharded training: the collectives and hooks the Monitor needs.

- DDP: gradients are all-reduced before gradwatch reads them, so their statistics are the
  same on every rank. Activations are local: their records are all-gathered, once per
  regular sampled step (ONE collective), and combined into a global view.
- A NaN from one rank is everywhere after the all-reduce; ``nonfinite_check_hook`` looks at
  each rank's LOCAL gradient buckets just before the all-reduce (a DDP communication hook), so
  the rank where it came from can say so.
- FSDP2 / DTensor: parameters and gradients are shards; per-layer squared sums of the local
  shards ride on the same single collective and are summed across ranks, which gives exactly
  the norms of the unsharded model.
"""

# Annotations are evaluated here (no `from __future__ import annotations`): DDP compares a
# communication hook's annotations with the real dist.GradBucket and Future classes.
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    #: A DDP communication hook: (state, bucket) -> the future of the reduced bucket
    CommHook = Callable[[Any, dist.GradBucket], torch.futures.Future[torch.Tensor]]


def active_world(world_size: int) -> bool:
    """Whether collectives can and should run (an initialised process group of > 1)."""
    return (world_size > 1 and dist.is_available() and dist.is_initialized()
            and dist.get_world_size() > 1)


def all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """[world, *tensor.shape]: every rank's ``tensor`` (one collective)."""
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.stack(parts)


def local_shard(tensor: torch.Tensor) -> torch.Tensor:
    """The local part of a DTensor (FSDP2 shards), or the tensor itself."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if to_local is not None else tensor


def is_sharded(tensor: torch.Tensor) -> bool:
    """A DTensor with a Shard placement: its local values are a part of the whole."""
    placements = getattr(tensor, "placements", ())
    return any(type(p).__name__ == "Shard" for p in placements)


def nonfinite_check_hook(flag: Callable[[], torch.Tensor | None]) -> "CommHook":
    """A DDP communication hook that flags non-finite LOCAL gradients, then all-reduces.

    ``flag()`` returns the 0-d device tensor of the step in progress (or None); the check
    is a device op (no sync): one ``aminmax`` over the bucket, whose min/max are NaN or
    infinite exactly when the bucket holds a NaN or an infinity.
    """
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    def hook(state: Any, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        target = flag()
        if target is not None:
            low, high = torch.aminmax(bucket.buffer())
            target.add_((~(torch.isfinite(low) & torch.isfinite(high))).to(target.dtype))
        return allreduce_hook(state, bucket)

    return hook
