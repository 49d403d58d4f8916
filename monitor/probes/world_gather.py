"""The ONE collective of a regular sampled step with several ranks.

Sharded (FSDP2) parameters have per-rank partial squared norms, and activations are
per-rank: a single all-gather carries the ring rows, the per-parameter table and the
per-layer activation records of every rank, which completes the sharded sums and combines
the activation records into the world's view.
"""

from __future__ import annotations

import torch

from ..records.columns import RingColumn
from . import collectives, tensor_stats


def gather_world(rows: torch.Tensor, table: torch.Tensor, own: torch.Tensor, act: torch.Tensor,
                 sharded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                 torch.Tensor, torch.Tensor]:
    """ONE all-gather: whole sharded norms and the activations of every rank.

    Args:
        rows: the ring rows not read yet [rows, RingColumn].
        table: the per-parameter table [ParamRow, n_params].
        own, act: per-layer records [n_layers, ActivationField] of the layers' own outputs
            and of their activations.
        sharded: per parameter, whether it is a shard.

    Returns:
        The rows and table with shard sums completed, and the world's combined own and
        activation records.
    """
    payload = torch.cat([rows.reshape(-1), table.reshape(-1), own.reshape(-1), act.reshape(-1)])
    gathered = collectives.all_gather(payload)
    sizes = [rows.numel(), table.numel(), own.numel(), act.numel()]
    g_rows, g_table, g_own, g_act = torch.split(gathered, sizes, dim=1)
    world_size, n_layers = gathered.shape[0], own.shape[0]
    rows = rows.clone()
    column = RingColumn.SHARDED_SQ
    rows[:, column] = g_rows.reshape(world_size, *rows.shape)[:, :, column].sum(0)
    table = torch.where(sharded.to(table.device),
                        g_table.reshape(world_size, *table.shape).sum(0), table)
    groups = torch.arange(n_layers, device=own.device).repeat(world_size)
    world_own, world_act = (tensor_stats.combine_records(g.reshape(world_size * n_layers, -1), groups,
                                                   n_layers) for g in (g_own, g_act))
    return rows, table, world_own, world_act
