"""TrainingDiagnostics' arguments: typed, checked at construction (each failure names its
argument), and read by the wiring of a fit."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from functools import partial
from typing import Any

from ..monitor.capture.skip_on_spike import SkipOnSpike
from ..monitor.records.findings import ALERT_NAMES, Alert
from ..monitor.records.thresholds import Thresholds
from ..monitor.records.validation import (
    check_activation_sample,
    check_bool,
    check_callable,
    check_choice,
    check_credentials,
    check_directory,
    check_file,
    check_instance,
    check_int,
    check_names,
    check_number,
    check_positive,
    check_text,
    check_url,
)
from ..monitor.sinks.endpoint import EndpointSecurity


def _port(name: str, value: object) -> None:
    if value is not None:
        check_int(name, value, low=0, high=65535)


#: argument -> its check (called as check(name, value)); every argument has one
CHECKS: dict[str, Callable[[str, Any], object]] = {
    "run_name": check_text,
    "every_n_steps": partial(check_int, low=1),
    "prometheus_port": _port,
    "prometheus_addr": partial(check_text, optional=False),
    "prometheus_linger": partial(check_number, low=0.0),
    "prometheus_tls_cert": check_file,
    "prometheus_tls_key": check_file,
    "prometheus_tls_client_ca": check_file,
    "prometheus_basic_auth": check_credentials,
    "port_in_use": partial(check_choice, choices=("error", "warn")),
    "tensorboard": check_bool,
    "tensorboard_dir": check_directory,
    "pushgateway_url": check_url,
    "push_interval": check_positive,
    "pushgateway_keep": check_bool,
    "pushgateway_basic_auth": check_credentials,
    "max_exported_layers": partial(check_int, low=1),
    "rank_activations": check_bool,
    "update_ratio": check_bool,
    "activation_sample": check_activation_sample,
    "thresholds": partial(check_instance, kind=Thresholds),
    "alerts": check_bool,
    "alertmanager_url": check_url,
    "webhook_url": check_url,
    "on_alert": partial(check_callable, optional=True),
    # the AlertEngine checks it again, against its detectors
    "stop_on": partial(check_names, known=ALERT_NAMES),
    "forensics_dir": check_directory,
    "skip_on_spike": partial(check_instance, kind=SkipOnSpike),
    "checkpoint_on": partial(check_names, known=ALERT_NAMES),
    "checkpoint_dir": check_directory,
}


def check_arguments(arguments: Mapping[str, Any]) -> None:
    """Raise a ValueError naming the first wrong argument of ``arguments`` (name -> value)."""
    assert arguments.keys() == CHECKS.keys(), "every argument has its check"
    for name, check in CHECKS.items():
        check(name, arguments[name])
    if arguments["checkpoint_on"] and not arguments["alerts"]:
        raise ValueError("checkpoint_on needs alerts=True")


@dataclass(frozen=True)
class DiagnosticsOptions:
    """The arguments of one TrainingDiagnostics (each documented there), checked when made:
    ``thresholds`` None becomes the defaults, ``stop_on`` a tuple."""

    run_name: str | None
    every_n_steps: int
    prometheus_port: int | None
    prometheus_addr: str
    prometheus_linger: float
    prometheus_tls_cert: str | None
    prometheus_tls_key: str | None
    prometheus_tls_client_ca: str | None
    prometheus_basic_auth: tuple[str, str] | None
    port_in_use: str
    tensorboard: bool
    tensorboard_dir: str | None
    pushgateway_url: str | None
    push_interval: float
    pushgateway_keep: bool
    pushgateway_basic_auth: tuple[str, str] | None
    max_exported_layers: int
    rank_activations: bool
    update_ratio: bool
    activation_sample: int | None
    thresholds: Thresholds | None
    alerts: bool
    alertmanager_url: str | None
    webhook_url: str | None
    on_alert: Callable[[Alert], object] | None
    stop_on: Sequence[str]
    forensics_dir: str | None
    skip_on_spike: SkipOnSpike | None
    checkpoint_on: Sequence[str]
    checkpoint_dir: str | None

    #: TLS and basic auth of the ``/metrics`` endpoint (checked together when made)
    endpoint_security: EndpointSecurity = field(init=False)

    def __post_init__(self) -> None:
        check_arguments({f.name: getattr(self, f.name) for f in fields(self) if f.init})
        object.__setattr__(self, "thresholds", self.thresholds or Thresholds())
        object.__setattr__(self, "stop_on", tuple(self.stop_on))
        object.__setattr__(self, "endpoint_security", EndpointSecurity(
            self.prometheus_tls_cert, self.prometheus_tls_key, self.prometheus_tls_client_ca,
            self.prometheus_basic_auth))
