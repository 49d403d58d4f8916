"""The /metrics HTTP endpoint: loopback by default, optional TLS (and client certificates)
and HTTP basic auth, served from a daemon thread; after its run it may linger (see
``linger``) until a last scrape has read it."""

from __future__ import annotations

import atexit
import base64
import hmac
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from ..records.validation import check_credentials

log = logging.getLogger("gradwatch")


@dataclass(frozen=True)
class EndpointSecurity:
    """How /metrics is protected. Secrets are never logged or shown in ``repr``.

    Args:
        certfile, keyfile: serve HTTPS with this certificate and key (PEM).
        client_cafile: also require client certificates signed by this CA (mutual TLS).
        basic_auth: (username, password) required on every request.
    """

    certfile: str | None = None
    keyfile: str | None = None
    client_cafile: str | None = None
    basic_auth: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("prometheus_tls_cert and prometheus_tls_key go together")
        if self.client_cafile and not self.certfile:
            raise ValueError("prometheus_tls_client_ca needs prometheus_tls_cert and _key")
        object.__setattr__(self, "basic_auth",
                           check_credentials("prometheus_basic_auth", self.basic_auth))

    def __repr__(self) -> str:
        return (f"EndpointSecurity(tls={self.certfile is not None}, "
                f"client_certificates={self.client_cafile is not None}, "
                f"basic_auth={self.basic_auth is not None})")

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.certfile:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.certfile, self.keyfile)
        if self.client_cafile:
            context.load_verify_locations(self.client_cafile)
            context.verify_mode = ssl.CERT_REQUIRED
        return context


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # scrapes are not worth a log line
        pass


#: A WSGI application: (environ, start_response) -> the body
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _with_basic_auth(app: WSGIApp, username: str, password: str) -> WSGIApp:
    expected = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        given = environ.get("HTTP_AUTHORIZATION", "")
        if not hmac.compare_digest(given.encode(), expected.encode()):
            start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="gradwatch"'),
                                                ("Content-Type", "text/plain")])
            return [b"authentication required\n"]
        return app(environ, start_response)

    return guarded


def serve(registry: CollectorRegistry, port: int, addr: str = "127.0.0.1",
          security: EndpointSecurity | None = None) -> ThreadingWSGIServer:
    """Start serving ``registry`` on ``addr:port`` (0: any free port) in a daemon thread.

    Raises OSError when the port cannot be bound, ssl.SSLError for unusable certificates.
    """
    _take_over(port)
    security = security or EndpointSecurity()
    app = make_wsgi_app(registry)
    if security.basic_auth:
        app = _with_basic_auth(app, *security.basic_auth)
    server = make_server(addr, port, app, ThreadingWSGIServer, handler_class=_QuietHandler)
    context = security.ssl_context()
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, name="gradwatch-metrics", daemon=True).start()
    return server


def stop(server: ThreadingWSGIServer) -> None:
    server.shutdown()
    server.server_close()


class _Linger:
    """A finished run's server, shut down from its own daemon thread once ``done()`` holds
    (checked whenever ``condition`` is notified) or ``timeout`` seconds have passed."""

    def __init__(self, server: ThreadingWSGIServer, done: Callable[[], bool],
                 condition: threading.Condition, timeout: float) -> None:
        self.server, self._done, self._condition = server, done, condition
        self.deadline = time.monotonic() + timeout
        self._released = False
        self.thread = threading.Thread(target=self._run, name="gradwatch-linger", daemon=True)

    def _run(self) -> None:
        with self._condition:
            self._condition.wait_for(lambda: self._released or self._done(),
                                     max(0.0, self.deadline - time.monotonic()))
        self.release()

    def release(self) -> None:
        port = self.server.server_address[1]
        with _LINGERING_LOCK:
            if _LINGERING.get(port) is self:
                del _LINGERING[port]
        with self._condition:
            if self._released:
                return
            self._released = True
            self._condition.notify_all()
        stop(self.server)


#: Servers of finished runs still waiting for their last scrape, by port.
_LINGERING: dict[int, _Linger] = {}
_LINGERING_LOCK = threading.Lock()


def linger(server: ThreadingWSGIServer, done: Callable[[], bool],
           condition: threading.Condition, timeout: float) -> None:
    """Keep ``server`` up in the background until ``done()`` (or ``timeout``), then stop it:
    the caller returns at once. A new endpoint on the same port takes over at once (a second
    fit in the same process), and the interpreter's exit waits for it, bounded by
    ``timeout``, so a script that ends right after ``fit()`` still gets its last scrape."""
    lingering = _Linger(server, done, condition, timeout)
    with _LINGERING_LOCK:
        _LINGERING[server.server_address[1]] = lingering
    lingering.thread.start()


def _take_over(port: int) -> None:
    with _LINGERING_LOCK:
        previous = _LINGERING.pop(port, None) if port else None
    if previous is not None:
        previous.release()


@atexit.register
def _await_lingering() -> None:
    """At the interpreter's exit: wait (bounded) for the lingering servers' last scrape,
    saying so in one line; Ctrl-C stops them at once and the exit goes on quietly."""
    with _LINGERING_LOCK:
        waiting = [lingering for lingering in _LINGERING.values() if lingering.thread.is_alive()]
    if not waiting:
        return
    ports = ", ".join(str(lingering.server.server_address[1]) for lingering in waiting)
    seconds = max(lingering.deadline for lingering in waiting) - time.monotonic()
    try:  # a Ctrl-C as soon as the line shows is the user's answer to it
        log.warning("gradwatch: waiting up to %.0f s for Prometheus's next scrape of /metrics "
                    "(port %s), which tells it this run ended cleanly (no TrainerDown page); "
                    "Ctrl-C, or prometheus_linger=0, skips the wait", max(seconds, 1.0), ports)
        for lingering in waiting:
            lingering.thread.join(max(0.0, lingering.deadline - time.monotonic()) + 1.0)
    except KeyboardInterrupt:
        for lingering in waiting:
            lingering.release()
