"""2-process FSDP2 (``fully_shard``, DTensor shards) training on CPU with the plain Monitor.

Run by test_distributed.py: each rank writes ``rank<r>.json`` with its Snapshots' per-layer
gradient and weight norms and update ratios, which must equal the unsharded model's, and
what its PrometheusSink exports (the sharded figures once, from rank 0).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prometheus_client import generate_latest  # noqa: E402

from gradwatch.monitor import Monitor, PrometheusSink  # noqa: E402
from tests.helpers import regression_data, tanh_mlp  # noqa: E402

STEPS = 3


class Keep:
    def __init__(self):
        self.snapshots, self.pulses = [], []

    def on_snapshot(self, snapshot):
        self.snapshots.append(snapshot)

    def on_pulse(self, pulse):
        self.pulses.append(pulse)


def work(rank: int, out: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    net = tanh_mlp()
    for layer in net:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    fully_shard(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    keep = Keep()
    exporter = PrometheusSink("fsdp", rank=rank)
    monitor = Monitor(net, sinks=[keep, exporter], optimizers=[optimizer], every_n_steps=2, rank=rank,
                      world_size=2)
    x_all, y_all = regression_data().tensors
    for step in range(STEPS):
        # each rank takes half of the same 64 samples: the mean of the two halves' gradients
        # is the gradient of the whole batch
        x = x_all[64 * step + 32 * rank: 64 * step + 32 * (rank + 1)]
        y = y_all[64 * step + 32 * rank: 64 * step + 32 * (rank + 1)]
        with monitor.step(step):
            loss = ((net(x) - y) ** 2).mean()
            monitor.observe_loss(loss)
            loss.backward()
            monitor.observe_gradients()
            optimizer.step()
            optimizer.zero_grad()
    monitor.close()
    result = {
        "snapshots": {s.step: {"layers": list(s.layers), "grad": s.grad_norm.tolist(),
                               "weight": s.weight_norm.tolist(),
                               "update": s.update_ratio.tolist()} for s in keep.snapshots},
        "global": {p.step: p.global_grad_norm for p in keep.pulses},
        "metrics": generate_latest(exporter.registry).decode(),
    }
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(work, args=(sys.argv[1], int(sys.argv[2])), nprocs=2)
