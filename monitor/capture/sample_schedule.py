"""Which steps are sampled: the first of every window of ``every_n_steps``, plus escalations."""

from __future__ import annotations


class SampleSchedule:
    """The sampling schedule of one Monitor.

    Regular samples are the first step of each window of ``every_n_steps`` steps: the same
    steps on every rank, whatever escalations happened, so collectives there can never
    mismatch. Escalations (e.g. after a NaN on an unsampled step) sample the next steps too,
    optionally tracing every module.

    Args:
        every_n_steps: the window.
    """

    def __init__(self, every_n_steps: int) -> None:
        self.every_n_steps = every_n_steps
        self._last_window: int | None = None
        self._escalated_steps = 0
        self._trace_all_next = False

    def is_regular(self, step: int) -> bool:
        return step // self.every_n_steps != self._last_window

    def is_sampled(self, step: int) -> bool:
        return self._escalated_steps > 0 or self.is_regular(step)

    def escalate(self, steps: int, trace_all_modules: bool) -> None:
        self._escalated_steps = max(self._escalated_steps, steps)
        self._trace_all_next = self._trace_all_next or trace_all_modules

    def start(self) -> bool:
        """A sampled step starts: whether it traces every module (an escalated step is used)."""
        trace_all = self._trace_all_next
        if self._escalated_steps > 0:
            self._escalated_steps -= 1
            if self._escalated_steps == 0:
                self._trace_all_next = False
        return trace_all

    def done(self, step: int, regular: bool) -> None:
        """A sampled step ended: a regular one closes its window's regular sample."""
        if regular:
            self._last_window = step // self.every_n_steps
