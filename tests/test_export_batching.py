"""Per-step work crosses threads in batches: the export queue and the CPU Pulse batches."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from gradwatch.monitor import Monitor, Thresholds
from gradwatch.monitor.sinks.export_thread import ExportWorker
from gradwatch.monitor.capture.ring import MAX_RING_ROWS, PULSE_BATCH

pytestmark = pytest.mark.unit


class BlockingSink:
    """Holds the export thread on its first item until released; records every item."""

    def __init__(self) -> None:
        self.items: list[object] = []
        self.entered, self.release = threading.Event(), threading.Event()

    def on_pulse(self, item) -> None:
        self.entered.set()
        self.release.wait(10)
        self.items.append(item)


def test_a_full_queue_drops_the_oldest_batch_and_counts_its_items():
    sink = BlockingSink()
    worker = ExportWorker([sink], max_queue=2)
    worker.submit("on_pulse", "held")
    assert sink.entered.wait(10)  # the export thread is busy with "held"
    worker.submit_each("on_pulse", ["a1", "a2", "a3"])
    worker.submit_each("on_pulse", ["b1", "b2"])
    worker.submit_each("on_pulse", ["c1"])  # full: the oldest batch (3 items) goes
    assert worker.dropped == 3
    sink.release.set()
    worker.close()
    assert sink.items == ["held", "b1", "b2", "c1"]


class StepsSeen:
    """An observer noting which steps' Pulses it was given, and when."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.snapshots: list[int] = []

    def on_pulse(self, pulse, monitor) -> None:
        self.steps.append(pulse.step)

    def on_snapshot(self, snapshot, monitor) -> None:
        self.snapshots.append(snapshot.step)


def test_quiet_pulses_are_judged_in_batches_and_alarming_ones_at_once():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    seen = StepsSeen()
    monitor = Monitor(model, optimizers=[optimizer], observers=[seen], every_n_steps=1000,
                      thresholds=Thresholds(explosion_norm=1e3))
    x = torch.randn(16, 4)
    seen_after: dict[int, list[int]] = {}
    loss_scale = {20: 1e6, 25: float("nan")}  # a norm above explosion_norm, then a NaN loss
    for step in range(30):
        with monitor.step(step):
            loss = model(x).square().mean() * loss_scale.get(step, 1.0)
            monitor.observe_loss(loss)
            loss.backward()
            monitor.observe_gradients()
            optimizer.zero_grad()  # no update: the NaN step leaves the weights finite
        seen_after[step] = list(seen.steps)
    monitor.close()

    assert seen_after[0] == [0]  # a sampled step is read with its Snapshot
    assert seen_after[PULSE_BATCH - 1] == [0]  # quiet steps wait for their batch ...
    assert seen_after[PULSE_BATCH] == list(range(PULSE_BATCH + 1))  # ... of PULSE_BATCH
    assert seen_after[20] == list(range(21))  # above explosion_norm: at once
    assert seen_after[24] == list(range(21))
    assert seen_after[25] == list(range(26))  # a NaN loss: at once
    assert seen.steps == list(range(30))  # every step once, in order, by the close


def test_a_rare_sampling_window_keeps_the_ring_small_and_every_pulse():
    """every_n_steps=10**6 (per-layer figures rarely): the ring is sized by what is used, not
    by the window (a row of views per step of the window cost ~18 s at the first step)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    seen = StepsSeen()
    monitor = Monitor(model, optimizers=[optimizer], observers=[seen], every_n_steps=10**6)
    x = torch.randn(16, 4)
    for step in range(2 * MAX_RING_ROWS + 3):
        with monitor.step(step):
            loss = model(x).square().mean()
            monitor.observe_loss(loss)
            loss.backward()
            monitor.observe_gradients()
            optimizer.step()
            optimizer.zero_grad()
    waiting = [p.step for p in monitor._ring.pulses]  # for the next Snapshot
    monitor.close()
    assert monitor._ring.tensor.shape[0] == MAX_RING_ROWS
    assert seen.steps == list(range(2 * MAX_RING_ROWS + 3))  # every step's Pulse, in order
    assert seen.snapshots == [0]  # the window: step 0 sampled, none other
    # the next Snapshot would carry the latest steps, not every step of the window
    # (read in batches of PULSE_BATCH: up to that many steps ago)
    last = waiting[-1]
    assert 2 * MAX_RING_ROWS + 2 - PULSE_BATCH <= last <= 2 * MAX_RING_ROWS + 2
    assert waiting == list(range(last + 1 - MAX_RING_ROWS, last + 1))
