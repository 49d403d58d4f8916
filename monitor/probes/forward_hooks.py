"""The forward hooks of a sampled step: one activation record per module output.

On sampled steps only, a forward hook on every layer (and on the parameter-free activation
module after it, or on every module when a non-finite value is hunted) makes an activation
record (ActivationField) of each floating-point output on the device. The records of a
layer's own outputs and of the activations after them are combined per layer when the step
ends. The first forward with hooks also learns the depth order of the layers, including
where the own parameters of container modules, and of modules never called, are first used
(``FirstUse``).
"""

from __future__ import annotations

import functools
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from ..records.columns import ACTIVATION_FIELD_COUNT, ACTIVATION_NONFINITE
from ..records.thresholds import Thresholds
from . import tensor_stats
from .layers import (
    RECURRENT_MODULES,
    SATURATION_NONE,
    LayerIndex,
    has_compiled_code,
    is_activation,
    is_compile_wrapper,
    recomputing,
    saturation_kind,
    uncompiled_name,
)
from .overhead import Stopwatch
from .record_batches import SAMPLE_VALUES, RecordBatches


@dataclass
class Traced:
    """A module whose output is traced on sampled steps."""

    name: str
    module: nn.Module
    layer: int  # its layer position, or -1 for a parameter-free module
    saturation: int
    is_activation: bool
    recurrent: bool = False  # its output is (activation, states): see RECURRENT_MODULES


def traceable_modules(model: nn.Module, layers: LayerIndex, all_modules: bool) -> list[Traced]:
    """The layers and the activation modules after them (with ``all_modules``: every
    module), in ``model.named_modules()`` order."""
    layer_of = {id(m): i for i, m in enumerate(layers.modules)}
    traced = []
    for name, module in model.named_modules():
        layer = layer_of.get(id(module), -1)
        activation = layer < 0 and is_activation(module)
        if (layer >= 0 or activation or all_modules) and not is_compile_wrapper(module):
            traced.append(Traced(uncompiled_name(name) or type(module).__name__, module,
                                 layer, saturation_kind(module), activation,
                                 recurrent=isinstance(module, RECURRENT_MODULES)))
    return traced


class FirstUse(TorchFunctionMode):
    """Notes, during one forward pass, where parameters are first used: that is the depth of
    a module that also has children (its forward hook only runs after all its children, e.g.
    for a scale held by the LightningModule and applied first) and of one whose weights are
    used without calling it (``nn.MultiheadAttention``'s ``out_proj``, inside
    ``F.multi_head_attention_forward``). A called module's own weights are first used just
    before its hook runs: the same place."""

    def __init__(self, layer_of_param: dict[int, int], layers_called: list[int]) -> None:
        super().__init__()
        self.pending = dict(layer_of_param)
        self.layers_called = layers_called

    def __torch_function__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if self.pending:
            for leaf in tree_leaves((args, kwargs)):
                layer = self.pending.pop(id(leaf), None)
                if layer is not None:
                    self.layers_called.append(layer)
        return func(*args, **kwargs)


def first_use_params(layers: LayerIndex) -> dict[int, int]:
    """The parameters whose first use places their layer (``FirstUse``): those of container
    modules, and every parameter owned by one layer alone (a tied weight is placed by the
    modules calling it, not by its first use in one of them)."""
    owners = Counter(id(p) for m in layers.modules for p in m._parameters.values()
                     if p is not None)
    return {id(p): layer for layer, module in enumerate(layers.modules)
            for p in module._parameters.values()
            if p is not None and (next(module.children(), None) is not None
                                  or owners[id(p)] == 1)}


class RecordSource(NamedTuple):
    """Where an activation record comes from."""

    slot: int  # the traced module's position in the trace
    layer: int  # the layer it is attributed to, or -1


@dataclass
class Records:
    """The activation records of one sampled step, in forward call order."""

    trace: list[Traced]
    raw: list[torch.Tensor | None] = field(default_factory=list)  # one per output tensor
    counts: list[int] = field(default_factory=list)
    sources: list[RecordSource] = field(default_factory=list)
    layers_called: list[int] = field(default_factory=list)
    last_layer: int = -1

    def own(self) -> list[int]:
        """Records of the layers' own outputs."""
        return [i for i, source in enumerate(self.sources) if self.trace[source.slot].layer >= 0]

    def activations(self) -> list[int]:
        """Records of activation modules, attributed to the layer before them."""
        return [i for i, source in enumerate(self.sources)
                if self.trace[source.slot].is_activation and source.layer >= 0]

    def modules(self) -> tuple[str, ...]:
        """The traced module of each record."""
        return tuple(self.trace[source.slot].name for source in self.sources)

    def saturating_activations(self, n_layers: int) -> tuple[np.ndarray, np.ndarray]:
        """Per layer: has an activation after it; and that one saturates."""
        has_activation = np.zeros(n_layers, dtype=bool)
        saturates = np.zeros(n_layers, dtype=bool)
        for i in self.activations():
            source = self.sources[i]
            has_activation[source.layer] = True
            saturates[source.layer] = self.trace[source.slot].saturation != SATURATION_NONE
        return has_activation, saturates


class ForwardTracer:
    """Forward hooks attached for sampled steps only, and the records they make.

    Args:
        model: the watched module.
        thresholds: the saturation tests.
        stopwatch: where the hooks' own time is counted.
        activation_sample: the bound of ``RecordBatches``' sampled records (None or 0: exact).
    """

    def __init__(self, model: nn.Module, thresholds: Thresholds, stopwatch: Stopwatch,
                 activation_sample: int | None = SAMPLE_VALUES) -> None:
        self.model = model
        self.thresholds = thresholds
        self.stopwatch = stopwatch
        self.paused = False
        self.records: Records | None = None
        self.batches = RecordBatches(thresholds, activation_sample)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._first_use: FirstUse | None = None
        self._first_use_depth = 0  # modules running inside the FirstUse mode
        self._eager_stance: Any = None  # torch.compiler's stance context

    def index(self, layers: LayerIndex) -> None:
        """What to trace in ``layers`` (again each time the layers are indexed)."""
        self.layers = layers
        self.traced = traceable_modules(self.model, layers, all_modules=False)
        self._traced_all: list[Traced] | None = None
        self._first_use_params = first_use_params(layers)
        self._forward_order_known = False
        self._compiled = has_compiled_code(self.model)

    def attach(self, trace_all: bool, handles: list[torch.utils.hooks.RemovableHandle]) -> None:
        """Hooks on for one sampled step (and ``handles`` to remove with them)."""
        trace = self.traced
        if trace_all:
            if self._traced_all is None:
                self._traced_all = traceable_modules(self.model, self.layers, all_modules=True)
            trace = self._traced_all
        self.records = Records(trace)
        self.batches.clear()  # of a failed step
        if self._compiled and hasattr(torch.compiler, "set_stance"):  # torch >= 2.6
            # torch.compile does not guard on hooks: hooks traced into a graph would split
            # it and stay in it on the other steps. Sampled steps run eagerly instead.
            self._eager_stance = torch.compiler.set_stance("force_eager")
        self._handles = [t.module.register_forward_hook(functools.partial(self._on_forward, slot))
                         for slot, t in enumerate(trace)]
        self._handles.append(self.model.register_forward_pre_hook(self._on_model_forward))
        if not self._forward_order_known and self._first_use_params:
            # from the outermost module called (a LightningModule's training_step may call
            # its submodules, never its own forward) to its end
            for module in self.model.modules():
                self._handles.append(module.register_forward_pre_hook(self._enter_first_use))
                self._handles.append(module.register_forward_hook(self._leave_first_use,
                                                                  always_call=True))
        self._handles += handles

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._leave_first_use_mode()  # a failed forward's
        if self._eager_stance is not None:
            self._eager_stance.__exit__(None, None, None)  # the stance set before
            self._eager_stance = None

    def _on_model_forward(self, module: nn.Module, args: object) -> None:
        records = self.records
        if records is None or self.paused or recomputing():
            return
        records.last_layer = -1
        self.batches.flush(records.raw)  # a new forward: the last one's copies can go

    def _enter_first_use(self, module: nn.Module, args: object) -> None:
        records = self.records
        if self._first_use is None:
            if records is None or self.paused or recomputing():
                return
            self._first_use = FirstUse(self._first_use_params, records.layers_called)
            self._first_use.__enter__()  # type: ignore[no-untyped-call]  # torch's
        self._first_use_depth += 1

    def _leave_first_use(self, module: nn.Module, args: object, output: object) -> None:
        if self._first_use is not None:
            self._first_use_depth -= 1
            if not self._first_use_depth:
                self._leave_first_use_mode()

    def _leave_first_use_mode(self) -> None:
        if self._first_use is not None:
            self._first_use.__exit__(None, None, None)  # type: ignore[no-untyped-call]
            self._first_use, self._first_use_depth = None, 0

    def _on_forward(self, slot: int, module: nn.Module, args: object, output: object) -> None:
        start = time.perf_counter()
        records = self.records
        if records is None or self.paused or recomputing():
            return
        traced = records.trace[slot]
        if traced.layer >= 0:
            target = records.last_layer = traced.layer
            records.layers_called.append(traced.layer)
        else:
            target = records.last_layer if traced.is_activation else -1
        if traced.recurrent and isinstance(output, tuple):
            output = output[0]
        # the records' own ops bypass the torch-function modes active in the forward (the
        # attention probe's, FirstUse): ~10 us of Python each per op otherwise
        with torch._C.DisableTorchFunction():
            for tensor in tensor_stats.floating_tensors(output):
                self.batches.add(records.raw, tensor, traced.saturation)
                records.counts.append(tensor.numel())
                records.sources.append(RecordSource(slot, target))
        self.stopwatch.add_since(start)

    def learn_forward_order(self) -> None:
        """The first sampled step's call order is the layers' depth order."""
        records = self.records
        assert records is not None, "after attach()"
        if not self._forward_order_known and records.layers_called:
            self.layers.set_forward_order(records.layers_called)
            self._forward_order_known = True

    def finish(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-layer records [n_layers, ActivationField] of the layers' own outputs and of
        the activations after them, combined in ONE pass; and each record's count of
        non-finite values (to tell where the first one came from)."""
        records, n_layers = self.records, len(self.layers)
        assert records is not None, "after attach()"
        self.batches.flush(records.raw)
        if records.raw:
            filled = cast("list[torch.Tensor]", records.raw)  # flush() filled every slot
            completed = tensor_stats.complete_records(torch.stack(filled),
                                                torch.tensor(records.counts, device=device))
        else:
            completed = torch.zeros(0, ACTIVATION_FIELD_COUNT, device=device)
        nonfinite = completed[:, ACTIVATION_NONFINITE].sum(dim=1)
        own, act = records.own(), records.activations()
        if not own + act:
            empty = torch.full((n_layers, ACTIVATION_FIELD_COUNT), math.nan, device=device)
            return empty, empty, nonfinite
        groups = ([records.sources[i].layer for i in own]
                  + [n_layers + records.sources[i].layer for i in act])
        combined = tensor_stats.combine_records(
            completed.index_select(0, torch.tensor(own + act, device=device)),
            torch.tensor(groups, device=device), 2 * n_layers)
        return combined[:n_layers], combined[n_layers:], nonfinite
