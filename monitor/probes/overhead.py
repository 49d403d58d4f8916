"""The monitor's own time on the training thread (exported as its overhead)."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

Method = TypeVar("Method", bound=Callable[..., Any])


class Stopwatch:
    """Seconds spent in the monitor's hooks, added up by everything that runs them."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def add_since(self, start: float) -> None:
        """Add the time since ``start`` (a ``time.perf_counter()``)."""
        self.seconds += time.perf_counter() - start


def timed(method: Method) -> Method:
    """Adds the wall time of a method's body to its object's ``stopwatch``."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            self.stopwatch.add_since(start)

    return cast(Method, wrapper)
