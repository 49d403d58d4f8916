"""A 2-process DDP training on CPU (gloo) with TrainingDiagnostics, run by test_distributed.py.

Each rank writes ``rank<r>.json`` into --out: what its own /metrics served, its last
Snapshot (and the world view), and every Pulse it saw. With --hold, each rank also writes its
/metrics port to ``port<r>`` at the start and keeps serving after the last step until the
file ``release`` appears in --out (for a Prometheus to scrape both ranks).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from gradwatch.callbacks import TrainingDiagnostics  # noqa: E402
from torch.utils.data.distributed import DistributedSampler  # noqa: E402

from tests.helpers import regression_data, scrape  # noqa: E402
from tests.lightning_models import lightning, regression_module  # noqa: E402


def jsonable(values):
    return [None if not math.isfinite(v) else float(v) for v in values]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--poison-rank", type=int, default=-1)
    parser.add_argument("--poison-step", type=int, default=-1)
    parser.add_argument("--hold", action="store_true")
    options = parser.parse_args()
    pl = lightning()
    torch.manual_seed(0)
    alerts = []
    diagnostics = TrainingDiagnostics(every_n_steps=2, prometheus_port=0, tensorboard=False,
                                      run_name="ddp", on_alert=alerts.append)
    pulses = []

    class KeepPulses:
        def on_pulse(self, pulse, monitor):
            pulses.append(pulse)

        def on_snapshot(self, snapshot, monitor):
            pass

    class Record(pl.Callback):
        def on_train_start(self, trainer, module):
            diagnostics.monitor.observers.append(KeepPulses())
            if options.hold:
                port = Path(options.out) / f"port{trainer.global_rank}"
                port.write_text(str(diagnostics.bound_port))

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.global_rank == options.poison_rank and \
                    trainer.global_step == options.poison_step:
                batch[0][0, 0] = float("nan")  # a bad sample on one rank only

        def on_train_end(self, trainer, module):
            snapshot = diagnostics.last_snapshot
            world = snapshot.world
            result = {
                "rank": trainer.global_rank,
                "metrics": scrape(diagnostics.prometheus_url),
                "step": snapshot.step,
                "layers": list(snapshot.layers),
                "grad_norm": jsonable(snapshot.grad_norm),
                "activation_variance": jsonable(snapshot.activation_variance),
                "world_activation_variance": jsonable(world.activation_variance) if world else None,
                "pulses": [{"step": p.step, "loss": p.loss, "grad": p.global_grad_norm,
                            "local_finite": p.local_gradients_finite} for p in pulses],
                "alerts": [a.to_dict() for a in alerts],
            }
            out = Path(options.out) / f"rank{trainer.global_rank}.json"
            out.write_text(json.dumps(result, default=str))
            deadline = time.monotonic() + 120
            while options.hold and not (Path(options.out) / "release").exists() \
                    and time.monotonic() < deadline:
                time.sleep(0.2)

    trainer = pl.Trainer(max_steps=options.steps, accelerator="cpu", devices=2, strategy="ddp",
                         callbacks=[diagnostics, Record()], logger=False,
                         enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False, use_distributed_sampler=False)
    module = regression_module()
    # rank r takes samples r, r+2, ...: each step's two batches are one contiguous batch of 64
    data = regression_data()
    module.train_dataloader = lambda: torch.utils.data.DataLoader(
        data, batch_size=32, sampler=DistributedSampler(data, shuffle=False))
    trainer.fit(module)


if __name__ == "__main__":
    main()
