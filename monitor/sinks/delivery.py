"""Alert sinks: where Alerts go. Their ``on_alert`` runs on the export thread.

Network senders never hold the export thread for long either: ``on_alert`` only queues a
JSON document for their own delivery thread (bounded, drop-oldest and counted), which posts
it with retries and exponential backoff, logs ONE warning when the receiver is down (and
one info line when it is back), and flushes what is pending on ``close(timeout)`` with a
bounded wait. HTTP uses the standard library only.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable
from datetime import datetime, timezone

from ..records.findings import FIRING, Alert
from ..records.validation import check_callable, check_credentials, check_int, check_positive

log = logging.getLogger("gradwatch")
alert_log = logging.getLogger("gradwatch.alerts")

#: A firing alert's endsAt lies this many resend intervals ahead: Alertmanager resolves it
#: by itself once that many re-posts are missed (a crashed run), never after one late post.
ENDS_AT_RESENDS = 4
#: Client errors worth a retry (Request Timeout, Too Many Requests); other 4xx never succeed.
RETRIED_CLIENT_ERRORS = (408, 429)
#: Factor of the retry delay after each failure (exponential backoff, up to max_backoff).
BACKOFF_GROWTH = 2
_LEVELS = {"critical": logging.ERROR, "warning": logging.WARNING, "info": logging.INFO}


class LoggingAlertSink:
    """Logs each Alert on the ``gradwatch.alerts`` logger (the default sink).

    Firing alerts log at ERROR (critical), WARNING (warning) or INFO; resolutions at INFO.
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or alert_log

    def on_alert(self, alert: Alert) -> None:
        level = _LEVELS.get(alert.severity, logging.WARNING) if alert.status == FIRING else (
            logging.INFO)
        where = f" [{', '.join(alert.layers)}]" if alert.layers else ""
        self.logger.log(level, "%s %s run=%s rank=%d step=%d%s: %s. %s Try: %s",
                        alert.status.upper(), alert.name, alert.run, alert.rank, alert.step,
                        where, alert.summary, alert.description, alert.remedy)

    def close(self) -> None:
        pass


class CallableAlertSink:
    """Calls ``fn(alert)`` for each Alert (on the export thread)."""

    def __init__(self, fn: Callable[[Alert], object]) -> None:
        check_callable("fn", fn)
        self.fn = fn

    def on_alert(self, alert: Alert) -> None:
        self.fn(alert)

    def close(self) -> None:
        pass


class HttpPoster:
    """Posts JSON documents to one URL from its own daemon thread.

    Args:
        url: http(s) URL to POST to; ``user:password@`` in it is sent as basic auth. Logs
            show it without credentials or query string.
        max_queue: pending documents kept while the receiver is slow or down; the oldest is
            dropped (and counted in ``dropped``) when full.
        timeout: seconds for one HTTP request.
        backoff: first retry delay in seconds, doubled after each failure up to
            ``max_backoff``.
        basic_auth: (user, password) for HTTP basic auth.
        bearer_token: token for ``Authorization: Bearer``.
        ca_file: CA bundle to verify an https receiver with.
        periodic: (interval seconds, fn) whose returned documents are posted every
            interval (used to re-send firing alerts).

    Raises:
        ValueError: a bad option, naming it.
    """

    def __init__(self, url: str, *, max_queue: int = 1000, timeout: float = 5.0,
                 backoff: float = 0.5, max_backoff: float = 30.0,
                 basic_auth: tuple[str, str] | None = None, bearer_token: str | None = None,
                 ca_file: str | None = None,
                 periodic: tuple[float, Callable[[], list[object]]] | None = None) -> None:
        parsed = urllib.parse.urlsplit(url) if isinstance(url, str) else None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"url must be an http(s) URL, got {redact(url)!r}")
        check_int("max_queue", max_queue, low=1)
        for name, value in (("timeout", timeout), ("backoff", backoff),
                            ("max_backoff", max_backoff)):
            check_positive(name, value)
        basic_auth = check_credentials("basic_auth", basic_auth)
        if parsed.username is not None:  # user:password@ in the URL becomes basic auth
            if basic_auth is not None or bearer_token is not None:
                raise ValueError("url has credentials and basic_auth/bearer_token too: give one")
            basic_auth = (urllib.parse.unquote(parsed.username),
                          urllib.parse.unquote(parsed.password or ""))
            host = parsed.netloc.rpartition("@")[2]
            url = urllib.parse.urlunsplit(parsed._replace(netloc=host))
        if basic_auth is not None and bearer_token is not None:
            raise ValueError("basic_auth and bearer_token are exclusive: give one")
        if periodic is not None:
            check_positive("periodic interval", periodic[0])
        try:
            self.context = ssl.create_default_context(cafile=ca_file) if ca_file else None
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"ca_file {ca_file!r} cannot be loaded: {exc}") from exc
        self.url = url
        self.where = redact(url)
        self.timeout, self.backoff, self.max_backoff = timeout, backoff, max_backoff
        self.headers = {"Content-Type": "application/json", "User-Agent": "gradwatch"}
        if basic_auth is not None:
            pair = base64.b64encode(":".join(basic_auth).encode()).decode()
            self.headers["Authorization"] = f"Basic {pair}"
        elif bearer_token is not None:
            self.headers["Authorization"] = f"Bearer {bearer_token}"
        self.periodic = periodic
        self.dropped = 0
        self.sent = 0
        self._queue: deque[object] = deque()
        self._max_queue = max_queue
        self._cond = threading.Condition()
        self._closing = False  # deliver what is pending, accept nothing new
        self._stopped = False  # give up on what is pending
        self._in_flight = False
        self._down = False
        self._thread = threading.Thread(target=self._run, name="gradwatch-alert-post",
                                        daemon=True)
        self._thread.start()

    def __repr__(self) -> str:  # never show credentials
        return f"HttpPoster({self.where!r})"

    def submit(self, document: object) -> None:
        """Queue a document, or a callable that renders it when it is sent (for content that
        depends on the send time); returns at once."""
        with self._cond:
            if self._closing:
                return
            if len(self._queue) >= self._max_queue:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(document)
            self._cond.notify_all()

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + self._in_flight

    def close(self, timeout: float = 5.0) -> bool:
        """Try to deliver what is pending for at most ``timeout`` seconds, then stop.
        Returns whether everything was delivered."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        with self._cond:  # out of time: the thread stops after the request in flight
            self._stopped = True
            self._cond.notify_all()
            left = len(self._queue) + self._in_flight
        if left:
            log.warning("gradwatch: %d alert document(s) to %s not delivered at close", left,
                        self.where)
        return left == 0

    # ------------------------------------------------------------------ delivery thread

    def _run(self) -> None:
        delay = self.backoff
        next_periodic = time.monotonic() + self.periodic[0] if self.periodic else None
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    wait = None if next_periodic is None else next_periodic - time.monotonic()
                    if wait is not None and wait <= 0:
                        break
                    self._cond.wait(wait)
                if self._stopped or (self._closing and not self._queue):
                    return
                document = self._queue.popleft() if self._queue else None
                self._in_flight = document is not None
            if document is None:  # nothing queued and the periodic documents are due
                for extra in self.periodic[1]():
                    self.submit(extra)
                next_periodic = time.monotonic() + self.periodic[0]
                continue
            done = self._post(document)
            with self._cond:
                self._in_flight = False
                if done:
                    delay = self.backoff
                else:  # back first in line, then wait before retrying (close() can cut it)
                    if len(self._queue) < self._max_queue:
                        self._queue.appendleft(document)
                    else:
                        self.dropped += 1
                    if not self._stopped:
                        self._cond.wait(delay)
                    delay = min(delay * BACKOFF_GROWTH, self.max_backoff)
                self._cond.notify_all()

    def _post(self, document: object) -> bool:
        """Send one document; False when it should be retried."""
        try:
            body = json.dumps(document() if callable(document) else document,
                              allow_nan=False, default=str).encode()
        except (TypeError, ValueError) as exc:
            log.warning("gradwatch: an alert document for %s is not JSON (%r): dropped",
                        self.where, exc)
            self._count("dropped")
            return True  # retrying cannot help
        request = urllib.request.Request(self.url, data=body, headers=self.headers,
                                         method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout,
                                        context=self.context) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            if 400 <= exc.code < 500 and exc.code not in RETRIED_CLIENT_ERRORS:
                log.warning("gradwatch: %s rejected an alert document (HTTP %d): dropped",
                            self.where, exc.code)
                self._count("dropped")
                return True  # retrying the same document cannot succeed
            return self._failed(f"HTTP {exc.code}")
        except (OSError, ValueError, http.client.HTTPException) as exc:
            return self._failed(type(exc).__name__)
        self._count("sent")
        if self._down:
            self._down = False
            log.info("gradwatch: alert receiver %s reachable again", self.where)
        return True

    def _count(self, counter: str) -> None:
        with self._cond:
            setattr(self, counter, getattr(self, counter) + 1)

    def _failed(self, reason: str) -> bool:
        if not self._down:
            self._down = True
            log.warning("gradwatch: alert receiver %s unreachable (%s); retrying with backoff, "
                        "alerts queued (warned once until it is back)", self.where, reason)
        return False


def redact(url: object) -> str:
    """The URL as logs may show it: no user:password, no query string (tokens live there)."""
    if not isinstance(url, str):
        return repr(url)
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    query = "?..." if parts.query else ""
    return f"{parts.scheme}://{host}{parts.path}{query}"


def rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat().replace("+00:00", "Z")


class AlertmanagerSink:
    """Sends Alerts to Alertmanager's API v2 (``POST <url>/api/v2/alerts``).

    Alertmanager identifies an alert by its labels. A firing alert is posted with
    ``startsAt`` and an ``endsAt`` ``ENDS_AT_RESENDS * resend_interval`` in the future, and
    re-posted every ``resend_interval`` seconds while active, so Alertmanager never
    auto-resolves it; when the run stops sending (crash, end), it resolves on its own once
    that ``endsAt`` passes, as it does for Prometheus. A resolution is posted with ``endsAt`` = resolution time.

    Args:
        url: Alertmanager base URL, e.g. ``http://alertmanager:9093``.
        world_size: adds the ``rank`` label when above 1 (as the metrics do).
        generator_url: optional link back to the run (TensorBoard, dashboard).
        resend_interval: seconds between re-posts of the firing alerts.
        **http: HttpPoster options (basic_auth, bearer_token, ca_file, timeout, max_queue,
            backoff, max_backoff).
    """

    def __init__(self, url: str, *, world_size: int = 1, generator_url: str = "",
                 resend_interval: float = 60.0, **http) -> None:
        check_positive("resend_interval", resend_interval)
        self.world_size = world_size
        self.generator_url = generator_url
        self.resend_interval = float(resend_interval)
        self._firing: dict[tuple, Alert] = {}
        self._lock = threading.Lock()
        self.poster = HttpPoster(url.rstrip("/") + "/api/v2/alerts",
                                 periodic=(self.resend_interval, self._resend), **http)

    def on_alert(self, alert: Alert) -> None:
        key = tuple(sorted(alert.labels(self.world_size).items()))
        with self._lock:
            if alert.status == FIRING:
                self._firing[key] = alert
            else:
                self._firing.pop(key, None)
        # rendered at send time: a firing alert queued through an outage must not arrive
        # with an endsAt already past (Alertmanager would take it as resolved)
        self.poster.submit(lambda: [self.payload(alert)])

    def payload(self, alert: Alert, now: float | None = None) -> dict[str, object]:
        """The API v2 postable alert."""
        now = time.time() if now is None else now
        lease = now + ENDS_AT_RESENDS * self.resend_interval
        ends = alert.ends_at if alert.status != FIRING else lease
        body: dict[str, object] = {
            "labels": alert.labels(self.world_size),
            "annotations": alert.annotations(self.world_size),
            "startsAt": rfc3339(alert.starts_at),
            "endsAt": rfc3339(ends if ends is not None else now),
        }
        if self.generator_url:
            body["generatorURL"] = self.generator_url
        return body

    def _resend(self) -> list[object]:
        with self._lock:
            if not self._firing:
                return []
        # rendered when it is sent, from what fires then: a resolution queued in between
        # must not be followed by a re-send of the alert it resolved (firing again)
        return [self._firing_payloads]

    def _firing_payloads(self) -> list[dict[str, object]]:
        with self._lock:
            firing = list(self._firing.values())
        return [self.payload(a) for a in firing]

    def close(self, timeout: float = 5.0) -> bool:
        return self.poster.close(timeout)


class WebhookSink:
    """POSTs each Alert as generic JSON: every Alert field plus ``labels`` and
    ``annotations``. Options as for AlertmanagerSink (**http: HttpPoster options)."""

    def __init__(self, url: str, *, world_size: int = 1, **http) -> None:
        self.world_size = world_size
        self.poster = HttpPoster(url, **http)

    def on_alert(self, alert: Alert) -> None:
        document = alert.to_dict()
        document["labels"] = alert.labels(self.world_size)
        document["annotations"] = alert.annotations(self.world_size)
        self.poster.submit(document)

    def close(self, timeout: float = 5.0) -> bool:
        return self.poster.close(timeout)
