"""Activation records of small outputs made together: one op per statistic per batch.

On a CPU, an output of a few thousand values costs its record in per-op overhead, not in
reading them: an MLP's layers made ~15 ops each. Small outputs are copied when their hook
runs (the values of that moment: a later in-place op, e.g. ``ReLU(inplace=True)``, cannot
change them) and wait, grouped by shape and saturation test, until ``flush`` stacks each
group as [k, n] and makes its k records in one pass per statistic. A large output's rows
drawn for its sampled record (``tensor_stats.draw_rows``) wait alike, with its exact extremes. The
copies wait at most BATCH_ELEMENTS values in all (flushed earlier when full), so the extra
memory is bounded.
"""

from __future__ import annotations

import torch

from ..records.thresholds import Thresholds
from . import tensor_stats

#: Outputs up to this many values wait for a batch; larger ones cost their reading, not
#: their ops, and are recorded at once (no copy).
BATCH_NUMEL = 1 << 17
#: Values waiting in all before a flush (float32: 16 MiB).
BATCH_ELEMENTS = 1 << 22
#: Default bound on the values a large output's moments and ratios are estimated from.
SAMPLE_VALUES = 1 << 16
#: Seed of the generators that draw those rows (one per device, per RecordBatches).
SAMPLE_SEED = 0x67726164


class RecordBatches:
    """Records of a sampled step's outputs, made now (large) or in batches (small).

    Args:
        thresholds: the saturation tests.
        sample_values: outputs above this many values get their moments and ratios
            estimated from random whole rows of about this many values
            (``tensor_stats.draw_rows``; extremes and non-finite counts stay exact); None or
            0: every output exact.
    """

    def __init__(self, thresholds: Thresholds, sample_values: int | None = SAMPLE_VALUES) -> None:
        self.thresholds = thresholds
        self.sample_values = sample_values or 0
        self._generators: dict[torch.device, torch.Generator] = {}
        self._waiting: dict[tuple[torch.device, torch.Size, int],
                            list[tuple[int, torch.Tensor]]] = {}
        self._samples: dict[tuple[torch.device, int, int],
                            list[tuple[int, tensor_stats.RowSample]]] = {}
        self._elements = 0

    def add(self, raw: list[torch.Tensor | None], output: torch.Tensor, saturation: int) -> None:
        """Append the raw record of ``output`` to ``raw``: now, or a placeholder that the
        next ``flush`` fills."""
        with torch.no_grad():  # no graph, and no op to detach
            if output.numel() <= BATCH_NUMEL:
                copy = output.to(torch.float32, copy=True)  # one op (a batch is of one shape)
                self._waiting.setdefault((copy.device, copy.shape, saturation), []).append(
                    (len(raw), copy))
                self._wait(raw, copy.numel())
                return
            sample = self._draw(output)
            if sample is None:
                raw.append(self._records(output.reshape(1, -1), saturation)[0])
                return
            self._samples.setdefault((output.device, sample.values.numel(), saturation),
                                     []).append((len(raw), sample))
            self._wait(raw, sample.values.numel())

    def _wait(self, raw: list[torch.Tensor | None], values: int) -> None:
        """A placeholder in ``raw`` for a record that waits (of ``values`` values)."""
        raw.append(None)
        self._elements += values
        if self._elements >= BATCH_ELEMENTS:
            self.flush(raw)

    def flush(self, raw: list[torch.Tensor | None]) -> None:
        """Fill the placeholders in ``raw``: one batch of records per group."""
        for (_, _, saturation), waiting in self._waiting.items():
            positions, copies = zip(*waiting)
            # reshape: a copy keeps its output's strides (channels-last ones cannot be viewed)
            records = self._records(torch.stack(copies).reshape(len(copies), -1), saturation)
            self._fill(raw, positions, records)
        t = self.thresholds
        for (_, _, saturation), drawn in self._samples.items():
            positions, samples = zip(*drawn)
            self._fill(raw, positions, tensor_stats.sampled_records(samples, saturation,
                                                              t.sigmoid_flat, t.tanh_flat))
        self.clear()

    @staticmethod
    def _fill(raw: list[torch.Tensor | None], positions: tuple[int, ...],
              records: torch.Tensor) -> None:
        for position, record in zip(positions, records.unbind()):
            raw[position] = record

    def clear(self) -> None:
        self._waiting.clear()
        self._samples.clear()
        self._elements = 0

    def _records(self, rows: torch.Tensor, saturation: int) -> torch.Tensor:
        return tensor_stats.raw_activation_records(rows, saturation, self.thresholds.sigmoid_flat,
                                             self.thresholds.tanh_flat)

    def _draw(self, output: torch.Tensor) -> tensor_stats.RowSample | None:
        """Rows of a large output for its sampled record; None: recorded exactly."""
        if not self.sample_values:
            return None
        generator = self._generators.get(output.device)
        if generator is None:
            generator = torch.Generator(device=output.device)
            generator.manual_seed(SAMPLE_SEED)
            self._generators[output.device] = generator
        return tensor_stats.draw_rows(output, self.sample_values, generator)
