"""Monitor: the framework-agnostic core that turns a training loop into Pulses and Snapshots.

It runs the flow of each step; the parts are modules of their own. Every step (always on):
the loss and the gradient norms go into its row of a small device ring (``steps``,
``ring``); no host sync. Sampled steps (every ``every_n_steps``, plus escalations): forward
hooks for that step only, the per-parameter table, then ONE device-to-host copy and a
Snapshot (``sample``). Memory: the ring (``every_n_steps + 1`` rows, at most 1024); on sampled steps
only, a transient copy of the parameters the optimizers update, freed right after the
optimizer step. Nothing proportional to the model is kept between steps.
"""

from __future__ import annotations

import functools
import time
from typing import Protocol, runtime_checkable
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from ..probes import collectives
from ..probes.layers import LayerIndex
from ..probes.overhead import Stopwatch, timed
from ..probes.param_table import ParamTable
from ..probes.record_batches import SAMPLE_VALUES
from ..probes.watched import WatchedParams, warn_if_unwatchable, warn_skip_off_for_shards
from ..records.columns import RingColumn
from ..records.snapshot import Pulse, Snapshot
from ..records.thresholds import Thresholds
from ..records.validation import (
    check_activation_sample,
    check_instance,
    check_int,
    check_text,
)
from ..sinks.export_thread import ExportWorker, Sink
from . import clip_by_norm
from .optimizer_hooks import OptimizerHooks
from .ring import MAX_RING_ROWS, PulseRing
from .sample_schedule import SampleSchedule
from .sampled_step import Sampler
from .skip_on_spike import SkipOnSpike
from .steps import StepState, learning_rates



@runtime_checkable
class Observer(Protocol):
    """Sees every Pulse and Snapshot on the training thread, with the Monitor (an observer
    may call ``monitor.escalate`` or ``monitor.publish``): cheap, and no I/O."""

    def on_pulse(self, pulse: Pulse, monitor: Monitor) -> None: ...

    def on_snapshot(self, snapshot: Snapshot, monitor: Monitor) -> None: ...


def _check_arguments(model: nn.Module, run_name: str, skip_on_spike: SkipOnSpike | None,
                     **counts: int) -> None:
    """Raises ValueError (TypeError for the model) naming the argument out of range."""
    for name, low in (("every_n_steps", 1), ("rank", 0), ("world_size", 1), ("max_queue", 1)):
        check_int(name, counts[name], low=low)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_text("run_name", run_name, optional=False)
    if skip_on_spike is not None and not isinstance(skip_on_spike, SkipOnSpike):
        raise ValueError(f"skip_on_spike must be a monitor.SkipOnSpike or None, "
                         f"got {skip_on_spike!r}")


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
        activation_sample: outputs above this many values (default 2**16) get their
            activation mean, variance, saturation and dead ratios estimated from random whole
            rows (vectors along the last dim) of about this many values, drawn by a seeded
            generator of the monitor's own (the global RNG is untouched); their max |x| and
            NaN/Inf counts stay exact. None or 0: every output exact (reads each output ~8
            times).

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
        observers: Sequence[Observer] = (),
        optimizers: Sequence[torch.optim.Optimizer] = (),
        grad_scaler: object | None = None,
        track_clipping: bool = False,
        update_ratio: bool = True,
        rank: int = 0,
        world_size: int = 1,
        thresholds: Thresholds | None = None,
        max_queue: int = 10_000,
        skip_on_spike: SkipOnSpike | None = None,
        activation_sample: int | None = SAMPLE_VALUES,
    ) -> None:
        _check_arguments(model, run_name, skip_on_spike, every_n_steps=every_n_steps, rank=rank,
                         world_size=world_size, max_queue=max_queue)
        check_activation_sample("activation_sample", activation_sample)
        self.model, self.run_name, self.every_n_steps = model, run_name, every_n_steps
        self.rank, self.world_size = rank, world_size
        self.thresholds = thresholds or Thresholds()
        self.track_clipping, self.update_ratio = track_clipping, update_ratio
        self.grad_scaler, self.skip_on_spike = grad_scaler, skip_on_spike
        self.stopwatch = Stopwatch()
        self.last_snapshot: Snapshot | None = None
        self.exporter = ExportWorker(list(sinks), max_queue=max_queue)
        for position, observer in enumerate(observers):  # on_pulse and on_snapshot, both
            check_instance(f"observers[{position}]", observer, kind=Observer, optional=False)
        self.observers = list(observers)
        self._ring = PulseRing(self._tell_pulse,
                               functools.partial(self.exporter.submit_each, "on_pulse"),
                               alarm_norm=self.thresholds.explosion_norm)
        self._sampler = Sampler(model, self.thresholds, self.stopwatch, activation_sample)
        self._optimizers = OptimizerHooks(self._before_optimizer_step, self._after_optimizer_step,
                                          self.stopwatch)
        self._schedule = SampleSchedule(every_n_steps)
        self._local_check_installed = self._closed = False
        self._current: StepState | None = None
        self._index_model()
        self._indexed_for_training = False  # indexed again at the first step: see _index_model
        for optimizer in optimizers:
            self.watch_optimizer(optimizer)

    @property
    def overhead_seconds(self) -> float:
        """The monitor's cumulative own time on the training thread."""
        return self.stopwatch.seconds

    def _index_model(self) -> None:
        """Index the model's layers and what derives from them: at construction, at the first
        step (a model may get its layers later, e.g. in Lightning's ``configure_model``), and
        at the first step after lazy modules ran."""
        self.layers = LayerIndex.from_model(self.model)
        self._watched = WatchedParams(self.layers)
        self._sampler.index(self.layers, self._watched)
        if self._sharded_world() and self.skip_on_spike is not None:
            warn_skip_off_for_shards()
            self.skip_on_spike = None

    def watch_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Watch an optimizer's steps (update ratios, skipped steps, post-clip norm)."""
        self._optimizers.watch(optimizer)

    def escalate(self, steps: int, trace_all_modules: bool = True) -> None:
        """Sample the next ``steps`` steps fully (e.g. after a NaN on an unsampled step).

        With ``trace_all_modules``, every module's output is checked, not only the layers',
        to find the first module that produced a non-finite value. Not with sharded (FSDP2)
        parameters, whose norms are only whole on regular samples.
        """
        if not self._sharded_world():
            self._schedule.escalate(steps, trace_all_modules)

    def flush(self, timeout: float = 10.0) -> bool:
        """Hand every finished step's Pulse to the sinks and wait (bounded) until they have
        it; False on timeout. Between steps this reads the ring (a sync on an accelerator)."""
        if self._current is None:
            self._ring.drain()
        self._ring.export()
        return self.exporter.flush(timeout)

    def pause_tracing(self, paused: bool) -> None:
        """Ignore (True) or count again (False) the forward passes of a sampled step: those
        in between are not the training's (e.g. a validation inside an accumulation window)."""
        self._sampler.pause(paused)

    def publish(self, method: str, item: object) -> None:
        """Hand ``item`` to every sink that has ``method`` (e.g. "on_alert"), off-thread."""
        self.exporter.submit(method, item)

    def is_sampled(self, step: int) -> bool:
        """Whether ``step`` gets the full per-layer statistics."""
        return self._schedule.is_sampled(step)

    @contextmanager
    def step(self, step: int) -> Iterator[None]:
        """Context manager around one optimizer step of a plain training loop."""
        self.begin_step(step)
        yield
        self.end_step()

    @timed
    def begin_step(self, step: int) -> None:
        """Start step ``step`` (idempotent for the micro-batches of one step)."""
        if self._current is not None:
            if self._current.step == step:
                return
            self._end_step()
        if not self._indexed_for_training or self.layers.materialised():
            self._index_model()
            if not self._indexed_for_training:
                self._indexed_for_training = True
                warn_if_unwatchable(self.model, self.layers)
        window = self.every_n_steps + 1
        ring = self._ring.ensure(self._watched.settle(), min(window, MAX_RING_ROWS))
        row = len(self._ring.rows)
        # a ring that holds a whole window, once full, is read by a sampled step's transfer
        # (no copy of its own); a capped one is read on its own (PulseRing.ensure)
        sampled = self.is_sampled(step) or (row + 1 >= ring.shape[0] == window)
        hooked = (sampled or self.grad_scaler is not None or self.track_clipping
                  or self.skip_on_spike is not None)
        self._optimizers.switch(hooked)
        self._current = StepState(
            step=step, row=row, cells=self._ring.cells[row], sampled=sampled,
            regular=self._schedule.is_regular(step), learning_rates=learning_rates(
                self._optimizers.optimizers), optimizers_hooked=hooked,
            table=ParamTable(self._watched) if sampled else None)
        if sampled:
            self._sampler.start(trace_all=self._schedule.start())

    @timed
    def observe_loss(self, loss: torch.Tensor) -> None:
        """The loss about to be backpropagated (call once per backward)."""
        if self._current is not None and isinstance(loss, torch.Tensor):
            self._current.add_loss(loss)

    @timed
    def observe_gradients(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Read the gradients (before clipping) of ``optimizer``'s params, or of all params."""
        if self._current is not None:
            with torch.no_grad():  # gradients with a graph (create_graph=True): their values
                self._current.add_gradients(self._watched, optimizer)

    def clip_grad_norm_(self, parameters: Iterable[torch.Tensor] | torch.Tensor,
                        max_norm: float, optimizer: torch.optim.Optimizer | None = None,
                        norm_type: float = 2.0, error_if_nonfinite: bool = False,
                        foreach: bool | None = None) -> torch.Tensor:
        """``observe_gradients(optimizer)`` and ``torch.nn.utils.clip_grad_norm_`` in one:
        clips exactly as torch does (training is bit-identical) and returns its total norm.
        On steps that need only the global norm, the clip's own pass over the gradients is
        the monitor's read of them: the norms before and after clipping cost no pass of
        their own (``clipping``)."""
        start = time.perf_counter()
        parameters = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
        grads = clip_by_norm.fusable_gradients(self._current, self._watched, parameters, optimizer,
                                           norm_type)
        self.stopwatch.add_since(start)
        if grads is None or self._current is None:
            self.observe_gradients(optimizer)
            return torch.nn.utils.clip_grad_norm_(parameters, max_norm, norm_type,
                                                  error_if_nonfinite, foreach)
        return clip_by_norm.clip_noting_total(self._current, grads, parameters, max_norm,
                                          norm_type, error_if_nonfinite, foreach,
                                          self.stopwatch)

    @timed
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
        self._ring.drain()
        self._ring.export()
        self._closed = True
        self._sampler.close()
        self._optimizers.remove()
        self.exporter.close(timeout)

    def ddp_comm_hook(self) -> collectives.CommHook:
        """A DDP communication hook (``ddp_model.register_comm_hook(None, hook)``) that
        notes, per step, whether THIS rank's gradients were non-finite before the all-reduce:
        the Pulses of the rank a NaN came from say ``local_gradients_finite=False``."""
        self._local_check_installed = True
        return collectives.nonfinite_check_hook(lambda: None if self._current is None else
                                                self._current.cells[RingColumn.LOCAL_NONFINITE])

    def _end_step(self) -> None:
        state, ring = self._current, self._ring
        assert state is not None, "inside a step"
        ring.rows.append(state.ring_row(
            self.grad_scaler, clipped=self.track_clipping and not self._watched.any_sharded,
            local_check=self._local_check_installed, skip=self.skip_on_spike is not None))
        if state.sampled:
            self._finish_sample(state)
        elif ring.host is not None and not self._sharded_world() and (
                ring.batch_due() or ring.alarming(state.row)):
            ring.drain(in_progress=state.row)  # sharded norms are only whole after a gather
        self._current = None

    def _finish_sample(self, state: StepState) -> None:
        gather = state.regular and collectives.active_world(self.world_size)
        snapshot = self._sampler.finish(state, self._ring, gather, self.run_name, self.rank)
        self._schedule.done(state.step, state.regular)
        self.last_snapshot = snapshot
        self._ring.export()  # the step's Pulses reach the sinks before its Snapshot
        # the observers first: while the sinks' thread works it holds the GIL, which they
        # would wait for
        for observer in self.observers:
            observer.on_snapshot(snapshot, self)
        self.exporter.submit("on_snapshot", snapshot)

    def _tell_pulse(self, pulse: Pulse) -> None:
        """The observers, on the training thread."""
        for observer in self.observers:
            observer.on_pulse(pulse, self)

    def _sharded_world(self) -> bool:
        return self._watched.any_sharded and collectives.active_world(self.world_size)

    def _before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._current is not None:
            self._current.before_optimizer_step(optimizer, self.skip_on_spike, self.update_ratio)

    def _after_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._current is not None:
            self._current.after_optimizer_step(
                optimizer, self.skip_on_spike, self._watched if self.track_clipping else None,
                self.world_size)
