"""TrainingDiagnostics' arguments, checked at construction: each failure names its argument."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from ..monitor.alerts import ALERT_NAMES
from ..monitor.responses import SkipOnSpike
from ..monitor.thresholds import Thresholds
from ..monitor.validation import (
    check_activation_sample,
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


def _port(name: str, value: object) -> None:
    if value is not None:
        check_int(name, value, low=0, high=65535)


#: argument -> its check (called as check(name, value)); every argument has one
CHECKS: dict[str, Callable[[str, Any], object]] = {
    "run_name": check_text,
    "every_n_steps": partial(check_int, low=1),
    "prometheus_port": _port,
    "prometheus_addr": partial(check_text, optional=False),
    "prometheus_tls_cert": check_file,
    "prometheus_tls_key": check_file,
    "prometheus_tls_client_ca": check_file,
    "prometheus_basic_auth": check_credentials,
    "port_in_use": partial(check_choice, choices=("error", "warn")),
    "tensorboard": check_bool,
    "tensorboard_dir": check_text,
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
    "stop_on": lambda name, value: None,  # the AlertEngine checks it, against its detectors
    "forensics_dir": check_text,
    "skip_on_spike": partial(check_instance, kind=SkipOnSpike),
    "checkpoint_on": partial(check_names, known=ALERT_NAMES),
    "checkpoint_dir": check_text,
}


def check_arguments(arguments: Mapping[str, Any]) -> None:
    """Raise a ValueError naming the first wrong argument of ``arguments`` (name -> value)."""
    assert arguments.keys() == CHECKS.keys(), "every argument has its check"
    for name, check in CHECKS.items():
        check(name, arguments[name])
    if arguments["checkpoint_on"] and not arguments["alerts"]:
        raise ValueError("checkpoint_on needs alerts=True")
