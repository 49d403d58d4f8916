"""What gradwatch adds to an unsampled step that clips by norm (issue 18, item 2).

The same 16 x Linear(256) network (batch 8, SGD) clips its gradients by norm every step:

- **bare**: ``torch.nn.utils.clip_grad_norm_`` and the optimizer step;
- **separate read**: gradwatch reads the gradients itself (``observe_gradients``), then
  torch clips: the path of a LightningModule with its own ``configure_gradient_clipping``;
- **clip is the read**: ``Monitor.clip_grad_norm_``, the path Lightning's own clipping takes
  (the clip's total norm is the step's global norm; the post-clip norm follows from it).

Per step, from the clip to the step's end: aten ops (a ``TorchDispatchMode``) and time (the
median step of the quietest of a few interleaved runs). ``track_clipping`` on, as the
callback sets it with ``gradient_clip_val``.

    python -m benchmarks.clip_cost [--output docs/benchmarks.md]
"""

from __future__ import annotations

import contextlib
import statistics
import time

import torch
from torch import nn

from gradwatch.monitor import Monitor

from . import instability
from .cardinality import section_main
from .step_cost import CountOps

SECTION = "## Clipping by norm: the clip's pass is the read"
PATHS = ("bare", "separate read", "clip is the read")
WIDTH, DEPTH, BATCH, MAX_NORM = 256, 16, 8, 0.01
STEPS, SMOKE_STEPS, ROUNDS = 300, 5, 3


def run(path: str, steps: int) -> tuple[float, float]:
    """(aten ops, seconds) per unsampled step from the clip to the step's end."""
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(WIDTH, WIDTH) for _ in range(DEPTH)])
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    monitor = None if path == "bare" else Monitor(
        model, every_n_steps=2 * steps + 2, optimizers=[optimizer], track_clipping=True)
    x = torch.randn(BATCH, WIDTH)
    counter, seconds = CountOps(), []
    for step in range(steps + 2):  # step 0 (sampled) warms up; the last one is counted
        if monitor is not None:
            monitor.begin_step(step)
        loss = model(x).square().mean()
        if monitor is not None:
            monitor.observe_loss(loss)
        loss.backward()
        start = time.perf_counter()
        with counter if step == steps + 1 else contextlib.nullcontext():
            clip_and_step(path, model, optimizer, monitor)
        if 0 < step <= steps:
            seconds.append(time.perf_counter() - start)
        optimizer.zero_grad()
    if monitor is not None:
        monitor.close()
    return float(sum(counter.ops.values())), statistics.median(seconds)


def clip_and_step(path: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                  monitor: Monitor | None) -> None:
    if monitor is None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)
    elif path == "separate read":
        monitor.observe_gradients(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)
    else:
        monitor.clip_grad_norm_(model.parameters(), MAX_NORM, optimizer)
    optimizer.step()
    if monitor is not None:
        monitor.end_step()


def measured_section(smoke: bool = False) -> str:
    steps = SMOKE_STEPS if smoke else STEPS
    best: dict[str, tuple[float, float]] = {}
    for _ in range(1 if smoke else ROUNDS):  # interleaved; the quietest run of each
        for path in PATHS:
            ops, seconds = run(path, steps)
            best[path] = (ops, min(seconds, best.get(path, (ops, seconds))[1]))
    bare_ops, bare_seconds = best["bare"]
    lines = [
        SECTION, "",
        f"`python -m benchmarks.clip_cost`: {DEPTH} x Linear({WIDTH}), batch {BATCH}, SGD, "
        f"clipped by norm every step; per unsampled step, from the clip to the step's end "
        f"(median of {steps} steps, the quietest of {1 if smoke else ROUNDS} interleaved runs; "
        "one thread). \"separate read\": gradwatch reads the gradients itself, then torch "
        "clips (a LightningModule with its own `configure_gradient_clipping`); \"clip is the "
        "read\": `Monitor.clip_grad_norm_`, the path of `Trainer(gradient_clip_val=...)`.", "",
        "| path | aten ops | added to bare | us | added to bare |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for path, (ops, seconds) in best.items():
        lines.append(f"| {path} | {ops:g} | {ops - bare_ops:+g} | {seconds * 1e6:.0f} | "
                     f"{(seconds - bare_seconds) * 1e6:+.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    return section_main(argv, __doc__, measured_section, f"{SMOKE_STEPS} steps, for CI", instability.SECTION)


if __name__ == "__main__":
    main()
