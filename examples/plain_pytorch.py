"""gradwatch in a plain PyTorch training loop (no Lightning; runs on the base install).

    python examples/plain_pytorch.py --steps 200 --port 9400 --log-dir runs/plain

serves /metrics on 127.0.0.1:9400 while it trains and writes TensorBoard scalars.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from gradwatch.monitor import Monitor, PrometheusSink, TensorBoardSink


def main(steps: int = 200, port: int | None = None, log_dir: str = "runs/plain") -> Monitor:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.Tanh(),
                          nn.Linear(64, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sinks = [TensorBoardSink(log_dir=log_dir)]
    if port is not None:
        prometheus = PrometheusSink("plain-example")
        print(f"/metrics on http://127.0.0.1:{prometheus.serve(port)}/metrics")
        sinks.append(prometheus)
    monitor = Monitor(model, run_name="plain-example", optimizers=[optimizer], sinks=sinks,
                      every_n_steps=10)
    for step in range(steps):
        x = torch.randn(64, 16)
        y = x[:, :1].sin()
        with monitor.step(step):
            loss = nn.functional.mse_loss(model(x), y)
            monitor.observe_loss(loss)
            loss.backward()
            monitor.observe_gradients()  # before clipping
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
    monitor.close()
    return monitor


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--log-dir", default="runs/plain")
    options = parser.parse_args()
    main(options.steps, options.port, options.log_dir)
