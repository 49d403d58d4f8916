"""The watched optimizers' step hooks, attached only for the steps that need them."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from ..probes.overhead import Stopwatch

StepHook = Callable[[torch.optim.Optimizer], None]


class OptimizerHooks:
    """Pre- and post-step hooks on every watched optimizer, on or off per step: two
    Python calls per optimizer step saved on the steps that need none.

    Args:
        before, after: called with the optimizer before and after its step.
        stopwatch: where their time is counted.
    """

    def __init__(self, before: StepHook, after: StepHook, stopwatch: Stopwatch) -> None:
        self._before = before
        self._after = after
        self._stopwatch = stopwatch
        self.optimizers: list[torch.optim.Optimizer] = []
        self.on = False
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def watch(self, optimizer: torch.optim.Optimizer) -> None:
        if any(optimizer is o for o in self.optimizers):
            return
        self.optimizers.append(optimizer)
        if self.on:
            self._hook(optimizer)

    def switch(self, on: bool) -> None:
        """Hooks on (True) or off for the coming step."""
        if on == self.on:
            return
        self.on = on
        if on:
            for optimizer in self.optimizers:
                self._hook(optimizer)
        else:
            self.remove()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _hook(self, optimizer: torch.optim.Optimizer) -> None:
        self._handles += [optimizer.register_step_pre_hook(self._timed(self._before)),
                          optimizer.register_step_post_hook(self._timed(self._after))]

    def _timed(self, hook: StepHook) -> Callable[..., None]:
        def timed_hook(optimizer: torch.optim.Optimizer, args: tuple[Any, ...],
                       kwargs: dict[str, Any]) -> None:
            start = time.perf_counter()
            hook(optimizer)
            self._stopwatch.add_since(start)
        return timed_hook
