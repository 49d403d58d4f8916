"""TrainingDiagnostics: the Lightning callback. Thin glue: hooks -> monitor.Monitor."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client.exposition import basic_auth_handler
from torch.nn.parallel import DistributedDataParallel
from typing_extensions import override

from ..monitor.alerts import ALERT_NAMES, Alert, AlertEngine
from ..monitor.delivery import (AlertmanagerSink, CallableAlertSink, LoggingAlertSink,
                                WebhookSink, redact)
from ..monitor.endpoint import EndpointSecurity
from ..monitor.export import Sink
from ..monitor.forensics import ForensicsSink
from ..monitor.monitor import Monitor
from ..monitor.prometheus import PrometheusSink
from ..monitor.pushgateway import PushgatewayPusher
from ..monitor.responses import SkipOnSpike
from ..monitor.tensorboard import TensorBoardSink
from ..monitor.thresholds import Thresholds
from ..monitor.validation import (
    check_bool,
    check_callable,
    check_choice,
    check_credentials,
    check_file,
    check_instance,
    check_int,
    check_names,
    check_positive,
    check_text,
    check_url,
)

from ._lightning import CALLBACK_BASES, show_info_lines, tensorboard_writer

log = logging.getLogger("gradwatch")


class TrainingDiagnostics(*CALLBACK_BASES):
    r"""Per-layer training diagnostics, exported to TensorBoard and Prometheus.

    Works with a ``Trainer`` from ``lightning.pytorch`` and from ``pytorch_lightning``.
    Every step (always on, no host sync): the loss and the global gradient norm.
    Every ``every_n_steps`` steps and on the fit's last step (sampled): the full per-layer
    statistics below, copied to the host in one transfer; forward passes of a validation
    that runs inside an accumulation window are not counted. Each ``fit`` starts fresh (a
    reused callback keeps no detector history nor stop request). A "layer" is a module that directly owns parameters, named by
    its qualified name and ordered by depth (forward order).

    Prometheus metrics (labels ``run``, plus ``rank`` when the world size is above 1: what is
    the same on every rank comes once, from rank 0, as ``rank="all"``; NaN and Inf are
    exported as such):

    - ``gradwatch_grad_norm{layer}``: L2 norm of the layer's gradients, before clipping
    - ``gradwatch_weight_norm{layer}``: L2 norm of the layer's parameters
    - ``gradwatch_update_ratio{layer}``: ||delta W|| / ||W|| of the last optimizer step
    - ``gradwatch_activation_mean{layer}``, ``gradwatch_activation_variance{layer}``: of the
      layer's activation (output of the activation module right after it, else its output)
    - ``gradwatch_activation_saturation_ratio{layer}``: fraction in the flat region of a
      sigmoid/tanh-like activation
    - ``gradwatch_activation_dead_ratio{layer}``: fraction of exact zeros (dead ReLU units)
    - ``gradwatch_activation_max_abs{layer}``: max |x| of the activation
    - ``gradwatch_layer_depth{layer}``, ``gradwatch_layers``: depth order and layer count
    - ``gradwatch_layer_group{metric,depth_group,stat}``: past ``max_exported_layers``,
      min/median/max/argmax per depth group
    - ``gradwatch_step_seconds``, ``gradwatch_run_finished``: each rank's step time; 1 after
      a clean end
    - ``gradwatch_attention_logit_max{layer}``, ``gradwatch_attention_entropy{layer}``: per
      module that computed attention (SDPA, ``nn.MultiheadAttention``, Hugging Face
      eager/sdpa, intercepted during the sampled forward only): max logit, mean entropy
    - ``gradwatch_output_logit_logsumexp``, ``gradwatch_output_logit_max``: of the output
      logits (``lm_head``, else the last Linear)
    - ``gradwatch_update_grad_cosine{layer}``, ``gradwatch_adam_eps_dominated_ratio{layer}``:
      cos(update, gradient); share of Adam elements with sqrt(v_hat) <= 10 eps
    - ``gradwatch_skipped_updates_total``: updates undone by ``skip_on_spike``
    - ``gradwatch_global_grad_norm``, ``gradwatch_loss``, ``gradwatch_step``,
      ``gradwatch_last_step_timestamp_seconds``, ``gradwatch_learning_rate{optimizer,group}``:
      latest step
    - ``gradwatch_step_global_grad_norm``: histogram of every step's global norm (one-step
      spikes between scrapes stay visible)
    - ``gradwatch_clipped_grad_norm``, ``gradwatch_grad_clip_engaged_total``: with clipping
    - ``gradwatch_amp_loss_scale``, ``gradwatch_amp_skipped_steps_total``: with "16-mixed"
    - ``gradwatch_nonfinite_total{source,layer,kind}``: NaN/+Inf/-Inf values seen in
      gradients, activations, parameters (sampled steps) and the loss (every step)
    - ``gradwatch_nonfinite_steps_total{source}``: steps with a non-finite loss or gradient
    - ``gradwatch_overhead_seconds_total``: the monitor's own time on the training thread
    - ``gradwatch_snapshots_total``, ``gradwatch_export_dropped_total``, and
      ``gradwatch_regime{regime}``, ``gradwatch_alerts_total{alertname}`` (alerts)

    TensorBoard: the same figures as ``gradwatch/<statistic>/<layer>`` scalars, with a custom
    scalars layout (one chart per statistic, all layers), in the Trainer's TensorBoardLogger
    run when there is one, else in ``tensorboard_dir``.

    Alerts (``docs/runbook.md``; the alert table ``monitor/alert_table.py``): an
    initialisation audit before the first step, then NonFiniteValues, GradientExplosion,
    LossDivergence, LossSpike, AmpOverflowStorm (every step) and GradientVanishing,
    ActivationSaturation, DeadUnits, Fp16HeadroomLow and the leading indicators
    AttentionLogitGrowth, OutputLogitDivergence, AdamUpdateDecorrelation (sampled steps),
    UpdateSkipped (with ``skip_on_spike``),
    each saying what happened, where (step, layers, rank) and what to try. They go to the
    log (logger ``gradwatch.alerts``), TensorBoard, ``gradwatch_alerts_total`` and
    ``gradwatch_regime``, and optionally to Alertmanager, a webhook and your callable,
    from background threads: nothing on the training thread waits on the network.

    At set-up, rank 0 logs one line (logger ``gradwatch``, INFO; shown on stderr like
    Lightning's own lines when logging is not configured) saying where to look: the
    ``/metrics`` URL actually bound (also ``prometheus_url``), the TensorBoard directory,
    ``every_n_steps`` and where alerts go.

    Args:
        run_name: the ``run`` label. Default: ``<logger name>/version_<n>`` of the Trainer's
            logger, else ``run-<timestamp>``.
        every_n_steps: full per-layer statistics every this many optimizer steps.
        prometheus_port: serve ``/metrics`` on this port (0: any free port; with several
            processes, port + local rank). None: no endpoint. At a clean end a scraped
            endpoint lingers in the background (``fit`` does not wait) for one more scrape (at
            most two scrape intervals, 35 s), which reads ``gradwatch_run_finished 1``: no
            TrainerDown page for a finished run. The next fit on the port takes it over.
        prometheus_addr: the address to bind; loopback unless you open it on purpose.
        prometheus_tls_cert, prometheus_tls_key: serve /metrics over HTTPS (PEM files).
        prometheus_tls_client_ca: also require client certificates signed by this CA.
        prometheus_basic_auth: (username, password) required to read /metrics.
        port_in_use: when ``prometheus_port`` cannot be bound at setup: ``"error"`` (default:
            a ValueError before the first step, nothing lost) or ``"warn"`` (one warning,
            training goes on without the endpoint; the other exports still work).
        tensorboard: write TensorBoard scalars.
        tensorboard_dir: where to write them when the Trainer has no TensorBoardLogger
            (default ``gradwatch_logs/<run_name>``).
        pushgateway_url: also push the metrics there (grouping key run + rank), for jobs too
            short to be scraped.
        push_interval: seconds between pushes.
        pushgateway_keep: keep the Pushgateway group after a clean end (default: delete it).
        pushgateway_basic_auth: (username, password) for the Pushgateway.
        max_exported_layers: cap on ``layer`` label values; deeper models export the
            this many most offending layers and ``gradwatch_layer_group`` depth-group summaries
            (min, median, max, argmax); TensorBoard keeps every layer.
        rank_activations: with several ranks, every rank also exports the activations of
            its own batch (default: rank 0 exports them over all ranks' batches only).
        update_ratio: measure update ratios (a transient copy of the updated parameters
            during the optimizer step of sampled steps).
        thresholds: numbers used to judge saturation and by the detectors.
        alerts: run the detectors (default True).
        alertmanager_url: also send alerts to this Alertmanager (API v2), e.g.
            ``http://127.0.0.1:9093``; resolved alerts get their ``endsAt``. Credentials in
            the URL (``https://user:password@host``) become basic auth and are never logged.
        webhook_url: also POST every alert event as JSON there.
        on_alert: also call this with every Alert event (on the export thread).
        stop_on: alert names that stop training cleanly (``trainer.should_stop``), e.g.
            ``("NonFiniteValues",)``. Default: keep training and alert.
        forensics_dir: write a JSON bundle (recent Pulses and Snapshots, the step, the alert)
            there for each critical alert, to reproduce it.
        skip_on_spike: a ``monitor.SkipOnSpike``: undo, on the device and without a host
            sync, the optimizer update of a step whose loss or global gradient norm is an
            outlier (counted in ``gradwatch_skipped_updates_total``, alert UpdateSkipped).
            Default None: off, and training is bit-identical to a run without gradwatch.
        checkpoint_on: alert names that save a checkpoint when they fire, through
            ``trainer.save_checkpoint`` at the end of that step (for a leading indicator,
            before the loss diverges); the Alert names the file. Default: none.
        checkpoint_dir: where those checkpoints go (default
            ``<trainer.default_root_dir>/gradwatch_checkpoints``).

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
        check_text("run_name", run_name)
        check_int("every_n_steps", every_n_steps, low=1)
        if prometheus_port is not None:
            check_int("prometheus_port", prometheus_port, low=0, high=65535)
        check_text("prometheus_addr", prometheus_addr, optional=False)
        check_choice("port_in_use", port_in_use, ("error", "warn"))
        for name, path in (("prometheus_tls_cert", prometheus_tls_cert),
                           ("prometheus_tls_key", prometheus_tls_key),
                           ("prometheus_tls_client_ca", prometheus_tls_client_ca)):
            check_file(name, path)
        for name, flag in (("tensorboard", tensorboard), ("pushgateway_keep", pushgateway_keep),
                           ("update_ratio", update_ratio), ("alerts", alerts),
                           ("rank_activations", rank_activations)):
            check_bool(name, flag)
        check_text("tensorboard_dir", tensorboard_dir)
        check_text("forensics_dir", forensics_dir)
        for name, url in (("pushgateway_url", pushgateway_url),
                          ("alertmanager_url", alertmanager_url), ("webhook_url", webhook_url)):
            check_url(name, url)
        check_positive("push_interval", push_interval)
        check_int("max_exported_layers", max_exported_layers, low=1)
        check_callable("on_alert", on_alert, optional=True)
        check_instance("skip_on_spike", skip_on_spike, SkipOnSpike)
        check_names("checkpoint_on", checkpoint_on, ALERT_NAMES)
        if checkpoint_on and not alerts:
            raise ValueError("checkpoint_on needs alerts=True")
        check_text("checkpoint_dir", checkpoint_dir)
        check_instance("thresholds", thresholds, Thresholds)
        self.run_name = run_name
        self.every_n_steps = every_n_steps
        self.prometheus_port = prometheus_port
        self.prometheus_addr = prometheus_addr
        self.port_in_use = port_in_use
        self.endpoint_security = EndpointSecurity(
            prometheus_tls_cert, prometheus_tls_key, prometheus_tls_client_ca,
            prometheus_basic_auth)
        self.pushgateway_handler = _basic_auth_handler(pushgateway_basic_auth)
        self.tensorboard = tensorboard
        self.tensorboard_dir = tensorboard_dir
        self.pushgateway_url = pushgateway_url
        self.push_interval = float(push_interval)
        self.pushgateway_keep = pushgateway_keep
        self.max_exported_layers = max_exported_layers
        self.rank_activations = rank_activations
        self.update_ratio = update_ratio
        self.thresholds = thresholds or Thresholds()
        self.alertmanager_url = alertmanager_url
        self.webhook_url = webhook_url
        self.on_alert = on_alert
        self.forensics_dir = forensics_dir
        self.skip_on_spike = skip_on_spike
        self.checkpoint_on = frozenset(checkpoint_on)
        self.checkpoint_dir = checkpoint_dir
        self._checkpoints_due: list[str] = []
        self._checkpoint_root = "."
        # built now so that a wrong stop_on fails at construction; anew for every fit
        self.engine = AlertEngine(self.thresholds, stop_on=stop_on) if alerts else None
        self.stop_on = tuple(stop_on)
        self.monitor: Monitor | None = None
        self.prometheus: PrometheusSink | None = None
        self.tensorboard_sink: TensorBoardSink | None = None
        self.pusher: PushgatewayPusher | None = None
        self.bound_port: int | None = None
        self._step_started_at: int | None = None
        self._final_step: int | None = None
        self._final_snapshot = None

    @property
    def last_snapshot(self):
        """The latest Snapshot (kept after the run ends), or None."""
        return self.monitor.last_snapshot if self.monitor else self._final_snapshot

    @property
    def prometheus_url(self) -> str | None:
        """The ``/metrics`` URL actually served (with ``prometheus_port=0``, the port the
        system chose), from ``setup`` on; None without an endpoint. Also in the start-up
        line of the ``gradwatch`` log."""
        if self.bound_port is None:
            return None
        scheme = "https" if self.endpoint_security.certfile else "http"
        host = f"[{self.prometheus_addr}]" if ":" in self.prometheus_addr else self.prometheus_addr
        return f"{scheme}://{host}:{self.bound_port}/metrics"

    # ------------------------------------------------------------------ set-up / tear-down

    @override
    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit" or self.monitor is not None:
            return
        run = self.run_name or _default_run_name(trainer)
        multi = trainer.world_size > 1
        # every fit starts fresh: no detector history, no stop request, no figures of the last
        if self.engine is not None:
            self.engine = AlertEngine(self.thresholds, stop_on=self.stop_on,
                                      checkpoint_path=self._checkpoint_path)
        self._checkpoints_due = []
        self._checkpoint_root = self.checkpoint_dir or os.path.join(
            trainer.default_root_dir, "gradwatch_checkpoints")
        self.prometheus = self.tensorboard_sink = self.pusher = None
        self.bound_port = self._step_started_at = self._final_snapshot = None
        sinks: list[Sink] = []
        if self.prometheus_port is not None or self.pushgateway_url:
            self.prometheus = PrometheusSink(run, trainer.global_rank if multi else None,
                                             self.max_exported_layers, self.thresholds,
                                             rank_activations=self.rank_activations)
            sinks.append(self.prometheus)
        if self.prometheus_port is not None:
            port = self.prometheus_port + (trainer.local_rank if self.prometheus_port else 0)
            try:
                self.bound_port = self.prometheus.serve(port, self.prometheus_addr,
                                                        self.endpoint_security)
            except OSError as exc:
                problem = (f"prometheus_port {port} on prometheus_addr "
                           f"{self.prometheus_addr!r} cannot be served: {exc}")
                if self.port_in_use == "error":
                    raise ValueError(problem) from exc
                log.warning("gradwatch: %s; training goes on without /metrics", problem)
        if self.tensorboard and (trainer.is_global_zero or self.tensorboard_dir):
            writer = None if self.tensorboard_dir else tensorboard_writer(trainer)
            log_dir = self.tensorboard_dir or f"gradwatch_logs/{run}"
            try:
                self.tensorboard_sink = TensorBoardSink(writer, log_dir)
                sinks.append(self.tensorboard_sink)
            except OSError as exc:  # monitoring must not stop the training
                log.warning("gradwatch: TensorBoard export off: cannot write %s (%r)",
                            log_dir, exc)
        if self.engine is not None:
            sinks += self._alert_sinks(trainer.world_size)
        self.monitor = Monitor(
            pl_module,
            run_name=run,
            every_n_steps=self.every_n_steps,
            sinks=sinks,
            observers=[self.engine] if self.engine is not None else [],
            update_ratio=self.update_ratio,
            rank=trainer.global_rank,
            world_size=trainer.world_size,
            thresholds=self.thresholds,
            skip_on_spike=self.skip_on_spike.renewed() if self.skip_on_spike else None,
        )
        if self.prometheus is not None:
            exporter = self.monitor.exporter
            self.prometheus.count_dropped = lambda: exporter.dropped
        if self.pushgateway_url:
            key = {"run": run} | ({"rank": str(trainer.global_rank)} if multi else {})
            self.pusher = PushgatewayPusher(self.pushgateway_url, self.prometheus.registry, key,
                                            interval=self.push_interval,
                                            keep=self.pushgateway_keep,
                                            handler=self.pushgateway_handler)
        if trainer.is_global_zero:
            show_info_lines(log)
            log.info("gradwatch: %s", self._where_to_look(run))

    def _where_to_look(self, run: str) -> str:
        """The start-up line: where this fit's figures and alerts go."""
        metrics = self.prometheus_url or "off"
        if self.pusher is not None:
            metrics += f", pushed to {redact(self.pushgateway_url)}"
        tensorboard = self.tensorboard_sink.log_dir if self.tensorboard_sink else "off"
        return (f"run {run!r}, /metrics {metrics}, TensorBoard {tensorboard}, "
                f"every_n_steps={self.every_n_steps}, alerts -> {self._alert_destinations()}")

    def _alert_destinations(self) -> str:
        if self.engine is None:
            return "off"
        where = ["log (gradwatch.alerts)"]
        if self.alertmanager_url:
            where.append(f"Alertmanager {redact(self.alertmanager_url)}")
        if self.webhook_url:
            where.append(f"webhook {redact(self.webhook_url)}")
        if self.on_alert is not None:
            where.append(f"on_alert {getattr(self.on_alert, '__qualname__', 'callable')}")
        if self.forensics_dir:
            where.append(f"forensics {self.forensics_dir}")
        return ", ".join(where)

    def _alert_sinks(self, world_size: int) -> list[Sink]:
        sinks: list[Sink] = [LoggingAlertSink()]
        if self.on_alert is not None:
            sinks.append(CallableAlertSink(self.on_alert))
        if self.alertmanager_url:
            sinks.append(AlertmanagerSink(self.alertmanager_url, world_size=world_size))
        if self.webhook_url:
            sinks.append(WebhookSink(self.webhook_url, world_size=world_size))
        if self.forensics_dir:
            sinks.append(ForensicsSink(self.forensics_dir))
        return sinks

    @override
    def on_train_start(self, trainer, pl_module) -> None:
        monitor = self.monitor
        for optimizer in trainer.optimizers:
            monitor.watch_optimizer(optimizer)
        monitor.grad_scaler = getattr(trainer.precision_plugin, "scaler", None)
        monitor.track_clipping = bool(trainer.gradient_clip_val)
        ddp_model = trainer.strategy.model
        if isinstance(ddp_model, DistributedDataParallel) \
                and getattr(trainer.strategy, "_ddp_comm_hook", None) is None:
            # sees each rank's own gradients before the all-reduce: the origin of a NaN
            ddp_model.register_comm_hook(None, monitor.ddp_comm_hook())
        if self.engine is not None:
            self.engine.audit(pl_module, monitor, step=trainer.global_step)
        self._final_step = _final_step(trainer)

    @override
    def on_train_end(self, trainer, pl_module) -> None:
        self.monitor.end_step()
        if self.engine is not None:
            self.engine.flush(self.monitor)  # a NaN on the very last steps is still reported
        self._save_checkpoints(trainer)
        self.monitor.flush()  # the last steps reach the sinks while /metrics is still served

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

    @override
    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        try:
            self._shutdown(clean=False)
        except Exception as error:  # the training's own exception is the one that matters
            log.warning("gradwatch: shutting down after %r failed: %r", exception, error)

    def _shutdown(self, clean: bool) -> None:
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
        if step == self._final_step and step != self._step_started_at:
            self.monitor.escalate(1, trace_all_modules=False)  # the run ends on full figures
        self._step_started_at = step
        self.monitor.begin_step(step)

    @override
    def on_before_backward(self, trainer, pl_module, loss) -> None:
        # with an AMP GradScaler, Lightning hands over the loss already multiplied by the
        # scale it was just scaled with (one division on the device, no sync)
        scale = getattr(self.monitor.grad_scaler, "_scale", None)
        self.monitor.observe_loss(loss if scale is None else loss / scale)

    @override
    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.monitor.observe_gradients(optimizer)

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch: Any, batch_idx: int) -> None:
        # under gradient accumulation the step ends only when the optimizer has stepped
        if trainer.global_step != self._step_started_at:
            self.monitor.end_step()
            self._save_checkpoints(trainer)
            if self.engine is not None and self.engine.should_stop:
                trainer.should_stop = True

    def _checkpoint_path(self, finding) -> str | None:
        """Checkpoint-on-alert: the file for an alert about to fire (saved after the step)."""
        if finding.name not in self.checkpoint_on:
            return None
        path = os.path.join(self._checkpoint_root,
                            f"gradwatch-{finding.name}-step{finding.step}.ckpt")
        self._checkpoints_due.append(path)
        return path

    def _save_checkpoints(self, trainer) -> None:
        due, self._checkpoints_due = self._checkpoints_due, []
        for path in due:
            try:
                trainer.save_checkpoint(path)
            except Exception as exc:  # monitoring must not stop the training
                log.warning("gradwatch: checkpoint-on-alert could not save %s: %r", path, exc)


def _basic_auth_handler(credentials: tuple[str, str] | None):
    """A prometheus_client push handler adding basic auth, or None."""
    credentials = check_credentials("pushgateway_basic_auth", credentials)
    if credentials is None:
        return None
    username, password = credentials

    def handler(url, method, timeout, headers, data):
        return basic_auth_handler(url, method, timeout, headers, data, username, password)

    return handler


def _final_step(trainer) -> int | None:
    """The last optimizer step this fit will run, when the Trainer knows it."""
    try:
        total = trainer.estimated_stepping_batches
    except Exception:  # e.g. accumulation that changes by epoch: the last step is unknown
        return None
    return int(total) - 1 if 0 < total < math.inf else None


def _default_run_name(trainer) -> str:
    logger = trainer.logger
    if logger is not None and logger.name:
        version = logger.version
        version = f"version_{version}" if isinstance(version, int) else str(version)
        return f"{logger.name}/{version}"
    return time.strftime("run-%Y%m%d-%H%M%S")
