"""The per-step ring: every step's always-on figures, on the device, read as Pulses.

Each optimizer step writes one row (RingColumn) of a small device tensor of
``every_n_steps + 1`` rows (at most ``MAX_RING_ROWS``): the loss, squared gradient norms, post-clip norm, AMP scale, the
DDP local check and the skip-on-spike verdict, by in-place ops only (no host sync). The rows
reach the host with a sampled step's single transfer, or, on a CPU, where the ring is host
memory already, at no cost: quiet steps in batches of ``PULSE_BATCH``, an alarming one at
once. Read rows become Pulses, which go to the observers at once and to the sinks in
batches.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from ..probes.transfer import host_copy
from ..records.columns import RING_COLUMNS, RingColumn
from ..records.snapshot import Pulse

#: Pulses go to the sinks in batches at most this many seconds apart (and with every
#: Snapshot): one wake-up of the export thread per step would cost more than the step's
#: own monitoring on a small model.
PULSE_EXPORT_SECONDS = 0.5
#: On a CPU, quiet steps' Pulses are read and judged in batches of this many steps.
PULSE_BATCH = 8
#: The ring's rows at most, whatever ``every_n_steps``: its views are made once per row, so a
#: window of 10**6 steps would cost seconds and memory at the first step. A capped ring
#: (on an accelerator) is read on its own when full: one host copy per this many steps.
MAX_RING_ROWS = 1024


class Measured(NamedTuple):
    """Which of a ring row's figures the step measured (the others become None)."""

    loss: bool
    gradients: bool
    clipped_norm: bool
    loss_scale: bool
    local_check: bool
    skip_on_spike: bool


class RingRow(NamedTuple):
    """Host-side facts of one ring row (the device holds its values)."""

    step: int
    time: float
    stepped: bool
    learning_rates: tuple[tuple[float, ...], ...]
    measured: Measured


def pulse_from_row(row: RingRow, values: np.ndarray, scaler_calibrating: bool = False
                   ) -> Pulse:
    """The Pulse of one ring row, from the host copy of its values (``scaler_calibrating``:
    no optimizer step was applied before this one)."""
    measured, column = row.measured, RingColumn
    return Pulse(
        step=row.step,
        time=row.time,
        loss=float(values[column.LOSS]) if measured.loss else None,
        global_grad_norm=(math.sqrt(values[column.GRAD_SQ] + values[column.SHARDED_SQ])
                          if measured.gradients else None),
        clipped_grad_norm=math.sqrt(values[column.CLIP_SQ]) if measured.clipped_norm else None,
        loss_scale=float(values[column.SCALE]) if measured.loss_scale else None,
        optimizer_stepped=row.stepped,
        learning_rates=row.learning_rates,
        local_gradients_finite=(bool(values[column.LOCAL_NONFINITE] == 0)
                                if measured.local_check else None),
        update_skipped=(bool(values[column.SKIPPED])
                        if measured.skip_on_spike and row.stepped else None),
        scaler_calibrating=scaler_calibrating,
    )


class PulseRing:
    """The ring of the steps since the last read, and the Pulses read from it.

    Args:
        on_pulse: called with each Pulse as it is read (the observers).
        export: hands a batch of Pulses to the sinks (their ``on_pulse``).
        alarm_norm: on a CPU, a step whose global gradient norm is above it (or whose loss
            is not finite) is read at once.
    """

    def __init__(self, on_pulse: Callable[[Pulse], None],
                 export: Callable[[list[Pulse]], None], alarm_norm: float) -> None:
        self._on_pulse = on_pulse
        self._export = export
        self._alarm_squared_norm = alarm_norm ** 2
        self.tensor: torch.Tensor | None = None
        self.host: np.ndarray | None = None  # the ring itself, on a CPU device
        self.cells: list[tuple[torch.Tensor, ...]] = []  # per row, per RingColumn
        self.rows: list[RingRow] = []
        self.read = 0  # rows read so far
        #: the latest Pulses since the last Snapshot (its readers look at the last ones; a
        #: window of 10**6 steps would otherwise hold 10**6 of them)
        self.pulses: deque[Pulse] = deque(maxlen=MAX_RING_ROWS)
        self._unexported: list[Pulse] = []
        self._exported_at = time.monotonic()
        #: whether an optimizer step was applied yet: the GradScaler's skips before the
        #: first one are it calibrating its initial scale (Pulses are read in step order)
        self._applied = False

    def ensure(self, device: torch.device, n_rows: int) -> torch.Tensor:
        """The ring on ``device``, with room for the next row."""
        if self.tensor is None or self.tensor.device != device:
            if self.tensor is not None:
                self.drain()
            self.tensor = torch.zeros(n_rows, RING_COLUMNS, device=device, dtype=torch.float32)
            # on a CPU, the ring as host memory: looked at each step's end, at no cost
            self.host = self.tensor.numpy() if device.type == "cpu" else None
            # views made once: indexing the ring costs an op per access, every step
            self.cells = [row.unbind(0) for row in self.tensor.unbind(0)]
            self.rows, self.read = [], 0
        elif len(self.rows) >= self.tensor.shape[0]:  # only after an unusual step pattern
            self.drain()
        return self.tensor

    def alarming(self, row: int) -> bool:
        """A row (on a CPU: host memory, free to read) that must be judged at once."""
        assert self.host is not None, "on a CPU only"
        values, column = self.host[row], RingColumn
        return not (math.isfinite(values[column.LOSS])
                    and values[column.GRAD_SQ] <= self._alarm_squared_norm  # NaN compares False
                    and values[column.SKIPPED] == 0)

    def batch_due(self) -> bool:
        return len(self.rows) - self.read >= PULSE_BATCH

    def unread(self) -> torch.Tensor:
        """The device rows not read yet."""
        assert self.tensor is not None, "ensure() made the ring"
        return self.tensor[self.read:len(self.rows)]

    def drain(self, host_rows: np.ndarray | None = None, in_progress: int | None = None) -> None:
        """Turn the rows not yet read (``host_rows``: their host copy) into Pulses; resets
        the ring when every row is read, but that of the step ``in_progress``."""
        if self.tensor is None:
            return
        if host_rows is None:
            if self.read == len(self.rows):
                return
            # host memory already on a CPU device: a view, not a transfer (nor an op)
            host_rows = (self.host[self.read:len(self.rows)] if self.host is not None
                         else host_copy(self.unread()))
        for offset, values in enumerate(host_rows):
            row = self.rows[self.read + offset]
            pulse = pulse_from_row(row, values, scaler_calibrating=not self._applied)
            self._applied = self._applied or row.stepped
            self.pulses.append(pulse)
            self._unexported.append(pulse)
            self._on_pulse(pulse)
        self.read += len(host_rows)
        if in_progress is None or in_progress < self.read:
            # add_ needs 0s: ONE op for all rows read (on a CPU, host memory: none)
            if self.host is not None:
                self.host[:len(self.rows)] = 0
            else:
                self.tensor[:len(self.rows)].zero_()
            self.rows, self.read = [], 0
        if time.monotonic() - self._exported_at >= PULSE_EXPORT_SECONDS:
            self.export()

    def export(self) -> None:
        """Hand the Pulses read so far to the sinks."""
        if self._unexported:
            self._export(self._unexported)
            self._unexported = []
        self._exported_at = time.monotonic()

    def take_pulses(self) -> tuple[Pulse, ...]:
        """The Pulses since the last Snapshot, for the next one."""
        pulses = tuple(self.pulses)
        self.pulses.clear()
        return pulses
