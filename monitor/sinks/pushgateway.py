"""Push to a Prometheus Pushgateway, for jobs too short to be scraped.

Pushes run on their own thread every ``interval`` seconds; a dead or slow gateway costs the
training nothing and is reported once. At a clean end the group is deleted, unless kept.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from prometheus_client import CollectorRegistry, delete_from_gateway, push_to_gateway
from prometheus_client.exposition import default_handler

from ..logs import WarnOnce
from ..records.validation import check_positive, check_url

#: prometheus_client's push handler: (url, method, timeout, headers, data) -> the request
PushHandler = Callable[[str, str, float | None, list[tuple[str, str]], bytes],
                      Callable[[], None]]


class PushgatewayPusher:
    """Pushes a registry to ``url`` under grouping key run (+ rank) periodically.

    Args:
        url: the Pushgateway address, e.g. ``http://127.0.0.1:9091``.
        registry: what to push (the PrometheusSink's registry).
        grouping_key: e.g. ``{"run": "exp1", "rank": "0"}``.
        job: the ``job`` grouping label.
        interval: seconds between pushes.
        keep: keep the group on the gateway after a clean end.
        timeout: seconds for each HTTP request.
        handler: a prometheus_client push handler (e.g. basic_auth_handler wrapper) for
            authentication; never logged.
    """

    def __init__(self, url: str, registry: CollectorRegistry, grouping_key: dict[str, str],
                 job: str = "gradwatch", interval: float = 10.0, keep: bool = False,
                 timeout: float = 5.0, handler: PushHandler | None = None) -> None:
        check_url("pushgateway_url", url)
        check_positive("push_interval", interval)
        self.url, self.registry, self.grouping_key = url, registry, dict(grouping_key)
        self.job, self.interval, self.keep, self.timeout = job, interval, keep, timeout
        self._handler = handler or default_handler
        self._warn = WarnOnce()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gradwatch-push", daemon=True)
        self._thread.start()

    def push(self) -> bool:
        """Push once now; False (and a warning, once) if the gateway failed."""
        try:
            push_to_gateway(self.url, job=self.job, registry=self.registry,
                            grouping_key=self.grouping_key, timeout=self.timeout,
                            handler=self._handler)
        except Exception as exc:
            self._warn("push", "gradwatch: push to the Pushgateway %s failed (reported once): %r",
                       self.url, exc)
            return False
        return True

    def close(self, clean: bool = True) -> None:
        """Stop the thread; after a clean end delete the group (unless kept), otherwise push
        the final figures and leave them there for whoever investigates the failure."""
        self._stop.set()
        self._thread.join(self.timeout + 1)
        if clean and not self.keep:
            try:
                delete_from_gateway(self.url, job=self.job, grouping_key=self.grouping_key,
                                    timeout=self.timeout, handler=self._handler)
            except Exception as exc:
                self._warn("delete", "gradwatch: deleting the Pushgateway group failed: %r", exc)
        else:
            self.push()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.push()
