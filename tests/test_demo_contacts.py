"""`gradwatch demo` leaves the user's own stack alone (issue 28, item 3): an Alertmanager or
Pushgateway listening on its usual port (the README's compose stack, somebody's on-call) is
never contacted unless named, and is when named."""

from __future__ import annotations

import errno
import http.server
import json
import logging
import socket
import threading

import pytest
from gradwatch import demo

pytestmark = pytest.mark.training

NAN = next(scenario for scenario in demo.SCENARIOS if scenario.name == "nan")


class Recorder(http.server.ThreadingHTTPServer):
    """Answers anything with 200 and keeps every request's method and path."""

    def __init__(self, port: int) -> None:
        self.requests: list[str] = []
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                recorder.requests.append(f"{self.command} {self.path}")
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(json.dumps({}).encode())

            do_GET = do_POST = do_PUT = do_DELETE = _answer

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", port), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


@pytest.fixture
def usual_ports():
    """Listeners on Alertmanager's and the Pushgateway's usual ports (9093, 9091)."""
    servers = []
    try:
        for port in (9093, 9091):
            try:
                servers.append(Recorder(port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    pytest.skip(f"port {port} is taken on this machine")
                raise
        yield servers
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def test_the_demo_contacts_no_alertmanager_unless_named(usual_ports, tmp_path):
    summaries = demo.run(out_dir=str(tmp_path / "demo"), port=0, scenarios=(NAN,),
                         progress=False)
    assert summaries[0]["regime"] == "nonfinite"  # it had alerts to send
    assert [server.requests for server in usual_ports] == [[], []]
    # run in this process, it gives the alert log back as it found it
    assert not logging.getLogger("gradwatch.alerts").disabled


def test_a_named_alertmanager_gets_the_demos_alerts(usual_ports, tmp_path):
    with socket.socket() as probe:  # a free port for a second, named recorder
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    named = Recorder(port)
    try:
        demo.run(out_dir=str(tmp_path / "demo"), port=0, scenarios=(NAN,), progress=False,
                 alertmanager_url=f"http://127.0.0.1:{port}")
    finally:
        named.shutdown()
        named.server_close()
    assert any(request.startswith("POST /api/v2/alerts") for request in named.requests)
    assert [server.requests for server in usual_ports] == [[], []]
