"""A sampled step, from its hooks to its Snapshot.

While the step runs, the forward hooks (``sampling``) and the attention probe record on
the device. When it ends: the per-layer records are combined, with several ranks ONE
all-gather completes them (``world``), everything goes to the host in ONE copy, by name
(``transfer``), and is packed into the Snapshot in numpy (``packing``).
"""

from __future__ import annotations

import time

from torch import nn

from ..probes.attention import AttentionProbe
from ..probes.forward_hooks import ForwardTracer
from ..probes.layers import LayerIndex
from ..probes.overhead import Stopwatch
from ..probes.record_batches import SAMPLE_VALUES
from ..probes.transfer import TransferLayout
from ..probes.watched import WatchedParams
from ..probes.world_gather import gather_world
from ..records.columns import TransferPart
from ..records.packing import SampleFacts, pack_snapshot
from ..records.snapshot import Snapshot
from ..records.thresholds import Thresholds
from .ring import PulseRing
from .steps import StepState


class Sampler:
    """The hooks of sampled steps and the Snapshot each one ends with.

    Args:
        model: the watched module.
        thresholds: the saturation tests.
        stopwatch: where the hooks' own time is counted (and read for the Snapshot).
        activation_sample: the bound of the activations' sampled records (None or 0: exact).
    """

    def __init__(self, model: nn.Module, thresholds: Thresholds, stopwatch: Stopwatch,
                 activation_sample: int | None = SAMPLE_VALUES) -> None:
        self.tracer = ForwardTracer(model, thresholds, stopwatch, activation_sample)
        self.attention = AttentionProbe(model, stopwatch)
        self.stopwatch = stopwatch

    def index(self, layers: LayerIndex, watched: WatchedParams) -> None:
        """Trace these layers and parameters (again each time the model is indexed)."""
        self.layers, self.watched = layers, watched
        self.tracer.index(layers)

    def pause(self, paused: bool) -> None:
        self.tracer.paused = self.attention.paused = paused

    def start(self, trace_all: bool) -> None:
        """Hooks on for one sampled step (with ``trace_all``: on every module)."""
        self.tracer.attach(trace_all, self.attention.attach())

    def close(self) -> None:
        """Hooks off, also after a failed forward."""
        self.tracer.detach()
        self.attention.detach()

    def finish(self, state: StepState, ring: PulseRing, gather: bool, run: str,
               rank: int) -> Snapshot:
        """End the step's hooks; its ONE transfer (after ONE ``gather`` across ranks)
        reads the ring's rows too, as Pulses."""
        table, tracer = state.table, self.tracer
        assert table is not None and ring.tensor is not None, "a sampled step has its table"
        device = ring.tensor.device
        table.measure_weights()
        tracer.detach()
        table.release()
        tracer.learn_forward_order()
        own, act, record_nonfinite = tracer.finish(device)
        rows, values, layout = ring.unread(), table.values, TransferLayout()
        if gather:
            rows, values, world_own, world_act = gather_world(rows, values, own, act,
                                                              self.watched.sharded)
            layout.add(TransferPart.WORLD_LAYER_OUTPUT, world_own)
            layout.add(TransferPart.WORLD_ACTIVATION, world_act)
        layout.add(TransferPart.RING_ROWS, rows)
        table.add_to(layout, values)
        layout.add(TransferPart.LAYER_OUTPUT, own)
        layout.add(TransferPart.ACTIVATION, act)
        layout.add(TransferPart.RECORD_NONFINITE, record_nonfinite)
        layout.add(TransferPart.ATTENTION, self.attention.values(device))
        host = layout.to_host()  # the ONE device-to-host transfer of the step
        ring.drain(host[TransferPart.RING_ROWS], in_progress=state.row)
        facts = self._facts(state, ring, run, rank)
        return pack_snapshot(host, facts, self.attention.read(host[TransferPart.ATTENTION]))

    def _facts(self, state: StepState, ring: PulseRing, run: str, rank: int) -> SampleFacts:
        records, layers, table = self.tracer.records, self.layers, state.table
        assert records is not None and table is not None, "a sampled step's own"
        has_activation, saturates = records.saturating_activations(len(layers))
        return SampleFacts(
            run=run, rank=rank, step=state.step, time=time.time(),
            layers=tuple(layers.ordered_names()), depth_order=tuple(layers.depth_order),
            has_grad=self.watched.layer_mask(table.has_grad),
            updated=self.watched.layer_mask(table.updated),
            has_activation=has_activation, saturates=saturates,
            record_modules=records.modules(), pulses=ring.take_pulses(),
            overhead_seconds=self.stopwatch.seconds)
