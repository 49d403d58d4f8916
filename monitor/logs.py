"""gradwatch's logger, and a warning logged once per distinct failure."""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger("gradwatch")


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
