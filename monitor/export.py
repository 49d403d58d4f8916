"""The export thread: sinks run here, never on the training thread.

The training thread only appends to a bounded queue; when the queue is full the oldest item
is dropped and counted, so a slow disk or a stuck sink can never stall training.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, TypeAlias


log = logging.getLogger("gradwatch")


#: Where Pulses, Snapshots and Alerts go: any object with some of ``on_pulse(pulse)``,
#: ``on_snapshot(snapshot)``, ``on_alert(alert)`` and ``close()``. The export thread calls
#: those a sink has (an alert sink has no ``on_pulse``), and nothing else does.
Sink: TypeAlias = object


class WarnOnce:
    """Logs each distinct failure once (per key), so a dead receiver is not logged per step."""

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, key: str, message: str, *args: Any) -> None:
        with self._lock:
            if key in self._seen:
                return
            self._seen.add(key)
        log.warning(message, *args)


class ExportWorker:
    """Delivers items to sinks on a daemon thread, through a bounded drop-oldest queue.

    Batches (``submit_each``) cross the thread boundary as one entry: waking the export
    thread costs more than the work of one per-step item, so per-step items travel together.
    """

    def __init__(self, sinks: list[Sink], max_queue: int = 10_000) -> None:
        self.sinks = list(sinks)
        self.dropped = 0
        self._queue: deque[tuple[str, Sequence[object]]] = deque()
        self._max_queue = max_queue
        self._cond = threading.Condition()
        self._busy = False
        self._closed = False
        self._warn = WarnOnce()
        self._thread = threading.Thread(target=self._run, name="gradwatch-export", daemon=True)
        self._thread.start()

    def submit(self, method: str, item: object) -> None:
        """Queue ``sink.<method>(item)`` for every sink that has it; never blocks."""
        self.submit_each(method, [item])

    def submit_each(self, method: str, items: Sequence[object]) -> None:
        """Queue ``sink.<method>(item)`` for each of ``items``, in order, as ONE queue entry
        (one wake-up of the export thread); never blocks."""
        with self._cond:
            if self._closed or not items:
                return
            if len(self._queue) >= self._max_queue:
                self.dropped += len(self._queue.popleft()[1])
            self._queue.append((method, items))
            self._cond.notify()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far was delivered; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (bounded wait), close the sinks, stop the thread."""
        self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)
        for sink in self.sinks:
            try:
                close = getattr(sink, "close", None)
                if close is not None:
                    close()
            except Exception as exc:  # a failing sink must not break shutdown
                # the same failure as during the run (a full disk, say) is not news
                self._warn(f"{type(sink).__name__}:{type(exc).__name__}",
                           "gradwatch: closing %s failed: %r", type(sink).__name__, exc)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                method, items = self._queue.popleft()
                self._busy = True
            for sink in self.sinks:
                handler = getattr(sink, method, None)
                if handler is None:
                    continue
                for item in items:
                    try:
                        handler(item)
                    except Exception as exc:
                        self._warn(f"{type(sink).__name__}:{type(exc).__name__}",
                                   "gradwatch: %s.%s failed (reported once): %r",
                                   type(sink).__name__, method, exc)
            with self._cond:
                self._busy = False
                self._cond.notify_all()
