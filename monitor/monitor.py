"""Monitor: the framework-agnostic core that turns a training loop into Pulses and Snapshots.

Cost discipline (the product's edge):
- every step (always on): the global gradient norm (one fused ``torch._foreach_norm``) and the
  loss are written into a small device ring buffer; no host sync;
- sampled steps (every ``every_n_steps``, plus escalations): forward hooks are attached for
  that step only, per-layer statistics are computed on the device, concatenated into ONE
  tensor with the ring buffer, and copied to the host ONCE;
- on a CPU device the ring buffer is host memory already, so each step's Pulse is read at
  the end of that step at no cost; on an accelerator the Pulses reach the host with the next
  sampled step's single transfer, so nothing is ever missed and nothing waits.

Memory: the ring buffer (``every_n_steps + 1`` rows of 4 floats); on sampled steps only, a
transient copy of the parameters the optimizers update (to measure ||delta W||), freed right
after the optimizer step, plus per-parameter scalars. Nothing proportional to the model is
kept between steps.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from . import probes
from .export import ExportWorker, Sink
from .layers import ACTIVATION_MODULES, SATURATION_NONE, LayerIndex, saturation_kind
from .snapshot import NONFINITE_SOURCES, Pulse, Snapshot
from .thresholds import Thresholds

# Columns of the per-step device ring buffer.
_LOSS, _GRAD_SQ, _CLIP_SQ, _SCALE = range(4)
_RING_COLUMNS = 4
_F = len(probes.ACTIVATION_FIELDS)


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


@dataclass(frozen=True)
class _Row:
    """Host-side facts of one ring row (the device holds its values)."""

    step: int
    time: float
    stepped: bool
    learning_rates: tuple[tuple[float, ...], ...]
    measured: tuple[bool, bool, bool, bool]  # which ring columns hold a measured value


@dataclass
class _Step:
    """State of the step in progress."""

    step: int
    row: int
    sampled: bool
    loss_seen: bool = False
    grads_seen: bool = False
    weights_seen: bool = False
    stepped: bool = False
    observed: set[int] = field(default_factory=set)
    # sampled steps only
    trace: list[_Traced] = field(default_factory=list)
    records: list[torch.Tensor] = field(default_factory=list)
    record_meta: list[tuple[int, int]] = field(default_factory=list)  # (traced slot, layer)
    layers_called: list[int] = field(default_factory=list)
    last_layer: int = -1
    grad_sq: torch.Tensor | None = None
    grad_nonfinite: torch.Tensor | None = None
    weight_sq: torch.Tensor | None = None
    weight_nonfinite: torch.Tensor | None = None
    has_grad: set[int] = field(default_factory=set)
    before: dict[int, tuple[list[int], list[torch.Tensor]]] = field(default_factory=dict)
    delta_sq: torch.Tensor | None = None
    before_sq: torch.Tensor | None = None
    updated: set[int] = field(default_factory=set)


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
        model: the module to watch.
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
    ) -> None:
        check_int("every_n_steps", every_n_steps, low=1)
        check_int("rank", rank, low=0)
        check_int("world_size", world_size, low=1)
        check_int("max_queue", max_queue, low=1)
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(run_name, str) or not run_name:
            raise ValueError(f"run_name must be a non-empty string, got {run_name!r}")
        self.model = model
        self.run_name = run_name
        self.every_n_steps = every_n_steps
        self.rank = rank
        self.world_size = world_size
        self.thresholds = thresholds or Thresholds()
        self.track_clipping = track_clipping
        self.update_ratio = update_ratio
        self.grad_scaler = grad_scaler
        self.layers = LayerIndex.from_model(model)
        self.overhead_seconds = 0.0
        self.last_snapshot: Snapshot | None = None
        self.exporter = ExportWorker(list(sinks), max_queue=max_queue)
        self.observers = list(observers)
        self._layer_params = self._params_per_layer()
        self._traced = self._traceable_modules(all_modules=False)
        self._traced_all: list[_Traced] | None = None
        self._optimizers: list[torch.optim.Optimizer] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._step_handles: list[torch.utils.hooks.RemovableHandle] = []
        self._present_index: dict[tuple[int, ...], torch.Tensor] = {}
        self._ring: torch.Tensor | None = None
        self._ring_rows: tuple[torch.Tensor, ...] = ()
        self._ring_cells: list[tuple[torch.Tensor, ...]] = []
        self._rows: list[_Row] = []
        self._rows_read = 0
        self._pulses: list[Pulse] = []
        self._last_sampled: int | None = None
        self._escalated_steps = 0
        self._trace_all_next = False
        self._forward_order_known = False
        self._current: _Step | None = None
        self._closed = False
        for optimizer in optimizers:
            self.watch_optimizer(optimizer)

    # ------------------------------------------------------------------ public API

    def watch_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Watch an optimizer's steps (update ratios, skipped steps, post-clip norm)."""
        if any(optimizer is o for o in self._optimizers):
            return
        self._optimizers.append(optimizer)
        self._handles.append(optimizer.register_step_pre_hook(self._before_optimizer_step))
        self._handles.append(optimizer.register_step_post_hook(self._after_optimizer_step))

    def escalate(self, steps: int, trace_all_modules: bool = True) -> None:
        """Sample the next ``steps`` steps fully (e.g. after a NaN on an unsampled step).

        With ``trace_all_modules``, every module's output is checked, not only the layers',
        to find the first module that produced a non-finite value.
        """
        self._escalated_steps = max(self._escalated_steps, steps)
        self._trace_all_next = self._trace_all_next or trace_all_modules

    def publish(self, method: str, item: object) -> None:
        """Hand ``item`` to every sink that has ``method`` (e.g. "on_alert"), off-thread."""
        self.exporter.submit(method, item)

    def is_sampled(self, step: int) -> bool:
        """Whether ``step`` gets the full per-layer statistics."""
        if self._escalated_steps > 0 or self._last_sampled is None:
            return True
        return step - self._last_sampled >= self.every_n_steps or step < self._last_sampled

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
        ring = self._ensure_ring()
        row = len(self._rows)
        sampled = self.is_sampled(step) or row + 1 >= ring.shape[0]
        self._ring_rows[row].zero_()
        self._current = _Step(step=step, row=row, sampled=sampled)
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
        positions, grads = self._unseen_gradients(optimizer, state)
        if not grads:
            return
        grad_norms = probes.norms(grads)
        # the sum of squares as one dot product: fewest ops on the every-step path
        self._ring_cells[state.row][_GRAD_SQ].add_(
            grad_norms.dot(grad_norms).to(self._ring.device))
        state.grads_seen = True
        if not state.sampled:
            return
        squares = grad_norms.square()
        index = self._index_of(positions)
        state.grad_sq.index_copy_(0, index, squares)
        state.grad_nonfinite.index_copy_(0, index, probes.nonfinite_counts(grads))
        state.has_grad.update(positions)

    def _measure_weights(self, state: _Step) -> None:
        """Norms and non-finite counts of every parameter, once per sampled step."""
        params = [p.detach() for p in self.layers.params]
        if params:
            state.weight_sq = probes.norms(params).square()
            state.weight_nonfinite = probes.nonfinite_counts(params)
        state.weights_seen = True

    @_timed
    def end_step(self) -> None:
        """Finish the step in progress: read what is due and hand it to the sinks."""
        if self._current is not None:
            self._end_step()

    def close(self, timeout: float = 10.0) -> None:
        """Finish the step in progress, deliver what is queued (bounded wait), stop threads."""
        if self._closed:
            return
        self.end_step()
        self._drain_rows()
        self._closed = True
        for handle in self._handles + self._step_handles:
            handle.remove()
        self.exporter.close(timeout)

    # ------------------------------------------------------------------ step internals

    def _end_step(self) -> None:
        state = self._current
        assert state is not None
        ring = self._ring
        cells = self._ring_cells[state.row]
        cells[_GRAD_SQ].sqrt_()
        scale = getattr(self.grad_scaler, "_scale", None)  # a tensor: reading it needs no sync
        has_scale = isinstance(scale, torch.Tensor)
        if has_scale:
            cells[_SCALE].copy_(scale.reshape(-1)[0], non_blocking=True)
        self._rows.append(_Row(
            step=state.step,
            time=time.time(),
            stepped=state.stepped or (not self._optimizers and state.grads_seen),
            learning_rates=self._learning_rates(),
            measured=(state.loss_seen, state.grads_seen, self.track_clipping, has_scale),
        ))
        if state.sampled:
            self._finish_sample(state)
        elif ring.device.type == "cpu":
            self._drain_rows()
        self._current = None

    def _ensure_ring(self) -> torch.Tensor:
        device = self._device()
        if self._ring is None or self._ring.device != device:
            if self._ring is not None:
                self._drain_rows()
            self._ring = torch.zeros(self.every_n_steps + 1, _RING_COLUMNS, device=device)
            # views made once: indexing the ring costs an op per access, every step
            self._ring_rows = self._ring.unbind(0)
            self._ring_cells = [row.unbind(0) for row in self._ring_rows]
            self._rows, self._rows_read = [], 0
        elif len(self._rows) >= self._ring.shape[0]:  # only after an unusual step pattern
            self._drain_rows()
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
            loss, grad_norm, clipped, scale = (
                float(v) if seen else None for v, seen in zip(values, row.measured))
            pulse = Pulse(
                step=row.step,
                time=row.time,
                loss=loss,
                global_grad_norm=grad_norm,
                clipped_grad_norm=None if clipped is None else math.sqrt(clipped),
                loss_scale=scale,
                optimizer_stepped=row.stepped,
                learning_rates=row.learning_rates,
            )
            self._pulses.append(pulse)
            self.exporter.submit("on_pulse", pulse)
            for observer in self.observers:
                observer.on_pulse(pulse, self)
        self._rows_read += len(host_rows)
        if self._current is None or self._current.row < self._rows_read:
            self._rows, self._rows_read = [], 0

    def _learning_rates(self) -> tuple[tuple[float, ...], ...]:
        return tuple(tuple(_host_float(g.get("lr", math.nan)) for g in o.param_groups)
                     for o in self._optimizers)

    # ------------------------------------------------------------------ sampled steps

    def _prepare_sample(self) -> None:
        state = self._current
        n_params = len(self.layers.params)
        device = self._ring.device
        state.grad_sq = torch.zeros(n_params, device=device)
        state.weight_sq = torch.zeros(n_params, device=device)
        state.delta_sq = torch.zeros(n_params, device=device)
        state.before_sq = torch.zeros(n_params, device=device)
        state.grad_nonfinite = torch.zeros(n_params, 3, device=device)
        state.weight_nonfinite = torch.zeros(n_params, 3, device=device)
        traced = self._traced
        if self._trace_all_next:
            if self._traced_all is None:
                self._traced_all = self._traceable_modules(all_modules=True)
            traced = self._traced_all
        state.trace = traced
        self._step_handles = [
            t.module.register_forward_hook(functools.partial(self._on_forward, slot))
            for slot, t in enumerate(traced)
        ]
        self._step_handles.append(self.model.register_forward_pre_hook(self._on_model_forward))
        if self._escalated_steps > 0:
            self._escalated_steps -= 1
            if self._escalated_steps == 0:
                self._trace_all_next = False

    def _on_model_forward(self, module: nn.Module, args: object) -> None:
        if self._current is not None:
            self._current.last_layer = -1

    def _on_forward(self, slot: int, module: nn.Module, args: object, output: object) -> None:
        start = time.perf_counter()
        state = self._current
        if state is None or not state.sampled:
            return
        traced = state.trace[slot]
        if traced.layer >= 0:
            target = traced.layer
            state.layers_called.append(traced.layer)
            state.last_layer = traced.layer
        else:
            target = state.last_layer if traced.is_activation else -1
        tensors = probes.floating_tensors(output)
        if tensors:
            state.records.append(probes.activation_record(
                tensors, traced.saturation, self.thresholds.sigmoid_flat,
                self.thresholds.tanh_flat))
            state.record_meta.append((slot, target))
        self.overhead_seconds += time.perf_counter() - start

    def _before_optimizer_step(self, optimizer, args, kwargs) -> None:
        start = time.perf_counter()
        state = self._current
        if state is not None and state.sampled and self.update_ratio:
            positions = self._optimizer_positions(optimizer)
            params = [self.layers.params[i].detach() for i in positions]
            if params:
                state.before[id(optimizer)] = (positions, torch._foreach_mul(params, 1.0))
        self.overhead_seconds += time.perf_counter() - start

    def _after_optimizer_step(self, optimizer, args, kwargs) -> None:
        start = time.perf_counter()
        state = self._current
        if state is not None:
            state.stepped = True
            if self.track_clipping:
                grads = [p.grad for g in optimizer.param_groups for p in g["params"]
                         if p.grad is not None]
                if grads:
                    self._ring[state.row, _CLIP_SQ].add_(
                        probes.norms(grads).square().sum().to(self._ring.device))
            saved = state.before.pop(id(optimizer), None)
            if saved is not None:
                positions, before = saved
                index = self._index_of(positions)
                state.before_sq.index_copy_(0, index, probes.norms(before).square())
                torch._foreach_sub_(before, [self.layers.params[i].detach() for i in positions])
                state.delta_sq.index_copy_(0, index, probes.norms(before).square())
                state.updated.update(positions)
        self.overhead_seconds += time.perf_counter() - start

    def _finish_sample(self, state: _Step) -> None:
        if not state.weights_seen:
            self._measure_weights(state)
        for handle in self._step_handles:
            handle.remove()
        self._step_handles = []
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

        records = (torch.stack(state.records) if state.records
                   else torch.zeros(0, _F, device=device))
        own = [i for i, (slot, _) in enumerate(state.record_meta) if trace[slot].layer >= 0]
        act = [i for i, (slot, target) in enumerate(state.record_meta)
               if trace[slot].is_activation and target >= 0]
        own_stats = self._combine(records, state.record_meta, own, n_layers)
        act_stats = self._combine(records, state.record_meta, act, n_layers)
        record_nonfinite = records[:, 7:].sum(dim=1)
        pieces = [
            self._ring[self._rows_read:len(self._rows)].reshape(-1),
            by_layer(state.grad_sq).sqrt(),
            by_layer(state.weight_sq).sqrt(),
            by_layer(state.delta_sq).sqrt(),
            by_layer(state.before_sq).sqrt(),
            by_layer(state.grad_nonfinite).reshape(-1),
            by_layer(state.weight_nonfinite).reshape(-1),
            own_stats.reshape(-1),
            act_stats.reshape(-1),
            record_nonfinite,
        ]
        sizes = [p.numel() for p in pieces]
        host = _host(torch.cat(pieces))  # the ONE device-to-host transfer of the step
        parts = np.split(host, np.cumsum(sizes)[:-1])
        self._drain_rows(parts[0].reshape(-1, _RING_COLUMNS))
        snapshot = self._build_snapshot(state, parts[1:], trace)
        self._pulses = []
        self._last_sampled = state.step
        self.last_snapshot = snapshot
        self.exporter.submit("on_snapshot", snapshot)
        for observer in self.observers:
            observer.on_snapshot(snapshot, self)

    @staticmethod
    def _combine(records: torch.Tensor, meta: list[tuple[int, int]], chosen: list[int],
                 n_layers: int) -> torch.Tensor:
        if not chosen:
            return torch.full((n_layers, _F), math.nan, device=records.device)
        index = torch.tensor(chosen, device=records.device)
        groups = torch.tensor([meta[i][1] for i in chosen], device=records.device)
        return probes.combine_records(records.index_select(0, index), groups, n_layers)

    def _build_snapshot(self, state: _Step, parts: list[np.ndarray], trace: list[_Traced]):
        n = len(self.layers)
        (grad, weight, delta, before, grad_nf, weight_nf, own, act, record_nf) = parts
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
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(self._layer_mask(state.updated), delta / before, np.nan)
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
            if layer >= 0 or is_activation or all_modules:
                traced.append(_Traced(name or type(module).__name__, module, layer,
                                      saturation_kind(module), is_activation))
        return traced

    def _optimizer_positions(self, optimizer: torch.optim.Optimizer) -> list[int]:
        position = self.layers.param_position
        return [position[id(p)] for g in optimizer.param_groups for p in g["params"]
                if id(p) in position and p.requires_grad]

    def _unseen_gradients(self, optimizer, state: _Step) -> tuple[list[int], list[torch.Tensor]]:
        if optimizer is None:
            candidates = range(len(self.layers.params))
        else:
            candidates = self._optimizer_positions(optimizer)
        positions, grads = [], []
        for i in candidates:
            grad = self.layers.params[i].grad
            if grad is not None and i not in state.observed:
                positions.append(i)
                grads.append(grad)
        state.observed.update(positions)
        return positions, grads

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


def check_int(name: str, value: object, *, low: int, high: int | None = None) -> None:
    """Raise ValueError naming ``name`` unless ``value`` is an int in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")
