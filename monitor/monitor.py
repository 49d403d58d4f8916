"""Monitor: the framework-agnostic core that turns a training loop into Pulses and Snapshots.

Cost discipline (the product's edge):
- every step (always on): the global gradient norm (one read of the gradients) and the loss
  are written into a small device ring buffer; no host sync;
- sampled steps (every ``every_n_steps``, plus escalations): forward hooks are attached for
  that step only, per-layer statistics are computed on the device, concatenated into ONE
  tensor with the ring buffer, and copied to the host ONCE;
- on a CPU device the ring buffer is host memory already: each step's loss and norm are
  looked at when the step ends, at no cost; a non-finite value or a norm above
  ``Thresholds.explosion_norm`` is turned into its Pulse (and judged by the observers) at
  once, quiet steps in batches of up to ``PULSE_BATCH`` (per-step Python work costs more
  than the monitoring ops of a small model's step). On an accelerator the Pulses reach the
  host with the next sampled step's single transfer, so nothing is ever missed and nothing
  waits.

Memory: the ring buffer (``every_n_steps + 1`` rows of 7 floats); on sampled steps only, a
transient copy of the parameters the optimizers update (to measure ||delta W||), freed right
after the optimizer step, plus per-parameter scalars. Nothing proportional to the model is
kept between steps.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn.parameter import is_lazy
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from . import distributed, probes, update_stats
from .attention import AttentionProbe
from .export import ExportWorker, Sink
from .layers import (ACTIVATION_MODULES, RECURRENT_MODULES, SATURATION_NONE, LayerIndex,
                     has_compiled_code, is_compile_wrapper, saturation_kind, uncompiled_name)
from .responses import SkipOnSpike
from .snapshot import NONFINITE_SOURCES, Pulse, Snapshot
from .thresholds import Thresholds
from .validation import check_int, check_text

log = logging.getLogger("gradwatch")

# Columns of the per-step device ring buffer: the loss, squared gradient norms of replicated
# and of sharded (FSDP2) parameters, the squared post-clip norm, the AMP scale, and the count
# of local gradient buckets that were non-finite before the DDP all-reduce; 1 where
# skip-on-spike undid the step's update.
_LOSS, _GRAD_SQ, _SHARDED_SQ, _CLIP_SQ, _SCALE, _LOCAL_NONFINITE, _SKIPPED = range(7)
_RING_COLUMNS = 7
# Rows of the per-parameter device table of a sampled step: squared norms of the gradient,
# the weight (before the optimizer step), the update and the weight of the updated
# parameters only, then non-finite counts.
_P_GRAD, _P_WEIGHT, _P_DELTA, _P_BEFORE = range(4)
_P_NORMS = slice(0, 4)
_P_GRAD_NF, _P_WEIGHT_NF = slice(4, 7), slice(7, 10)
_P_ROWS = 10
_F = len(probes.ACTIVATION_FIELDS)
#: Pulses go to the sinks in batches at most this many seconds apart (and with every
#: Snapshot): one wake-up of the export thread per step would cost more than the step's
#: own monitoring on a small model.
PULSE_EXPORT_SECONDS = 0.5
#: On a CPU, quiet steps' Pulses are read and judged in batches of this many steps.
PULSE_BATCH = 8


def _timed(method: Callable) -> Callable:
    """Adds the wall time of a hook body to the monitor's own overhead."""

    @functools.wraps(method)
    def wrapper(self: Monitor, *args, **kwargs):
        start = time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            self.overhead_seconds += time.perf_counter() - start

    return wrapper


@dataclass
class _Traced:
    """A module whose output is traced on sampled steps."""

    name: str
    module: nn.Module
    layer: int  # its layer position, or -1 for a parameter-free module
    saturation: int
    is_activation: bool
    recurrent: bool = False  # its output is (activation, states): see RECURRENT_MODULES


class _FirstUse(TorchFunctionMode):
    """Notes, during one forward pass, where the own parameters of modules that also have
    children are first used: that is their depth (a module's forward hook only runs after
    all its children, e.g. for a scale held by the LightningModule and applied first)."""

    def __init__(self, layer_of_param: dict[int, int], layers_called: list[int]) -> None:
        super().__init__()
        self.pending = dict(layer_of_param)
        self.layers_called = layers_called

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.pending:
            for leaf in tree_leaves((args, kwargs)):
                layer = self.pending.pop(id(leaf), None)
                if layer is not None:
                    self.layers_called.append(layer)
        return func(*args, **kwargs)


class _Row(NamedTuple):
    """Host-side facts of one ring row (the device holds its values)."""

    step: int
    time: float
    stepped: bool
    learning_rates: tuple[tuple[float, ...], ...]
    # measured: loss, gradients, clipped norm, scale, local check
    measured: tuple[bool, bool, bool, bool, bool]


@dataclass
class _Step:
    """State of the step in progress."""

    step: int
    row: int
    sampled: bool
    regular: bool
    learning_rates: tuple[tuple[float, ...], ...]  # read when the step starts: those it runs with
    loss_seen: bool = False
    grads_seen: bool = False
    weights_seen: bool = False
    lazy_seen: bool = False
    stepped: bool = False
    optimizers_hooked: bool = False  # else ``stepped`` is not observed
    observed: set[int] = field(default_factory=set)
    # sampled steps only
    trace: list[_Traced] = field(default_factory=list)
    records: list[torch.Tensor] = field(default_factory=list)  # raw, one per output tensor
    record_counts: list[int] = field(default_factory=list)
    record_meta: list[tuple[int, int]] = field(default_factory=list)  # (traced slot, layer)
    layers_called: list[int] = field(default_factory=list)
    last_layer: int = -1
    per_param: torch.Tensor | None = None  # [_P_ROWS, n_params]
    has_grad: set[int] = field(default_factory=set)
    before: dict[int, tuple[list[int], list[torch.Tensor]]] = field(default_factory=dict)
    updated: set[int] = field(default_factory=set)
    update_table: torch.Tensor | None = None  # [update_stats.ROWS, n_params]
    outlier: torch.Tensor | None = None  # skip-on-spike's device verdict on this step


class Monitor:
    """Per-layer training statistics for any PyTorch training loop.

    Plain PyTorch loop::

        monitor = Monitor(model, optimizers=[opt], sinks=[TensorBoardSink("runs/x")])
        for step, (x, y) in enumerate(loader):
            with monitor.step(step):
                loss = loss_fn(model(x), y)
                monitor.observe_loss(loss)
                loss.backward()
                monitor.observe_gradients()     # before clipping
                opt.step()
                opt.zero_grad()
        monitor.close()

    Args:
        model: the module to watch; its layers are indexed when the first step begins
            (layers added before that are watched) and again once lazy modules have run.
        run_name: the ``run`` label of everything exported.
        every_n_steps: full per-layer statistics every this many steps (step 0 included).
        sinks: where Pulses and Snapshots go (run on the export thread).
        observers: called on the training thread with each Pulse and Snapshot, as
            ``observer.on_pulse(pulse, monitor)`` / ``observer.on_snapshot(snapshot, monitor)``
            (detectors: they may call ``monitor.escalate`` or ``monitor.publish``); must be
            cheap and must not do I/O.
        optimizers: optimizers whose steps are watched (update ratios, AMP skips, clipping).
        grad_scaler: the AMP GradScaler, to export its scale and count skipped steps.
        track_clipping: also measure the post-clip global norm (read after the optimizer
            step, so the optimizer must not modify ``.grad`` in place).
        update_ratio: measure ||delta W|| / ||W|| on sampled steps (costs a transient copy of
            the updated parameters during the optimizer step of sampled steps).
        rank, world_size: exported as the ``rank`` label when world_size > 1.
        thresholds: the Thresholds (saturation tests come from there).
        max_queue: bound of the export queue (oldest dropped and counted when full).
        skip_on_spike: undo, on the device, the optimizer update of a step whose loss or
            global gradient norm is an outlier (a ``SkipOnSpike``); None (default): off.
            With several processes only the (all-reduced) gradient norm is judged, so every
            rank decides alike; with sharded (FSDP2) parameters it is turned off, with a
            warning.

    Raises:
        ValueError: an argument out of range, naming it.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        run_name: str = "run",
        every_n_steps: int = 50,
        sinks: Sequence[Sink] = (),
        observers: Sequence[object] = (),
        optimizers: Sequence[torch.optim.Optimizer] = (),
        grad_scaler: object | None = None,
        track_clipping: bool = False,
        update_ratio: bool = True,
        rank: int = 0,
        world_size: int = 1,
        thresholds: Thresholds | None = None,
        max_queue: int = 10_000,
        skip_on_spike: SkipOnSpike | None = None,
    ) -> None:
        check_int("every_n_steps", every_n_steps, low=1)
        check_int("rank", rank, low=0)
        check_int("world_size", world_size, low=1)
        check_int("max_queue", max_queue, low=1)
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_text("run_name", run_name, optional=False)
        self.model = model
        self.run_name = run_name
        self.every_n_steps = every_n_steps
        self.rank = rank
        self.world_size = world_size
        self.thresholds = thresholds or Thresholds()
        self.track_clipping = track_clipping
        self.update_ratio = update_ratio
        self.grad_scaler = grad_scaler
        if skip_on_spike is not None and not isinstance(skip_on_spike, SkipOnSpike):
            raise ValueError(f"skip_on_spike must be a monitor.SkipOnSpike or None, "
                             f"got {skip_on_spike!r}")
        self.skip_on_spike = skip_on_spike
        self.overhead_seconds = 0.0
        self.last_snapshot: Snapshot | None = None
        self.exporter = ExportWorker(list(sinks), max_queue=max_queue)
        self.observers = list(observers)
        self._local_check_installed = False
        self._index_model()
        self._indexed_for_training = False  # indexed again at the first step: see _index_model
        self._optimizers: list[torch.optim.Optimizer] = []
        self._optimizer_handles: list[torch.utils.hooks.RemovableHandle] = []
        self._optimizers_hooked = False
        self._step_handles: list[torch.utils.hooks.RemovableHandle] = []
        self._first_use: _FirstUse | None = None
        self._eager_stance: object | None = None
        self._ring: torch.Tensor | None = None
        self._ring_host: np.ndarray | None = None
        self._alarm_squared_norm = self.thresholds.explosion_norm ** 2  # NaN compares False
        self._ring_cells: list[tuple[torch.Tensor, ...]] = []
        self._rows: list[_Row] = []
        self._rows_read = 0
        self._pulses: list[Pulse] = []
        self._unexported: list[Pulse] = []
        self._exported_at = time.monotonic()
        self._last_window: int | None = None
        self._escalated_steps = 0
        self._trace_all_next = False
        self._tracing_paused = False
        self._current: _Step | None = None
        self._closed = False
        self._attention = AttentionProbe(model)
        for optimizer in optimizers:
            self.watch_optimizer(optimizer)

    def _index_model(self) -> None:
        """Index the model's layers and everything derived from them.

        Done at construction, again at the first step (a model may get its layers after the
        Monitor is built, e.g. in Lightning's ``configure_model``), and at the first step
        after lazy modules are materialised.
        """
        self.layers = LayerIndex.from_model(self.model)
        self._layer_params = self._params_per_layer()
        sharded = [distributed.is_sharded(p) for p in self.layers.params]
        self._sharded = torch.tensor(sharded, dtype=torch.bool)
        self._any_sharded = any(sharded)  # a host bool: testing the tensor would sync
        if self._sharded_world() and self.skip_on_spike is not None:
            log.warning("gradwatch: skip_on_spike is off: with sharded (FSDP2) parameters the "
                        "global gradient norm is only whole at regular samples, so ranks "
                        "could not decide alike")
            self.skip_on_spike = None
        self._traced = self._traceable_modules(all_modules=False)
        self._traced_all: list[_Traced] | None = None
        self._container_params = {
            id(p): layer for layer, module in enumerate(self.layers.modules)
            if next(module.children(), None) is not None
            for p in module._parameters.values() if p is not None}
        self._present_index: dict[tuple[int, ...], torch.Tensor] = {}
        self._optimizer_params: dict[int, tuple[tuple[int, ...], list[int], list]] = {}
        self._norm_options: dict[str, bool] = {}
        self._norm_key: tuple | None = None
        self._forward_order_known = False
        # positions of parameters with sparse gradients: of modules built for them, and
        # those seen on sampled steps
        position = self.layers.param_position
        self._sparse_grads = {position[id(p)] for m in self.layers.modules
                              if getattr(m, "sparse", False) is True
                              for p in m._parameters.values() if id(p) in position}
        self._compiled = has_compiled_code(self.model)

    def _index_if_changed(self) -> None:
        if self._indexed_for_training and not self.layers.materialised():
            return
        self._index_model()
        if not self._indexed_for_training:
            self._indexed_for_training = True
            params = self.layers.params
            if not params and not self.layers.lazy:
                log.warning("gradwatch: %s has no parameters: there is nothing to watch "
                            "but the loss", type(self.model).__name__)
            if any(type(p).__name__ == "FlatParameter" for p in params):
                log.warning("gradwatch: FSDP1 flat parameters found: per-layer figures would "
                            "be those of flattened local shards. Use FSDP2 (fully_shard) for "
                            "exact per-layer norms.")

    # ------------------------------------------------------------------ public API

    def watch_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Watch an optimizer's steps (update ratios, skipped steps, post-clip norm)."""
        if any(optimizer is o for o in self._optimizers):
            return
        self._optimizers.append(optimizer)
        if self._optimizers_hooked:
            self._hook_optimizer(optimizer)

    def _hook_optimizers(self, on: bool) -> None:
        """Attach the optimizers' step hooks for a step that needs them (sampled: update
        ratios; AMP: skipped steps; clipping: the post-clip norm), detach them otherwise:
        two Python calls per optimizer step saved on the other steps."""
        if on == self._optimizers_hooked:
            return
        self._optimizers_hooked = on
        if on:
            for optimizer in self._optimizers:
                self._hook_optimizer(optimizer)
        else:
            for handle in self._optimizer_handles:
                handle.remove()
            self._optimizer_handles = []

    def _hook_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        self._optimizer_handles += [
            optimizer.register_step_pre_hook(self._before_optimizer_step),
            optimizer.register_step_post_hook(self._after_optimizer_step)]

    def escalate(self, steps: int, trace_all_modules: bool = True) -> None:
        """Sample the next ``steps`` steps fully (e.g. after a NaN on an unsampled step).

        With ``trace_all_modules``, every module's output is checked, not only the layers',
        to find the first module that produced a non-finite value. Not with sharded (FSDP2)
        parameters, whose norms are only whole on regular samples.
        """
        if self._sharded_world():
            return
        self._escalated_steps = max(self._escalated_steps, steps)
        self._trace_all_next = self._trace_all_next or trace_all_modules

    def flush(self, timeout: float = 10.0) -> bool:
        """Hand every finished step's Pulse to the sinks and wait (bounded) until they have
        it; False on timeout. Between steps this reads the ring (a sync on an accelerator)."""
        if self._current is None:
            self._drain_rows()
        self._export_pulses()
        return self.exporter.flush(timeout)

    def pause_tracing(self, paused: bool) -> None:
        """Ignore (True) or count again (False) the forward passes of a sampled step: those
        in between are not the training's (e.g. a validation inside an accumulation window)."""
        self._tracing_paused = paused
        self._attention.paused = paused

    def publish(self, method: str, item: object) -> None:
        """Hand ``item`` to every sink that has ``method`` (e.g. "on_alert"), off-thread."""
        self.exporter.submit(method, item)

    def is_sampled(self, step: int) -> bool:
        """Whether ``step`` gets the full per-layer statistics."""
        return self._escalated_steps > 0 or self._is_regular(step)

    def _is_regular(self, step: int) -> bool:
        """The first step of each window of ``every_n_steps`` steps: the same steps on every
        rank, whatever escalations happened, so collectives there can never mismatch."""
        return step // self.every_n_steps != self._last_window

    @contextmanager
    def step(self, step: int) -> Iterator[None]:
        """Context manager around one optimizer step of a plain training loop."""
        self.begin_step(step)
        yield
        self.end_step()

    @_timed
    def begin_step(self, step: int) -> None:
        """Start step ``step`` (idempotent for the micro-batches of one step)."""
        if self._current is not None:
            if self._current.step == step:
                return
            self._end_step()
        self._index_if_changed()
        ring = self._ensure_ring()
        row = len(self._rows)
        sampled = self.is_sampled(step) or row + 1 >= ring.shape[0]
        hooked = (sampled or self.grad_scaler is not None or self.track_clipping
                  or self.skip_on_spike is not None)
        self._hook_optimizers(hooked)
        self._current = _Step(step=step, row=row, sampled=sampled, regular=self._is_regular(step),
                              learning_rates=self._learning_rates(), optimizers_hooked=hooked)
        if sampled:
            self._prepare_sample()

    @_timed
    def observe_loss(self, loss: torch.Tensor) -> None:
        """The loss about to be backpropagated (call once per backward)."""
        state = self._current
        if state is None or not isinstance(loss, torch.Tensor):
            return
        value = self._ring_cells[state.row][_LOSS]
        loss = loss.detach()
        if loss.dim():
            loss = loss.reshape(-1)[0]
        # copy_ and add_ cast the dtype themselves: no extra op on the every-step path
        if state.loss_seen:
            value.add_(loss)
        else:
            value.copy_(loss)
            state.loss_seen = True

    @_timed
    def observe_gradients(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Read the gradients (before clipping) of ``optimizer``'s params, or of all params."""
        state = self._current
        if state is None:
            return
        if state.sampled and not state.weights_seen:
            self._measure_weights(state)
        if self.layers.lazy and not state.lazy_seen:
            self._observe_materialised(state)
        positions, grads = self._unseen_gradients(optimizer, state)
        if not grads:
            return
        squares = probes.squared_norms(grads, **self._norm_options)
        cells = self._ring_cells[state.row]
        sharded = self._sharded_index(positions)
        if sharded is None:
            cells[_GRAD_SQ].add_(squares.sum())
        else:  # shards: their squares are summed across ranks at the next regular sample
            cells[_SHARDED_SQ].add_((squares * sharded).sum())
            cells[_GRAD_SQ].add_((squares * ~sharded).sum())
        state.grads_seen = True
        if not state.sampled:
            return
        index = self._index_of(positions)
        state.per_param[_P_GRAD].index_copy_(0, index, squares)
        if not probes.all_finite(squares):
            state.per_param[_P_GRAD_NF].index_copy_(1, index, probes.nonfinite_counts(grads).T)
        state.has_grad.update(positions)

    def _observe_materialised(self, state: _Step) -> None:
        """Gradients of lazy parameters materialised by this step's forward count in its
        global norm (their layers are indexed from the next step)."""
        state.lazy_seen = True
        grads = [p.grad for p in self.layers.lazy if p.grad is not None and not is_lazy(p)]
        if grads:
            float64 = any(g.dtype == torch.float64 for g in grads)
            self._ring_cells[state.row][_GRAD_SQ].add_(
                probes.squared_norms(grads, float64=float64).sum())
            state.grads_seen = True

    def _measure_weights(self, state: _Step) -> None:
        """Norms and non-finite counts of every parameter, once per sampled step."""
        params = [p.detach() for p in self.layers.params]
        if params:
            squares = probes.squared_norms(params, **self._norm_options)
            state.per_param[_P_WEIGHT] = squares
            if not probes.all_finite(squares):
                state.per_param[_P_WEIGHT_NF] = probes.nonfinite_counts(params).T
        state.weights_seen = True

    @_timed
    def end_step(self) -> None:
        """Finish the step in progress: read what is due and hand it to the sinks."""
        if self._current is not None:
            self._end_step()

    def close(self, timeout: float = 10.0, finish_step: bool = True) -> None:
        """Finish the step in progress (or, after a failure, drop it: it never ran to its
        end), deliver what is queued (bounded wait), stop threads."""
        if self._closed:
            return
        if finish_step:
            self.end_step()
        self._current = None
        self._drain_rows()
        self._export_pulses()
        self._closed = True
        self._remove_step_hooks()
        for handle in self._optimizer_handles:
            handle.remove()
        self._attention.detach()
        self.exporter.close(timeout)

    # ------------------------------------------------------------------ step internals

    def _end_step(self) -> None:
        state = self._current
        assert state is not None
        cells = self._ring_cells[state.row]
        scale = getattr(self.grad_scaler, "_scale", None)  # a tensor: reading it needs no sync
        has_scale = isinstance(scale, torch.Tensor)
        if has_scale:
            cells[_SCALE].copy_(scale.reshape(-1)[0], non_blocking=True)
        self._rows.append(_Row(
            step=state.step,
            time=time.time(),
            # unhooked (no AMP scaler): a step that saw gradients is taken to have stepped
            stepped=state.stepped if state.optimizers_hooked else state.grads_seen,
            learning_rates=state.learning_rates,
            measured=(state.loss_seen, state.grads_seen,
                      self.track_clipping and not self._any_sharded, has_scale,
                      self._local_check_installed),
        ))
        if state.sampled:
            self._finish_sample(state)
        elif self._ring_host is not None and not self._sharded_world() and (
                len(self._rows) - self._rows_read >= PULSE_BATCH or self._alarming(state.row)):
            self._drain_rows()  # sharded norms are only whole after the next gather
        self._current = None

    def _alarming(self, row: int) -> bool:
        """A ring row (on a CPU: host memory, free to read) that must be judged at once."""
        values = self._ring_host[row]
        return not (math.isfinite(values[_LOSS]) and
                    values[_GRAD_SQ] <= self._alarm_squared_norm and values[_SKIPPED] == 0)

    def _ensure_ring(self) -> torch.Tensor:
        device = self._device()
        if self._ring is None or self._ring.device != device:
            if self._ring is not None:
                self._drain_rows()
            self._ring = torch.zeros(self.every_n_steps + 1, _RING_COLUMNS, device=device,
                                     dtype=torch.float32)
            # on a CPU, the ring as host memory: looked at each step's end, at no cost
            self._ring_host = self._ring.numpy() if device.type == "cpu" else None
            # views made once: indexing the ring costs an op per access, every step
            self._ring_cells = [row.unbind(0) for row in self._ring.unbind(0)]
            self._rows, self._rows_read = [], 0
        elif len(self._rows) >= self._ring.shape[0]:  # only after an unusual step pattern
            self._drain_rows()
        params = self.layers.params
        dtype = params[0].dtype if params else None
        if self._norm_key != (device, dtype):  # first step, or model moved
            # gradients and update copies have their parameters' dtype and device
            self._norm_options = {
                "shards": self._any_sharded,
                "cpu_float32": all(p.device.type == "cpu" and p.dtype == torch.float32
                                   for p in params),
                "float64": any(p.dtype == torch.float64 for p in params)}
            self._norm_key = (device, dtype)
        return self._ring

    def _device(self) -> torch.device:
        return self.layers.params[0].device if self.layers.params else torch.device("cpu")

    def _drain_rows(self, host_rows: np.ndarray | None = None) -> None:
        """Turn the ring rows not yet read into Pulses; resets the ring when all are read."""
        if self._ring is None:
            return
        if host_rows is None:
            if self._rows_read == len(self._rows):
                return
            pending = self._ring[self._rows_read:len(self._rows)]
            # host memory already on a CPU device: a view, not a transfer
            host_rows = pending.numpy() if pending.device.type == "cpu" else _host(pending)
        for offset, values in enumerate(host_rows):
            row = self._rows[self._rows_read + offset]
            loss_seen, grads_seen, clip_seen, scale_seen, local_seen = row.measured
            pulse = Pulse(
                step=row.step,
                time=row.time,
                loss=float(values[_LOSS]) if loss_seen else None,
                global_grad_norm=(math.sqrt(values[_GRAD_SQ] + values[_SHARDED_SQ])
                                  if grads_seen else None),
                clipped_grad_norm=math.sqrt(values[_CLIP_SQ]) if clip_seen else None,
                loss_scale=float(values[_SCALE]) if scale_seen else None,
                optimizer_stepped=row.stepped,
                learning_rates=row.learning_rates,
                local_gradients_finite=bool(values[_LOCAL_NONFINITE] == 0) if local_seen else None,
                update_skipped=(bool(values[_SKIPPED])
                                if self.skip_on_spike is not None and row.stepped else None),
            )
            self._pulses.append(pulse)
            self._unexported.append(pulse)
            for observer in self.observers:
                observer.on_pulse(pulse, self)
        self._rows_read += len(host_rows)
        if self._current is None or self._current.row < self._rows_read:
            self._ring[:len(self._rows)].zero_()  # ONE op for all rows read; add_ needs 0s
            self._rows, self._rows_read = [], 0
        if time.monotonic() - self._exported_at >= PULSE_EXPORT_SECONDS:
            self._export_pulses()

    def _export_pulses(self) -> None:
        if self._unexported:
            self.exporter.submit_each("on_pulse", self._unexported)
            self._unexported = []
        self._exported_at = time.monotonic()

    def _learning_rates(self) -> tuple[tuple[float, ...], ...]:
        return tuple(tuple(_host_float(g.get("lr", math.nan)) for g in o.param_groups)
                     for o in self._optimizers)

    # ------------------------------------------------------------------ sampled steps

    def _prepare_sample(self) -> None:
        state = self._current
        state.per_param = torch.zeros(_P_ROWS, len(self.layers.params), device=self._ring.device,
                                      dtype=torch.float32)
        state.update_table = update_stats.new_table(len(self.layers.params), self._ring.device)
        traced = self._traced
        if self._trace_all_next:
            if self._traced_all is None:
                self._traced_all = self._traceable_modules(all_modules=True)
            traced = self._traced_all
        state.trace = traced
        if self._compiled and hasattr(torch.compiler, "set_stance"):  # torch >= 2.6
            # torch.compile does not guard on hooks: hooks traced into a graph would split
            # it and stay in it on the other steps. Sampled steps run eagerly instead.
            self._eager_stance = torch.compiler.set_stance("force_eager")
        self._step_handles = [
            t.module.register_forward_hook(functools.partial(self._on_forward, slot))
            for slot, t in enumerate(traced)
        ]
        self._step_handles.append(self.model.register_forward_pre_hook(self._on_model_forward))
        if not self._forward_order_known and self._container_params:
            self._step_handles.append(self.model.register_forward_hook(
                self._after_model_forward, always_call=True))
        self._step_handles += self._attention.attach()
        if self._escalated_steps > 0:
            self._escalated_steps -= 1
            if self._escalated_steps == 0:
                self._trace_all_next = False

    def _remove_step_hooks(self) -> None:
        for handle in self._step_handles:
            handle.remove()
        self._step_handles = []
        if self._eager_stance is not None:
            self._eager_stance.__exit__(None, None, None)  # the stance set before
            self._eager_stance = None

    def _on_model_forward(self, module: nn.Module, args: object) -> None:
        state = self._current
        if state is None or self._tracing_paused:
            return
        state.last_layer = -1
        if not self._forward_order_known and self._container_params and self._first_use is None:
            self._first_use = _FirstUse(self._container_params, state.layers_called)
            self._first_use.__enter__()

    def _after_model_forward(self, module: nn.Module, args: object, output: object) -> None:
        if self._first_use is not None:
            self._first_use.__exit__(None, None, None)
            self._first_use = None

    def _on_forward(self, slot: int, module: nn.Module, args: object, output: object) -> None:
        start = time.perf_counter()
        state = self._current
        if state is None or not state.sampled or self._tracing_paused:
            return
        traced = state.trace[slot]
        if traced.layer >= 0:
            target = traced.layer
            state.layers_called.append(traced.layer)
            state.last_layer = traced.layer
        else:
            target = state.last_layer if traced.is_activation else -1
        if traced.recurrent and isinstance(output, tuple):
            output = output[0]
        for tensor in probes.floating_tensors(output):
            state.records.append(probes.raw_activation_record(
                tensor, traced.saturation, self.thresholds.sigmoid_flat,
                self.thresholds.tanh_flat))
            state.record_counts.append(tensor.numel())
            state.record_meta.append((slot, target))
        self.overhead_seconds += time.perf_counter() - start

    def _before_optimizer_step(self, optimizer, args, kwargs) -> None:
        start = time.perf_counter()
        state = self._current
        if state is not None and self.skip_on_spike is not None:
            self.skip_on_spike.save(optimizer)
        if state is not None and state.sampled and self.update_ratio:
            if not state.weights_seen:  # the update ratio's denominator: W before the step
                self._measure_weights(state)
            positions, watched = self._watched_params(optimizer)
            kept = [k for k, p in enumerate(watched) if p.requires_grad]
            positions = [positions[k] for k in kept]
            params = [watched[k].detach() for k in kept]
            if params:
                state.before[id(optimizer)] = (positions, torch._foreach_mul(params, 1.0))
        self.overhead_seconds += time.perf_counter() - start

    def _after_optimizer_step(self, optimizer, args, kwargs) -> None:
        start = time.perf_counter()
        state = self._current
        if state is not None:
            state.stepped = True
            if self.skip_on_spike is not None:
                self._skip_if_outlier(optimizer, state)
            if self.track_clipping:
                grads = [probes.sparse_values(p.grad) if p.grad.is_sparse else p.grad
                         for g in optimizer.param_groups for p in g["params"]
                         if p.grad is not None]
                if grads:
                    self._ring_cells[state.row][_CLIP_SQ].add_(
                        probes.squared_norms(grads, **self._norm_options).sum()
                        .to(self._ring.device))
            saved = state.before.pop(id(optimizer), None)
            if saved is not None:
                positions, before = saved
                index = self._index_of(positions)
                per_param = state.per_param
                per_param[_P_BEFORE].index_copy_(0, index, per_param[_P_WEIGHT][index])
                torch._foreach_sub_(before, [self.layers.params[i].detach() for i in positions])
                per_param[_P_DELTA].index_copy_(
                    0, index, probes.squared_norms(before, **self._norm_options))
                update_stats.record_update(state.update_table, optimizer, index,
                                           [self.layers.params[i] for i in positions], before)
                # a parameter without a gradient (unused in forward) is not stepped: its
                # update is "not measured", not 0 (read now: a closure makes the gradients)
                params = self.layers.params
                state.updated.update(i for i in positions if params[i].grad is not None)
        self.overhead_seconds += time.perf_counter() - start

    def _skip_if_outlier(self, optimizer, state: _Step) -> None:
        """Skip-on-spike: judged once per step, on the loss and gradients seen so far."""
        cells = self._ring_cells[state.row]
        if state.outlier is None:
            # every rank must decide alike: with several processes only the all-reduced
            # gradient norm is judged (each rank's loss is its own batch's)
            loss = cells[_LOSS] if self.world_size == 1 else torch.zeros_like(cells[_LOSS])
            state.outlier = self.skip_on_spike.decide(loss, cells[_GRAD_SQ] + cells[_SHARDED_SQ])
            cells[_SKIPPED].copy_(state.outlier)
        self.skip_on_spike.undo_if(optimizer, state.outlier)

    def _finish_sample(self, state: _Step) -> None:
        if not state.weights_seen:
            self._measure_weights(state)
        self._remove_step_hooks()
        state.before.clear()
        layers = self.layers
        n_layers = len(layers)
        if not self._forward_order_known and state.layers_called:
            layers.set_forward_order(state.layers_called)
            self._forward_order_known = True
        trace = state.trace
        pair_p, pair_l = self._pairs()
        device = self._ring.device

        def by_layer(values: torch.Tensor) -> torch.Tensor:
            return probes.per_layer_sum(values, pair_p, pair_l, n_layers)

        records = (probes.complete_records(torch.stack(state.records),
                                           torch.tensor(state.record_counts, device=device))
                   if state.records else torch.zeros(0, _F, device=device))
        own = [i for i, (slot, _) in enumerate(state.record_meta) if trace[slot].layer >= 0]
        act = [i for i, (slot, target) in enumerate(state.record_meta)
               if trace[slot].is_activation and target >= 0]
        own_stats, act_stats = self._combine(records, state.record_meta, own, act, n_layers)
        record_nonfinite = records[:, 7:].sum(dim=1)
        rows = self._ring[self._rows_read:len(self._rows)]
        per_param = state.per_param
        world: list[torch.Tensor] = []
        if state.regular and distributed.active_world(self.world_size):
            rows, per_param, world = self._gather(rows, per_param, own_stats, act_stats)
        pieces = [
            rows.reshape(-1),
            by_layer(per_param[_P_NORMS].T).sqrt().T.reshape(-1),
            by_layer(per_param[_P_GRAD_NF].T).reshape(-1),
            by_layer(per_param[_P_WEIGHT_NF].T).reshape(-1),
            own_stats.reshape(-1),
            act_stats.reshape(-1),
            record_nonfinite,
            *(w.reshape(-1) for w in world),
            update_stats.per_layer(state.update_table, by_layer).reshape(-1),
            self._attention.values(device),
        ]
        sizes = [p.numel() for p in pieces]
        host = _host(torch.cat(pieces))  # the ONE device-to-host transfer of the step
        ends = list(itertools.accumulate(sizes))
        parts = [host[end - size:end] for size, end in zip(sizes, ends)]
        self._drain_rows(parts[0].reshape(-1, _RING_COLUMNS))
        snapshot = dataclasses.replace(self._build_snapshot(state, parts[1:7], trace),
                                       **self._leading_indicators(state, parts[-2], parts[-1]))
        if world:
            world_parts = [*parts[1:4], parts[7], parts[8], parts[6]]
            snapshot = dataclasses.replace(
                snapshot, world=dataclasses.replace(
                    self._build_snapshot(state, world_parts, trace),
                    rank=-1, pulses=snapshot.pulses))
        self._pulses = []
        if state.regular:
            self._last_window = state.step // self.every_n_steps
        self.last_snapshot = snapshot
        self._export_pulses()  # the step's Pulses reach the sinks before its Snapshot
        self.exporter.submit("on_snapshot", snapshot)
        for observer in self.observers:
            observer.on_snapshot(snapshot, self)

    def _leading_indicators(self, state: _Step, updates: np.ndarray,
                            attention: np.ndarray) -> dict[str, object]:
        """Snapshot fields of the attention, output-logit and update statistics."""
        order = self.layers.depth_order
        updates = updates.reshape(-1, 2).copy()
        updates[~self._layer_mask(state.updated)] = math.nan
        return {"update_grad_cosine": updates[order, 0],
                "adam_eps_dominated_ratio": updates[order, 1],
                **self._attention.read(attention)}

    @staticmethod
    def _combine(records: torch.Tensor, meta: list[tuple[int, int]], own: list[int],
                 act: list[int], n_layers: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-layer records [n_layers, F] of the layers' own outputs (records ``own``) and
        of the activations after them (records ``act``), combined in ONE pass."""
        chosen = own + act
        groups = [meta[i][1] for i in own] + [n_layers + meta[i][1] for i in act]
        device = records.device
        if not chosen:
            empty = torch.full((n_layers, _F), math.nan, device=device)
            return empty, empty
        combined = probes.combine_records(
            records.index_select(0, torch.tensor(chosen, device=device)),
            torch.tensor(groups, device=device), 2 * n_layers)
        return combined[:n_layers], combined[n_layers:]

    def _build_snapshot(self, state: _Step, parts: list[np.ndarray], trace: list[_Traced]):
        n = len(self.layers)
        norms, grad_nf, weight_nf, own, act, record_nf = parts
        grad, weight, delta, before = norms.reshape(4, n)
        own, act = own.reshape(n, _F), act.reshape(n, _F)
        has_act = {target for slot, target in state.record_meta
                   if trace[slot].is_activation and target >= 0}
        sat_kind = {target: trace[slot].saturation for slot, target in state.record_meta
                    if trace[slot].is_activation and target >= 0}
        chosen = np.where(np.isin(np.arange(n), list(has_act))[:, None], act, own)
        count = chosen[:, 0]
        with np.errstate(divide="ignore", invalid="ignore"):
            variance = chosen[:, 2] / count
            dead = chosen[:, 5] / count
            saturation = chosen[:, 6] / count
        saturates = np.array([sat_kind.get(i, SATURATION_NONE) != SATURATION_NONE
                              for i in range(n)], dtype=bool)
        saturation = np.where(saturates, saturation, np.nan)
        activation_nf = own[:, 7:10]
        updated = self._layer_mask(state.updated)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(updated, delta / before, np.nan)
        order = self.layers.depth_order
        origin = ""
        for position, count_nf in enumerate(record_nf):
            if count_nf > 0:
                origin = trace[state.record_meta[position][0]].name
                break
        nonfinite = np.stack([
            grad_nf.reshape(n, 3),
            activation_nf,
            weight_nf.reshape(n, 3),
        ])
        assert nonfinite.shape[0] == len(NONFINITE_SOURCES)

        def ordered(values: np.ndarray) -> np.ndarray:
            return np.asarray(values, dtype=np.float64)[order] if n else np.zeros(0)

        return Snapshot(
            run=self.run_name,
            rank=self.rank,
            step=state.step,
            time=time.time(),
            layers=tuple(self.layers.ordered_names()),
            grad_norm=ordered(np.where(self._layer_mask(state.has_grad), grad, np.nan)),
            weight_norm=ordered(weight),
            update_ratio=ordered(ratio),
            update_norm=ordered(np.where(updated, delta, np.nan)),
            updated_weight_norm=ordered(np.where(updated, before, np.nan)),
            activation_mean=ordered(chosen[:, 1]),
            activation_variance=ordered(variance),
            activation_saturation_ratio=ordered(saturation),
            activation_dead_ratio=ordered(dead),
            activation_max_abs=ordered(np.maximum(np.abs(chosen[:, 3]), np.abs(chosen[:, 4]))),
            layer_output_max_abs=ordered(np.maximum(np.abs(own[:, 3]), np.abs(own[:, 4]))),
            nonfinite=np.nan_to_num(nonfinite[:, order] if n else nonfinite).astype(np.int64),
            nonfinite_origin=origin,
            pulses=tuple(self._pulses),
            overhead_seconds=self.overhead_seconds,
        )

    # ------------------------------------------------------------------ bookkeeping

    def _params_per_layer(self) -> list[list[int]]:
        owned: list[list[int]] = [[] for _ in self.layers.names]
        for p, layer in zip(self.layers.pair_param.tolist(), self.layers.pair_layer.tolist()):
            owned[layer].append(p)
        return owned

    def _layer_mask(self, positions: set[int]) -> np.ndarray:
        """Per layer (registration order): does it own any of ``positions``?"""
        return np.array([any(p in positions for p in params) for params in self._layer_params],
                        dtype=bool)

    def _pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        device = self._ring.device
        if self.layers.pair_param.device != device:
            self.layers.pair_param = self.layers.pair_param.to(device)
            self.layers.pair_layer = self.layers.pair_layer.to(device)
        return self.layers.pair_param, self.layers.pair_layer

    def _traceable_modules(self, all_modules: bool) -> list[_Traced]:
        layer_of = {id(m): i for i, m in enumerate(self.layers.modules)}
        traced = []
        for name, module in self.model.named_modules():
            layer = layer_of.get(id(module), -1)
            is_activation = layer < 0 and isinstance(module, ACTIVATION_MODULES)
            if (layer >= 0 or is_activation or all_modules) and not is_compile_wrapper(module):
                traced.append(_Traced(uncompiled_name(name) or type(module).__name__, module,
                                      layer, saturation_kind(module), is_activation,
                                      recurrent=isinstance(module, RECURRENT_MODULES)))
        return traced

    def _watched_params(self, optimizer: torch.optim.Optimizer | None) -> tuple[list[int], list]:
        """Positions and parameters watched through ``optimizer`` (all for None), cached:
        this runs every step; a change of the param groups' sizes renews it."""
        groups = () if optimizer is None else tuple(len(g["params"]) for g in
                                                    optimizer.param_groups)
        cached = self._optimizer_params.get(id(optimizer))
        if cached is None or cached[0] != groups:
            params = self.layers.params
            if optimizer is None:
                positions = list(range(len(params)))
            else:
                position = self.layers.param_position
                positions = [position[id(p)] for g in optimizer.param_groups for p in g["params"]
                             if id(p) in position]
            cached = (groups, positions, [params[i] for i in positions])
            self._optimizer_params[id(optimizer)] = cached
        return cached[1], cached[2]

    def _unseen_gradients(self, optimizer, state: _Step) -> tuple[list[int], list[torch.Tensor]]:
        positions, params = self._watched_params(optimizer)
        grads = [p.grad if p.requires_grad else None for p in params]  # frozen: stale grad
        if state.observed or any(g is None for g in grads):
            kept = [k for k, (i, g) in enumerate(zip(positions, grads))
                    if g is not None and i not in state.observed]
            positions, grads = [positions[k] for k in kept], [grads[k] for k in kept]
        state.observed.update(positions)
        if state.sampled:  # a parameter's gradient layout is that of its module: looked at here
            self._sparse_grads.difference_update(positions)
            self._sparse_grads.update(i for i, g in zip(positions, grads) if g.is_sparse)
        if self._sparse_grads:
            grads = [probes.sparse_values(g) if i in self._sparse_grads else g
                     for i, g in zip(positions, grads)]
        return positions, grads

    def _sharded_world(self) -> bool:
        return self._any_sharded and distributed.active_world(self.world_size)

    def _sharded_index(self, positions: list[int]) -> torch.Tensor | None:
        """Mask of the sharded ones among ``positions`` (None when nothing is sharded)."""
        if not self._any_sharded:
            return None
        return self._sharded.to(self._ring.device)[self._index_of(positions)]

    def _gather(self, rows: torch.Tensor, per_param: torch.Tensor, own: torch.Tensor,
                act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """ONE all-gather: whole sharded norms and the activations of every rank.

        Returns the ring rows and per-parameter table with shard sums completed, and the
        world's combined [own, act] activation records.
        """
        payload = torch.cat([rows.reshape(-1), per_param.reshape(-1), own.reshape(-1),
                             act.reshape(-1)])
        gathered = distributed.all_gather(payload)
        sizes = [rows.numel(), per_param.numel(), own.numel(), own.numel()]
        g_rows, g_param, g_own, g_act = torch.split(gathered, sizes, dim=1)
        world_size, n_layers = gathered.shape[0], own.shape[0]
        rows = rows.clone()
        rows[:, _SHARDED_SQ] = g_rows.reshape(world_size, *rows.shape)[:, :, _SHARDED_SQ].sum(0)
        sharded = self._sharded.to(per_param.device)
        per_param = torch.where(sharded, g_param.reshape(world_size, *per_param.shape).sum(0),
                                per_param)
        groups = torch.arange(n_layers, device=own.device).repeat(world_size)
        world = [probes.combine_records(g.reshape(world_size * n_layers, -1), groups, n_layers)
                 for g in (g_own, g_act)]
        return rows, per_param, world

    def ddp_comm_hook(self):
        """A DDP communication hook (``ddp_model.register_comm_hook(None, hook)``) that
        notes, per step, whether THIS rank's gradients were non-finite before the all-reduce:
        the Pulses of the rank a NaN came from say ``local_gradients_finite=False``."""
        self._local_check_installed = True

        def current_flag() -> torch.Tensor | None:
            state = self._current
            return None if state is None else self._ring_cells[state.row][_LOCAL_NONFINITE]

        return distributed.nonfinite_check_hook(current_flag)

    def _index_of(self, positions: list[int]) -> torch.Tensor:
        key = tuple(positions)
        index = self._present_index.get(key)
        if index is None or index.device != self._ring.device:
            index = torch.tensor(positions, dtype=torch.long, device=self._ring.device)
            self._present_index[key] = index
        return index


def _host_float(value: object) -> float:
    """A learning rate as a float; NaN for a tensor on an accelerator (reading it would sync)."""
    if isinstance(value, torch.Tensor) and value.device.type != "cpu":
        return math.nan
    return float(value)


def _host(tensor: torch.Tensor) -> np.ndarray:
    """Copy a device tensor to host memory (a sync on an accelerator) as float64 numpy."""
    return tensor.detach().to("cpu", copy=True).numpy().astype(np.float64)
