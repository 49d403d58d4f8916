"""Real Prometheus / Alertmanager / Pushgateway processes and a webhook receiver for tests.

Everything listens on 127.0.0.1 free ports and keeps its data in a temporary folder. The
fixtures in conftest.py build on these classes; tests use the fixtures.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import yaml

#: Test configs scrape and evaluate every second, so alerts fire within seconds.
TEST_INTERVAL = "1s"
STARTUP_TIMEOUT = 30.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str, params: Mapping[str, str] | None = None, timeout: float = 5.0) -> Any:
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.load(response)


def post_json(url: str, payload: Any, timeout: float = 5.0) -> int:
    """POST ``payload`` as JSON; the HTTP status."""
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status


def wait_until(condition: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.25) -> Any:
    """Poll ``condition`` until it returns something truthy; its value, or AssertionError."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
        except (OSError, ValueError, KeyError) as exc:  # not up yet, or a half-written answer
            last_error = exc
        else:
            if value:
                return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                         + (f" (last error: {last_error!r})" if last_error else ""))


class ServerProcess:
    """One server binary running in the background, its output in a log file."""

    def __init__(self, name: str, command: Sequence[str], workdir: Path, port: int) -> None:
        self.name = name
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = workdir / f"{name}.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT,
                                            cwd=workdir)

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited:\n{self.log_tail()}")
            with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as response:
                return response.status == 200

        try:
            wait_until(ready, timeout, f"{self.name} /-/ready")
        except AssertionError:
            self.stop()
            raise AssertionError(f"{self.name} not ready:\n{self.log_tail()}") from None

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class PrometheusServer(ServerProcess):
    """Prometheus with a config generated for the test; queries through the HTTP API."""

    def query(self, expr: str) -> list[dict]:
        """Instant query; the result vector (raises on a PromQL error)."""
        answer = get_json(self.url + "/api/v1/query", {"query": expr})
        if answer["status"] != "success":
            raise AssertionError(f"query failed: {expr}: {answer}")
        return answer["data"]["result"]

    def query_range(self, expr: str, seconds: float, step: str = "1") -> list[dict]:
        """Range query over the last ``seconds`` (as a graph panel asks); the matrix."""
        now = time.time()
        answer = get_json(self.url + "/api/v1/query_range", {
            "query": expr, "start": str(now - seconds), "end": str(now), "step": step})
        if answer["status"] != "success":
            raise AssertionError(f"query failed: {expr}: {answer}")
        return answer["data"]["result"]

    def wait_for(self, expr: str, timeout: float = 30.0) -> list[dict]:
        """Wait until ``expr`` returns a non-empty result; that result."""
        return wait_until(lambda: self.query(expr), timeout, f"PromQL {expr!r} to return data")

    def wait_targets_up(self, timeout: float = 30.0) -> None:
        def all_up() -> bool:
            targets = get_json(self.url + "/api/v1/targets")["data"]["activeTargets"]
            return bool(targets) and all(t["health"] == "up" for t in targets)

        wait_until(all_up, timeout, "every scrape target up")

    def wait_evaluations(self, count: int = 1, timeout: float = 30.0) -> None:
        """Wait until every rule group has been evaluated ``count`` more times from now (an
        evaluation missed between two polls is not counted: the wait only gets longer)."""
        def evaluations() -> dict[str, str]:
            groups = get_json(self.url + "/api/v1/rules")["data"]["groups"]
            return {f'{g["file"]}:{g["name"]}': g["lastEvaluation"] for g in groups}

        seen = {group: {last} for group, last in wait_until(
            evaluations, timeout, "the rule groups loaded").items()}

        def counted() -> bool:
            for group, last in evaluations().items():
                seen[group].add(last)
            return all(len(times) > count for times in seen.values())

        wait_until(counted, timeout, f"{count} more rule evaluation(s)")


class AlertmanagerServer(ServerProcess):
    def alerts(self) -> list[dict]:
        """Every alert Alertmanager holds, with its status (active/suppressed)."""
        return get_json(self.url + "/api/v2/alerts")


def prometheus_config(scrape_targets: Mapping[str, Sequence[str]], rule_files: Sequence[Path],
                      alertmanager_url: str | None, honor_labels: bool) -> dict:
    """A Prometheus config for tests: 1s scrapes and evaluations, the given jobs and rules."""
    config: dict = {
        "global": {"scrape_interval": TEST_INTERVAL, "evaluation_interval": TEST_INTERVAL},
        "rule_files": [str(Path(f).resolve()) for f in rule_files],
        "scrape_configs": [
            {"job_name": job, "honor_labels": honor_labels,
             "static_configs": [{"targets": list(targets)}]}
            for job, targets in scrape_targets.items()
        ],
    }
    if alertmanager_url:
        config["alerting"] = {"alertmanagers": [{"static_configs": [
            {"targets": [urllib.parse.urlsplit(alertmanager_url).netloc]}]}]}
    return config


Server = TypeVar("Server", bound="ServerProcess")


def start_server(kind: type[Server], name: str, binary: str, workdir: Path,
                 flags: Sequence[str], config: dict | None = None) -> Server:
    """Start ``binary`` on a free 127.0.0.1 port with ``flags`` (its config written to
    workdir/<name>.yml and passed as --config.file) and wait until it is ready."""
    port = free_port()
    command = [binary, f"--web.listen-address=127.0.0.1:{port}", *flags]
    if config is not None:
        config_path = workdir / f"{name}.yml"
        config_path.write_text(yaml.safe_dump(config))
        command.append(f"--config.file={config_path}")
    server = kind(name, command, workdir, port)
    server.wait_ready()
    return server


def start_prometheus(binary: str, workdir: Path, config: dict) -> PrometheusServer:
    return start_server(PrometheusServer, "prometheus", binary, workdir,
                        [f"--storage.tsdb.path={workdir / 'data'}"], config)


def start_alertmanager(binary: str, workdir: Path, config: dict) -> AlertmanagerServer:
    return start_server(AlertmanagerServer, "alertmanager", binary, workdir, [
        f"--storage.path={workdir / 'data'}",
        "--cluster.listen-address=",  # no gossip port: a single test instance
    ], config)


def start_pushgateway(binary: str, workdir: Path) -> ServerProcess:
    return start_server(ServerProcess, "pushgateway", binary, workdir, [])


class WebhookReceiver:
    """A tiny HTTP server that records the JSON bodies POSTed to it (Alertmanager webhooks)."""

    def __init__(self) -> None:
        self.payloads: list[dict] = []
        received = self.payloads

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/alerts"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def alerts(self) -> list[dict]:
        """Every alert of every notification received so far."""
        return [alert for payload in list(self.payloads) for alert in payload["alerts"]]

    def wait_for_alert(self, timeout: float = 60.0, **labels: str) -> dict:
        """The first received alert whose labels include ``labels``."""
        def match() -> dict | None:
            return next((a for a in self.alerts()
                         if labels.items() <= a["labels"].items()), None)

        return wait_until(match, timeout, f"a webhook alert with labels {labels}")

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
