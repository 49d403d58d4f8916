"""Where one fit's figures and alerts go: the sinks TrainingDiagnostics' options ask for,
built at set-up, and the start-up line that says where to look."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client.exposition import basic_auth_handler

from ..monitor.records.validation import check_credentials
from ..monitor.sinks.delivery import (
    AlertmanagerSink,
    CallableAlertSink,
    LoggingAlertSink,
    WebhookSink,
    redact,
)
from ..monitor.sinks.endpoint import EndpointSecurity
from ..monitor.sinks.export_thread import Sink
from ..monitor.sinks.forensics import ForensicsSink
from ..monitor.sinks.prometheus import PrometheusSink
from ..monitor.sinks.pushgateway import PushgatewayPusher
from ..monitor.sinks.tensorboard import TensorBoardSink
from ._lightning import tensorboard_writer

if TYPE_CHECKING:
    from .arguments import DiagnosticsOptions

log = logging.getLogger("gradwatch")


@dataclass
class FitExports:
    """One fit's exporters (None: off) and the sinks the Monitor hands its records to."""

    prometheus: PrometheusSink | None = None
    bound_port: int | None = None
    tensorboard_sink: TensorBoardSink | None = None
    pusher: PushgatewayPusher | None = None
    sinks: list[Sink] = field(default_factory=list)


def build_exports(options: DiagnosticsOptions, trainer: Any, run: str) -> FitExports:
    """The Prometheus sink (served, pushed), TensorBoard and the alert sinks of one fit."""
    exports = FitExports()
    multi = trainer.world_size > 1
    if options.prometheus_port is not None or options.pushgateway_url:
        exports.prometheus = PrometheusSink(run, trainer.global_rank if multi else None,
                                            options.max_exported_layers, options.thresholds,
                                            rank_activations=options.rank_activations,
                                            linger=options.prometheus_linger)
        exports.sinks.append(exports.prometheus)
    if options.prometheus_port is not None and exports.prometheus is not None:
        exports.bound_port = _serve(options, exports.prometheus, trainer.local_rank)
    if options.tensorboard and (trainer.is_global_zero or options.tensorboard_dir):
        writer = None if options.tensorboard_dir else tensorboard_writer(trainer)
        log_dir = options.tensorboard_dir or f"gradwatch_logs/{run}"
        try:
            exports.tensorboard_sink = TensorBoardSink(writer, log_dir)
            exports.sinks.append(exports.tensorboard_sink)
        except OSError as exc:  # monitoring must not stop the training
            log.warning("gradwatch: TensorBoard export off: cannot write %s (%r)", log_dir, exc)
    if options.alerts:
        exports.sinks += alert_sinks(options, trainer.world_size)
    if options.pushgateway_url and exports.prometheus is not None:
        key = {"run": run} | ({"rank": str(trainer.global_rank)} if multi else {})
        exports.pusher = PushgatewayPusher(
            options.pushgateway_url, exports.prometheus.registry, key,
            interval=float(options.push_interval), keep=options.pushgateway_keep,
            handler=pushgateway_handler(options.pushgateway_basic_auth))
    return exports


def _serve(options: DiagnosticsOptions, sink: PrometheusSink, local_rank: int) -> int | None:
    """Serve ``/metrics`` (port + local rank for a fixed port); the port bound, or None."""
    port = options.prometheus_port or 0
    port += local_rank if port else 0  # one endpoint per rank on a node
    try:
        return sink.serve(port, options.prometheus_addr, options.endpoint_security)
    except OSError as exc:
        problem = (f"prometheus_port {port} on prometheus_addr {options.prometheus_addr!r} "
                   f"cannot be served: {exc}")
        if options.port_in_use == "error":  # the OSError is in the message: no second trace
            raise ValueError(f"{problem}; choose a free port, prometheus_port=0 (any free "
                             f"port) or port_in_use='warn' (train without /metrics)") from None
        log.warning("gradwatch: %s; training goes on without /metrics", problem)
        return None


def metrics_url(addr: str, bound_port: int | None, security: EndpointSecurity) -> str | None:
    """The URL of the ``/metrics`` endpoint bound on ``bound_port``, or None."""
    if bound_port is None:
        return None
    scheme = "https" if security.certfile else "http"
    host = f"[{addr}]" if ":" in addr else addr
    return f"{scheme}://{host}:{bound_port}/metrics"


def alert_sinks(options: DiagnosticsOptions, world_size: int) -> list[Sink]:
    """The log always; the callable, Alertmanager, webhook and forensics when asked for."""
    sinks: list[Sink] = [LoggingAlertSink()]
    if options.on_alert is not None:
        sinks.append(CallableAlertSink(options.on_alert))
    if options.alertmanager_url:
        sinks.append(AlertmanagerSink(options.alertmanager_url, world_size=world_size))
    if options.webhook_url:
        sinks.append(WebhookSink(options.webhook_url, world_size=world_size))
    if options.forensics_dir:
        sinks.append(ForensicsSink(options.forensics_dir))
    return sinks


def startup_line(options: DiagnosticsOptions, exports: FitExports, run: str,
                 prometheus_url: str | None) -> str:
    """Where this fit's figures and alerts go (credentials never shown)."""
    metrics = prometheus_url or "off"
    if exports.pusher is not None:
        metrics += f", pushed to {redact(options.pushgateway_url)}"
    tensorboard = exports.tensorboard_sink.log_dir if exports.tensorboard_sink else "off"
    return (f"run {run!r}, /metrics {metrics}, TensorBoard {tensorboard}, "
            f"every_n_steps={options.every_n_steps}, alerts -> {_alert_destinations(options)}")


def _alert_destinations(options: DiagnosticsOptions) -> str:
    if not options.alerts:
        return "off"
    where = ["log (gradwatch.alerts)"]
    if options.alertmanager_url:
        where.append(f"Alertmanager {redact(options.alertmanager_url)}")
    if options.webhook_url:
        where.append(f"webhook {redact(options.webhook_url)}")
    if options.on_alert is not None:
        where.append(f"on_alert {getattr(options.on_alert, '__qualname__', 'callable')}")
    if options.forensics_dir:
        where.append(f"forensics {options.forensics_dir}")
    return ", ".join(where)


def pushgateway_handler(credentials: tuple[str, str] | None) -> Any:
    """A prometheus_client push handler adding basic auth, or None."""
    credentials = check_credentials("pushgateway_basic_auth", credentials)
    if credentials is None:
        return None
    username, password = credentials

    def handler(url: str, method: str, timeout: float | None, headers: list[tuple[str, str]],
                data: bytes) -> Any:
        return basic_auth_handler(url, method, timeout, headers, data, username, password)

    return handler
