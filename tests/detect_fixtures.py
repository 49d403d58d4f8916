"""Shared helpers of the detection tests: small models, a plain Monitor training loop,
synthetic Pulses/Snapshots, and a real Alertmanager plus a webhook receiver."""

from __future__ import annotations

import http.server
import json
import math
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gradwatch.monitor.records.findings import Alert
from gradwatch.monitor.judging.engine import AlertEngine
from gradwatch.monitor.capture.monitor import Monitor
from gradwatch.monitor.records.snapshot import NONFINITE_KINDS, NONFINITE_SOURCES, Pulse, Snapshot


# ------------------------------------------------------------------ synthetic records

def pulse(step: int, loss: float = 1.0, norm: float = 1.0, **fields) -> Pulse:
    return Pulse(step=step, time=1000.0 + step, loss=loss, global_grad_norm=norm, **fields)


def snapshot(step: int, layers=("l0", "l1", "l2", "l3"), *, grad_norm=None, update_ratio=None,
             saturation=None, dead=None, variance=None, output_max_abs=None,
             activation_mean=None, nonfinite=None, origin: str = "",
             pulses=None) -> Snapshot:
    """A Snapshot with healthy defaults; every per-layer array can be overridden."""
    n = len(layers)

    def arr(values, default):
        return np.asarray(values if values is not None else [default] * n, dtype=np.float64)

    return Snapshot(
        run="test", rank=0, step=step, time=1000.0 + step, layers=tuple(layers),
        grad_norm=arr(grad_norm, 1.0), weight_norm=arr(None, 10.0),
        update_ratio=arr(update_ratio, 1e-3), activation_mean=arr(activation_mean, 0.0),
        activation_variance=arr(variance, 1.0),
        activation_saturation_ratio=arr(saturation, math.nan),
        activation_dead_ratio=arr(dead, 0.0), activation_max_abs=arr(None, 3.0),
        layer_output_max_abs=arr(output_max_abs, 3.0),
        nonfinite=(np.asarray(nonfinite, dtype=np.int64) if nonfinite is not None
                   else np.zeros((len(NONFINITE_SOURCES), n, len(NONFINITE_KINDS)), np.int64)),
        nonfinite_origin=origin,
        pulses=tuple(pulses) if pulses is not None else (pulse(step),),
        overhead_seconds=0.0)


class FakeMonitor:
    """The Monitor surface an AlertEngine uses, recording escalations and publications."""

    def __init__(self, thresholds=None) -> None:
        self.run_name, self.rank, self.thresholds = "test", 0, thresholds
        self.escalations: list[int] = []
        self.published: list[tuple[str, object]] = []

    def escalate(self, steps: int, trace_all_modules: bool = True) -> None:
        self.escalations.append(steps)

    def publish(self, method: str, item: object) -> None:
        self.published.append((method, item))


# ------------------------------------------------------------------ real training

def mlp(widths: list[int], activation: Callable[[], nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class Recorder:
    """An observer that keeps every Pulse and Snapshot, to check alerts against."""

    def __init__(self) -> None:
        self.pulses: list[Pulse] = []
        self.snapshots: list[Snapshot] = []

    def on_pulse(self, pulse: Pulse, monitor) -> None:
        self.pulses.append(pulse)

    def on_snapshot(self, snapshot: Snapshot, monitor) -> None:
        self.snapshots.append(snapshot)


@dataclass
class Run:
    engine: AlertEngine
    recorder: Recorder
    #: first step whose loss or any gradient held a NaN/Inf, checked with torch in the loop
    first_nonfinite: int | None
    losses: list[float]

    def fired(self, name: str) -> list[Alert]:
        return [a for a in self.engine.history if a.name == name and a.status == "firing"]


def train(model: nn.Module, batches: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
          steps: int, *, lr: float = 0.01, optimizer: str = "sgd", every_n_steps: int = 10,
          loss_fn: Callable = nn.functional.mse_loss, engine: AlertEngine | None = None,
          sinks=()) -> Run:
    """Train with the plain Monitor loop (init audit first), stopping 3 steps after the
    first non-finite step."""
    engine = engine or AlertEngine()
    recorder = Recorder()
    make = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[optimizer]
    opt = make(model.parameters(), lr=lr)
    monitor = Monitor(model, optimizers=[opt], every_n_steps=every_n_steps,
                      observers=[engine, recorder], sinks=list(sinks), run_name="train")
    engine.audit(model, monitor)
    first_nonfinite, losses = None, []
    try:
        for step in range(steps):
            x, y = batches(step)
            with monitor.step(step):
                loss = loss_fn(model(x), y)
                monitor.observe_loss(loss)
                loss.backward()
                monitor.observe_gradients()
                finite = bool(torch.isfinite(loss)) and all(
                    bool(torch.isfinite(p.grad).all()) for p in model.parameters()
                    if p.grad is not None)
                opt.step()
                opt.zero_grad()
            losses.append(loss.item())
            if first_nonfinite is None and not finite:
                first_nonfinite = step
            if first_nonfinite is not None and step >= first_nonfinite + 3:
                break
        engine.flush(monitor)
    finally:
        monitor.close()
    return Run(engine, recorder, first_nonfinite, losses)


# ------------------------------------------------------------------ receivers

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], object], timeout: float = 15.0, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class WebhookReceiver:
    """A tiny HTTP server in a thread that records every POST (path, headers, JSON body)."""

    def __init__(self, port: int = 0) -> None:
        self.requests: list[tuple[str, dict[str, str], object]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._lock:
                    receiver.requests.append((self.path, dict(self.headers), json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def bodies(self, path: str | None = None) -> list[object]:
        with self._lock:
            return [body for p, _, body in self.requests if path is None or p == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


ALERTMANAGER = "/usr/bin/prometheus-alertmanager"


class Alertmanager:
    """A real Alertmanager on 127.0.0.1:port, notifying ``webhook_url`` (send_resolved)."""

    def __init__(self, directory: Path, port: int, webhook_url: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        config = directory / "alertmanager.yml"
        config.write_text(
            "route:\n"
            "  receiver: hook\n"
            "  group_by: [alertname, run, layer]\n"
            "  group_wait: 0s\n"
            "  group_interval: 1s\n"
            "  repeat_interval: 1h\n"
            "receivers:\n"
            "  - name: hook\n"
            "    webhook_configs:\n"
            f"      - url: {webhook_url}/am\n"
            "        send_resolved: true\n")
        self.url = f"http://127.0.0.1:{port}"
        self._log = open(directory / "alertmanager.log", "wb")
        self.process = subprocess.Popen(
            [ALERTMANAGER, f"--config.file={config}", f"--storage.path={directory / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
            stdout=subprocess.DEVNULL, stderr=self._log)
        try:
            wait_for(self._ready, 20.0, "Alertmanager /-/ready")
        except AssertionError:
            self.close()
            raise

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"Alertmanager exited with {self.process.returncode}")
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def alerts(self) -> list[dict]:
        with urllib.request.urlopen(self.url + "/api/v2/alerts", timeout=5) as response:
            return json.loads(response.read())

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()
