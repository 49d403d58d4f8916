"""Activation records of small outputs made together: one op per statistic per batch.

On a CPU, an output of a few thousand values costs its record in per-op overhead, not in
reading them: an MLP's layers made ~15 ops each. Small outputs are copied when their hook
runs (the values of that moment: a later in-place op, e.g. ``ReLU(inplace=True)``, cannot
change them) and wait, grouped by shape and saturation test, until ``flush`` stacks each
group as [k, n] and makes its k records in one pass per statistic. The copies wait at most
BATCH_ELEMENTS values in all (flushed earlier when full), so the extra memory is bounded.
"""

from __future__ import annotations

import torch

from . import probes
from .thresholds import Thresholds

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
            (``probes.sampled_activation_record``; extremes and non-finite counts stay
            exact); None or 0: every output exact.
    """

    def __init__(self, thresholds: Thresholds, sample_values: int | None = SAMPLE_VALUES) -> None:
        self.thresholds = thresholds
        self.sample_values = sample_values or 0
        self._generators: dict[torch.device, torch.Generator] = {}
        self._waiting: dict[tuple[torch.device, torch.Size, int],
                            list[tuple[int, torch.Tensor]]] = {}
        self._elements = 0

    def add(self, raw: list[torch.Tensor | None], output: torch.Tensor, saturation: int) -> None:
        """Append the raw record of ``output`` to ``raw``: now, or a placeholder that the
        next ``flush`` fills."""
        with torch.no_grad():  # no graph, and no op to detach
            if output.numel() > BATCH_NUMEL:
                raw.append(self._large_record(output, saturation))
                return
            copy = output.to(torch.float32, copy=True)  # one op (a batch is of one shape)
        self._waiting.setdefault((copy.device, copy.shape, saturation), []).append(
            (len(raw), copy))
        raw.append(None)
        self._elements += copy.numel()
        if self._elements >= BATCH_ELEMENTS:
            self.flush(raw)

    def flush(self, raw: list[torch.Tensor | None]) -> None:
        """Fill the placeholders in ``raw``: one batch of records per group."""
        for (_, _, saturation), waiting in self._waiting.items():
            positions, copies = zip(*waiting)
            records = self._records(torch.stack(copies).view(len(copies), -1), saturation)
            for position, record in zip(positions, records.unbind()):
                raw[position] = record
        self.clear()

    def clear(self) -> None:
        self._waiting.clear()
        self._elements = 0

    def _records(self, rows: torch.Tensor, saturation: int) -> torch.Tensor:
        return probes.raw_activation_records(rows, saturation, self.thresholds.sigmoid_flat,
                                             self.thresholds.tanh_flat)

    def _large_record(self, output: torch.Tensor, saturation: int) -> torch.Tensor:
        if not self.sample_values:  # (an output within one sample is exact there too)
            return self._records(output.reshape(1, -1), saturation)[0]
        generator = self._generators.get(output.device)
        if generator is None:
            generator = torch.Generator(device=output.device)
            generator.manual_seed(SAMPLE_SEED)
            self._generators[output.device] = generator
        return probes.sampled_activation_record(
            output, saturation, self.thresholds.sigmoid_flat, self.thresholds.tanh_flat,
            self.sample_values, generator)
