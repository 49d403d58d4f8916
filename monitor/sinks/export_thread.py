"""The export thread: sinks run here, never on the training thread.

The training thread only appends to a bounded queue; when the queue is full the oldest item
is dropped and counted, so a slow disk or a stuck sink can never stall training.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeAlias, runtime_checkable

from ..logs import WarnOnce
from ..records.findings import Alert
from ..records.snapshot import Pulse, Snapshot


@runtime_checkable
class PulseSink(Protocol):
    """Takes every step's Pulse."""

    def on_pulse(self, pulse: Pulse) -> None: ...


@runtime_checkable
class SnapshotSink(Protocol):
    """Takes every sampled step's Snapshot."""

    def on_snapshot(self, snapshot: Snapshot) -> None: ...


@runtime_checkable
class AlertSink(Protocol):
    """Takes every Alert event (firing and resolved)."""

    def on_alert(self, alert: Alert) -> None: ...


@runtime_checkable
class ClosingSink(Protocol):
    """Has something to close when the run ends (a file, a connection, a thread)."""

    def close(self) -> None: ...


#: Where Pulses, Snapshots and Alerts go: a sink takes one or more of the three kinds (an
#: alert sink takes no Pulses). The export thread calls it for those, and nothing else does.
Sink: TypeAlias = PulseSink | SnapshotSink | AlertSink
#: the queue's methods, and the protocol of the sinks that take each
TAKERS: dict[str, type] = {"on_pulse": PulseSink, "on_snapshot": SnapshotSink,
                           "on_alert": AlertSink}


def handlers(sinks: Sequence[object]) -> dict[str, list[tuple[str, Callable[[Any], None]]]]:
    """Per queue method, the sinks that take it (name, handler); ValueError naming a sink
    that takes nothing (a typo in a method name would otherwise lose its records silently)."""
    for position, sink in enumerate(sinks):
        if not any(isinstance(sink, protocol) for protocol in TAKERS.values()):
            raise ValueError(f"sinks[{position}] ({type(sink).__name__}) has none of "
                             f"{', '.join(TAKERS)}: it would receive nothing")
    return {method: [(type(sink).__name__, getattr(sink, method)) for sink in sinks
                     if isinstance(sink, protocol)]
            for method, protocol in TAKERS.items()}


class ExportWorker:
    """Delivers items to sinks on a daemon thread, through a bounded drop-oldest queue.

    Batches (``submit_each``) cross the thread boundary as one entry: waking the export
    thread costs more than the work of one per-step item, so per-step items travel together.
    """

    def __init__(self, sinks: Sequence[Sink], max_queue: int = 10_000) -> None:
        self.sinks = list(sinks)
        self._handlers = handlers(self.sinks)
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
                if isinstance(sink, ClosingSink):
                    sink.close()
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
            for sink, handler in self._handlers[method]:
                for item in items:
                    try:
                        handler(item)
                    except Exception as exc:
                        self._warn(f"{sink}:{type(exc).__name__}",
                                   "gradwatch: %s.%s failed (reported once): %r",
                                   sink, method, exc)
            with self._cond:
                self._busy = False
                self._cond.notify_all()
