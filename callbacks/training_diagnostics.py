"""TrainingDiagnostics: the Lightning callback. Thin glue: hooks -> gradwatch's Monitor."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

from torch.nn.parallel import DistributedDataParallel
from typing_extensions import override

from ..monitor.capture.monitor import Monitor, Observer
from ..monitor.capture.skip_on_spike import SkipOnSpike
from ..monitor.judging.engine import AlertEngine
from ..monitor.probes.record_batches import SAMPLE_VALUES
from ..monitor.records.findings import Alert
from ..monitor.records.regimes import HEALTHY
from ..monitor.records.snapshot import Snapshot
from ..monitor.records.thresholds import Thresholds
from ..monitor.sinks.export_thread import Sink
from ..monitor.sinks.prometheus import LINGER_SECONDS
from ._lightning import CALLBACK_BASES, show_info_lines
from .arguments import DiagnosticsOptions
from .checkpoints import AlertCheckpoints
from .clipping import NormClipRoute
from .logger_route import LoggerRoute
from .run_name import default_run_name
from .stopping import stop_line, stopping_alert
from .wiring import FitExports, build_exports, metrics_url, startup_line

log = logging.getLogger("gradwatch")


class TrainingDiagnostics(*CALLBACK_BASES):  # type: ignore[misc]  # Lightning's Callback
    r"""Per-layer training diagnostics, exported to TensorBoard and Prometheus.

    For a ``Trainer`` of ``lightning.pytorch`` or ``pytorch_lightning``. Every step (no host
    sync): the loss and the global gradient norm (clipping by norm: the clip's). Every ``every_n_steps`` steps and the fit's
    last (sampled): the per-layer statistics, in one transfer (a validation inside an
    accumulation window is not counted). Each ``fit`` starts fresh. A "layer" is a module
    that directly owns parameters, by qualified name, in depth (forward) order.

    Prometheus metrics (labels ``run``, plus ``rank`` when the world size is above 1: what is
    the same on every rank comes once, from rank 0, as ``rank="all"``; NaN and Inf are
    exported as such): per-layer gradient and weight norms, update ratios, activation
    statistics and NaN/Inf counts; every step's loss and global gradient norm; attention and
    output-logit figures. Each one, with its unit, labels and healthy range, is listed once,
    in docs/metrics.md (generated from ``monitor/records/metrics.py``).

    The Trainer's loggers (CSV, MLflow, W&B, ...), as Lightning's own monitors do it: the
    per-layer figures of sampled steps and every step's at ``log_every_n_steps``, named
    ``gradwatch/<statistic>/<layer>`` (the logger's group separator); the global gradient
    norm, loss scale and regime code also in ``trainer.callback_metrics`` (EarlyStopping).

    TensorBoard: the same figures as ``gradwatch/<statistic>/<layer>`` (and log10) scalars,
    in the Trainer's TensorBoardLogger run (else ``tensorboard_dir``), custom-scalars layout.

    Alerts (docs/alerts.md): the initialisation audit, then every alert of the alert table
    (NonFiniteValues, GradientExplosion, LossSpike, GradientVanishing, ... and the leading
    indicators of transformer instability), each saying what happened, where (step, layers,
    rank) and what to try: to the log (``gradwatch.alerts``), TensorBoard and Prometheus, and
    optionally to Alertmanager, a webhook and your callable, from background threads.

    At set-up rank 0 logs where to look (logger ``gradwatch``, INFO, on stderr unless logging
    is configured): the ``/metrics`` URL bound (``prometheus_url``), TensorBoard, alerts.

    Args:
        run_name: the ``run`` label. Default: ``<logger name>/version_<n>`` of the Trainer's
            logger, else ``run-<timestamp>``.
        every_n_steps: full per-layer statistics every this many optimizer steps (step 0 and
            the fit's last step included; validation passes inside a step are not counted).
        prometheus_port: serve ``/metrics`` on this port (0: any free port; with several
            processes, port + local rank). None: no endpoint.
        prometheus_linger: after a clean end that Prometheus was scraping, keep ``/metrics``
            up for its next scrape (``gradwatch_run_finished 1``: no TrainerDown page), at
            most this many seconds; the script's exit waits for it and says so (Ctrl-C skips
            it). 0: stop serving at once.
        prometheus_addr: the address to bind; loopback unless you open it on purpose (a
            Prometheus in Docker: ``"172.17.0.1"``, see docs/ops.md).
        prometheus_tls_cert, prometheus_tls_key: serve /metrics over HTTPS (PEM files).
        prometheus_tls_client_ca: also require client certificates signed by this CA (mutual
            TLS).
        prometheus_basic_auth: (username, password) required to read /metrics (no default
            password exists).
        port_in_use: when ``prometheus_port`` cannot be bound: ``"error"`` (a ValueError at
            setup, before the first step, nothing lost) or ``"warn"`` (warned once; training
            goes on without the endpoint).
        tensorboard: write TensorBoard scalars (into the Trainer's TensorBoardLogger run).
        tensorboard_dir: where to write them when the Trainer has no TensorBoardLogger
            (default ``gradwatch_logs/<run_name>``).
        pushgateway_url: also push the metrics there (grouping key run + rank).
        push_interval: seconds between pushes.
        pushgateway_keep: keep the Pushgateway group after a clean end (default: delete it).
        pushgateway_basic_auth: (username, password) for the Pushgateway.
        max_exported_layers: cap on ``layer`` label values; deeper models export this many
            most offending layers and ``gradwatch_layer_group`` depth-group summaries (min,
            median, max, argmax; for ``update_ratio`` also ``pooled``, the group's own ratio
            over its updated parameters). TensorBoard keeps every layer.
        rank_activations: with several ranks (DDP), every rank also exports the activations
            of its own batch (default: rank 0 exports them over all ranks' batches only, as
            ``rank="all"``).
        update_ratio: measure update ratios (a transient copy of the parameters the optimizer
            updates, on sampled steps only; memory: docs/cost.md).
        activation_sample: outputs above this many values (and above 2**17) get their
            activation mean, variance, saturation and dead ratios estimated from random whole
            rows (vectors along the last dim) of about this many values, drawn by a seeded
            generator of gradwatch's own (the global RNG and training untouched); max |x| and
            NaN/Inf counts stay exact. None or 0: every output exact (cost: docs/cost.md).
        thresholds: every number the monitor judges by (saturation, the detectors; default
            ``Thresholds()``, ``monitor/records/thresholds.py``, each with its reason).
        alerts: run the detectors (default True).
        alertmanager_url: also send alerts to this Alertmanager (API v2; resolved alerts get
            their ``endsAt``); credentials in the URL (``https://user:password@host``) become
            basic auth, never logged.
        webhook_url: also POST every alert event as JSON there.
        on_alert: also call this with every Alert event (on the export thread).
        stop_on: alert names that stop training cleanly (``trainer.should_stop``), e.g.
            ``("NonFiniteValues",)``. Default: keep training and alert.
        forensics_dir: write a JSON bundle of the history there for each critical alert (the
            recent Pulses and Snapshots, the alert).
        skip_on_spike: a ``gradwatch.SkipOnSpike()``: undo on the device (no host sync) the
            update of a step whose loss or gradient norm is an outlier (above mean + 6 sigma
            of the last 128 steps), counted in ``gradwatch_skipped_updates_total``, alert
            UpdateSkipped. None (default): off, and training is bit-identical to a run
            without gradwatch.
        checkpoint_on: alert names (e.g. ``("AttentionLogitGrowth",)``) that save a
            checkpoint (``trainer.save_checkpoint``, at the end of the step) when they fire;
            the Alert names the file.
        checkpoint_dir: where those go (default ``<default_root_dir>/gradwatch_checkpoints``).

    Raises:
        ValueError: at construction, for an argument out of range (naming it); at setup,
            when ``prometheus_port`` cannot be bound.

    Example::

        from gradwatch import TrainingDiagnostics

        diagnostics = TrainingDiagnostics(prometheus_port=0)   # any free port
        trainer = Trainer(callbacks=[diagnostics])
        trainer.fit(model)    # the log names it: "gradwatch: ... /metrics http://127.0.0.1:..."
        diagnostics.prometheus_url    # the same URL, from setup on
    """

    def __init__(
        self,
        run_name: str | None = None,
        every_n_steps: int = 50,
        prometheus_port: int | None = None,
        prometheus_addr: str = "127.0.0.1",
        prometheus_linger: float = LINGER_SECONDS,
        prometheus_tls_cert: str | None = None,
        prometheus_tls_key: str | None = None,
        prometheus_tls_client_ca: str | None = None,
        prometheus_basic_auth: tuple[str, str] | None = None,
        port_in_use: str = "error",
        tensorboard: bool = True,
        tensorboard_dir: str | None = None,
        pushgateway_url: str | None = None,
        push_interval: float = 10.0,
        pushgateway_keep: bool = False,
        pushgateway_basic_auth: tuple[str, str] | None = None,
        max_exported_layers: int = 512,
        rank_activations: bool = False,
        update_ratio: bool = True,
        activation_sample: int | None = SAMPLE_VALUES,
        thresholds: Thresholds | None = None,
        alerts: bool = True,
        alertmanager_url: str | None = None,
        webhook_url: str | None = None,
        on_alert: Callable[[Alert], object] | None = None,
        stop_on: Sequence[str] = (),
        forensics_dir: str | None = None,
        skip_on_spike: SkipOnSpike | None = None,
        checkpoint_on: Sequence[str] = (),
        checkpoint_dir: str | None = None,
    ) -> None:
        super().__init__()
        arguments = {name: value for name, value in locals().items()
                     if name not in ("self", "__class__")}
        self.options = DiagnosticsOptions(**arguments)  # a wrong argument fails here, named
        # built now so that a wrong stop_on fails at construction; anew for every fit
        self.engine = (AlertEngine(self.options.thresholds, stop_on=self.options.stop_on)
                       if alerts else None)
        self.checkpoints = AlertCheckpoints(frozenset(checkpoint_on))
        self.clip_route = NormClipRoute()  # for a fit that clips by norm
        self.logger_route = LoggerRoute([], 0)  # the Trainer's loggers, from setup on
        self.monitor: Monitor | None = None
        self.exports = FitExports()
        self._step_started_at: int | None = None
        self._stepping_batches: int | None = None
        self._steps_per_batch = 1  # global steps a batch moves: one per optimizer stepping
        self._final_snapshot: Snapshot | None = None

    @property
    def _running(self) -> Monitor:
        """The fit's Monitor: the hooks that use it run between setup and teardown."""
        assert self.monitor is not None, "a fit's hooks run after its setup"
        return self.monitor

    @property
    def last_snapshot(self) -> Snapshot | None:
        """The latest Snapshot (kept after the run ends), or None."""
        return self.monitor.last_snapshot if self.monitor else self._final_snapshot

    @property
    def prometheus_url(self) -> str | None:
        """The ``/metrics`` URL actually served (with ``prometheus_port=0``, the port the
        system chose), from ``setup`` on; None without an endpoint."""
        return metrics_url(self.options.prometheus_addr, self.bound_port,
                           self.options.endpoint_security)

    # this fit's exporters (None when off, or before the first fit)
    prometheus = property(lambda self: self.exports.prometheus)
    bound_port = property(lambda self: self.exports.bound_port)
    tensorboard_sink = property(lambda self: self.exports.tensorboard_sink)
    pusher = property(lambda self: self.exports.pusher)

    # ------------------------------------------------------------------ set-up / tear-down

    @override
    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit" or self.monitor is not None:
            return
        run = self.options.run_name or default_run_name(trainer)
        # every fit starts fresh: no detector history, no stop request, no figures of the last
        if self.engine is not None:
            self.engine = AlertEngine(self.options.thresholds, stop_on=self.options.stop_on,
                                      checkpoint_path=self.checkpoints.path_for)
        self.checkpoints.start(self.options.checkpoint_dir or os.path.join(
            trainer.default_root_dir, "gradwatch_checkpoints"))
        self._step_started_at = self._final_snapshot = None
        self._steps_per_batch = 1
        self.exports = build_exports(self.options, trainer, run)
        engine = self.engine
        self.logger_route = _logger_route(trainer, engine)
        self.monitor = _fit_monitor(self.options, trainer, pl_module, run, self.exports.sinks,
                                    [*([engine] if engine is not None else []),
                                     self.logger_route])
        if self.prometheus is not None:
            exporter = self.monitor.exporter
            self.prometheus.count_dropped = lambda: exporter.dropped
        if trainer.is_global_zero:
            show_info_lines(log)
            log.info("gradwatch: %s",
                     startup_line(self.options, self.exports, run, self.prometheus_url))

    @override
    def on_train_start(self, trainer, pl_module) -> None:
        monitor = self._running
        _watch_trainer(trainer, monitor)
        self.clip_route.install(trainer, pl_module, monitor)
        if self.engine is not None:
            self.engine.audit(pl_module, monitor, step=trainer.global_step)
        self._stepping_batches = _stepping_batches(trainer)

    @override
    def on_train_end(self, trainer, pl_module) -> None:
        self._running.end_step()
        if self.engine is not None:
            self.engine.flush(self.monitor)  # a NaN on the very last steps is still reported
        self.checkpoints.save_due(trainer)
        self._running.flush()  # the last steps reach the sinks while /metrics is still served
        self.logger_route.write(trainer)

    @override
    def on_validation_start(self, trainer, pl_module) -> None:
        if self.monitor is not None:  # a validation inside an accumulation window
            self.monitor.pause_tracing(True)

    @override
    def on_validation_end(self, trainer, pl_module) -> None:
        if self.monitor is not None:
            self.monitor.pause_tracing(False)

    @override
    def teardown(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            self._shutdown(clean=True)
            self.logger_route.write(trainer)  # before Lightning finalizes its loggers

    @override
    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        try:
            self._shutdown(clean=False)
        except Exception as error:  # the training's own exception is the one that matters
            log.warning("gradwatch: shutting down after %r failed: %r", exception, error)

    def _shutdown(self, clean: bool) -> None:
        self.clip_route.remove()
        if self.monitor is None:
            return
        if clean and self.prometheus is not None:
            self.prometheus.finish()  # the last scrape or push says: no page for this end
        self.monitor.close(finish_step=clean)
        self._final_snapshot = self.monitor.last_snapshot
        if self.pusher is not None:
            self.pusher.close(clean=clean)
        self.monitor = None

    # ------------------------------------------------------------------ per step

    @override
    def on_train_batch_start(self, trainer, pl_module, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        final = _final_step(self._stepping_batches, trainer.max_steps, self._steps_per_batch)
        if step == final and step != self._step_started_at:
            self._running.escalate(1, trace_all_modules=False)  # the run ends on full figures
        self._step_started_at = step
        self._running.begin_step(step)

    @override
    def on_before_backward(self, trainer, pl_module, loss) -> None:
        # with an AMP GradScaler, Lightning hands over the loss already multiplied by the
        # scale it was just scaled with (one division on the device, no sync)
        scale = getattr(self._running.grad_scaler, "_scale", None)
        self._running.observe_loss(loss if scale is None else loss / scale)

    @override
    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if not self.clip_route.active:  # else the clip right after reads them, once
            self._running.observe_gradients(optimizer)

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch: Any, batch_idx: int) -> None:
        # under gradient accumulation the step ends only when the optimizer has stepped
        if trainer.global_step != self._step_started_at:
            self._steps_per_batch = trainer.global_step - (self._step_started_at or 0)
            self._running.end_step()
            self.logger_route.write(trainer)
            self.checkpoints.save_due(trainer)
            if self.engine is not None and self.engine.should_stop and not trainer.should_stop:
                _stop(trainer, self.engine, self.options.stop_on)


def _stepping_batches(trainer) -> int | None:
    """The batches (or accumulation windows) this fit will step on, when the Trainer knows."""
    try:
        total = trainer.estimated_stepping_batches
    except Exception:  # e.g. accumulation that changes by epoch: the last step is unknown
        return None
    return int(total) if 0 < total < math.inf else None


def _final_step(stepping_batches: int | None, max_steps: int, steps_per_batch: int) -> int | None:
    """The global step the fit's last stepping batch starts at. Each optimizer that steps
    moves ``global_step`` (manual optimization with two optimizers: by 2 a batch), and the
    fit stops once it reaches ``max_steps``."""
    if stepping_batches is None:
        return None
    final = (stepping_batches - 1) * steps_per_batch
    if max_steps > 0:
        final = min(final, (max_steps - 1) // steps_per_batch * steps_per_batch)
    return final



def _fit_monitor(options: DiagnosticsOptions, trainer, pl_module, run: str,
                 sinks: list[Sink], observers: list[Observer]) -> Monitor:
    """One fit's Monitor, as the options say."""
    return Monitor(
        pl_module, run_name=run, every_n_steps=options.every_n_steps, sinks=sinks,
        observers=observers, update_ratio=options.update_ratio,
        activation_sample=options.activation_sample, rank=trainer.global_rank,
        world_size=trainer.world_size, thresholds=options.thresholds,
        skip_on_spike=options.skip_on_spike.renewed() if options.skip_on_spike else None)


def _watch_trainer(trainer, monitor: Monitor) -> None:
    """What the Trainer set up that the Monitor reads: its optimizers' steps, the AMP
    GradScaler, clipping; under DDP (unless the user has a communication hook) each rank's own
    gradients before the all-reduce: the origin of a NaN."""
    for optimizer in trainer.optimizers:
        monitor.watch_optimizer(optimizer)
    monitor.grad_scaler = getattr(trainer.precision_plugin, "scaler", None)
    monitor.track_clipping = bool(trainer.gradient_clip_val)
    ddp_model = trainer.strategy.model
    if isinstance(ddp_model, DistributedDataParallel) \
            and getattr(trainer.strategy, "_ddp_comm_hook", None) is None:
        ddp_model.register_comm_hook(None, monitor.ddp_comm_hook())


def _logger_route(trainer, engine: AlertEngine | None) -> LoggerRoute:
    """The route of this fit's figures into the Trainer's loggers (rank 0 writes them)."""
    return LoggerRoute(trainer.loggers if trainer.is_global_zero else [],
                       trainer.log_every_n_steps,
                       regime=(lambda: engine.regime) if engine is not None else lambda: HEALTHY)


def _stop(trainer, engine: AlertEngine, stop_on: Sequence[str]) -> None:
    """Stop the fit as ``stop_on`` asks, and say why."""
    trainer.should_stop = True
    log.warning("gradwatch: %s", stop_line(stopping_alert(engine.history, stop_on), trainer))
