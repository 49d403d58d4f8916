"""Every option check goes through monitor/records/validation.py: one message per kind of mistake,
naming the option, whatever the class that takes it."""

from __future__ import annotations

import math

import pytest

from gradwatch import TrainingDiagnostics
from gradwatch.monitor.judging.engine import AlertEngine
from gradwatch.monitor.sinks.delivery import AlertmanagerSink, CallableAlertSink, HttpPoster
from gradwatch.monitor.sinks.endpoint import EndpointSecurity
from gradwatch.monitor.sinks.forensics import ForensicsSink
from gradwatch.monitor.records.thresholds import Thresholds

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("make, message", [
    # integers
    (lambda: AlertEngine(history_size=0), "history_size must be >= 1, got 0"),
    (lambda: AlertEngine(history_size=2.5), "history_size must be an integer, got 2.5"),
    (lambda: ForensicsSink("x", snapshots=True), "snapshots must be an integer, got True"),
    (lambda: HttpPoster("http://x", max_queue=10.0), "max_queue must be an integer, got 10.0"),
    (lambda: Thresholds(history_steps=10.5),
     "Thresholds.history_steps must be an integer, got 10.5"),
    (lambda: Thresholds(vanishing_samples=0),
     "Thresholds.vanishing_samples must be between 1 and 1000, got 0"),
    # numbers
    (lambda: HttpPoster("http://x", backoff=-1), "backoff must be a finite number > 0"),
    (lambda: AlertmanagerSink("http://x", resend_interval=math.inf),
     "resend_interval must be a finite number > 0, got inf"),
    (lambda: Thresholds(explosion_norm="big"), "Thresholds.explosion_norm must be a number"),
    (lambda: Thresholds(dead_ratio=math.nan), "Thresholds.dead_ratio must be finite, got nan"),
    (lambda: Thresholds(dead_ratio=1.5), "Thresholds.dead_ratio must be in [0.0, 1.0], got 1.5"),
    # choices, callables, instances
    (lambda: TrainingDiagnostics(port_in_use="ignore"),
     "port_in_use must be one of 'error', 'warn', got 'ignore'"),
    (lambda: TrainingDiagnostics(on_alert=42), "on_alert must be callable or None, got 42"),
    (lambda: CallableAlertSink("print"), "fn must be callable, got 'print'"),
    (lambda: TrainingDiagnostics(thresholds={"explosion_norm": 5}),
     "thresholds must be a gradwatch.monitor.records.thresholds.Thresholds or None"),
    (lambda: TrainingDiagnostics(skip_on_spike=True),
     "skip_on_spike must be a gradwatch.monitor.capture.skip_on_spike.SkipOnSpike or None, got True"),
    # collections of names
    (lambda: AlertEngine(stop_on="GradientExplosion"),
     "stop_on must be a collection of names, e.g. stop_on=('GradientExplosion',), not the "
     "string 'GradientExplosion'"),
    (lambda: TrainingDiagnostics(stop_on="NonFiniteValues"),
     "stop_on must be a collection of names, e.g. stop_on=('NonFiniteValues',), not the "
     "string 'NonFiniteValues'"),
    (lambda: AlertEngine(stop_on=("NaNs",)), "stop_on has unknown names ['NaNs']; known: ["),
    (lambda: TrainingDiagnostics(checkpoint_on="LossSpike"),
     "checkpoint_on must be a collection of names, e.g. checkpoint_on=('LossSpike',)"),
    # folders: an existing file is no folder (its bundles, checkpoints or runs would be lost)
    (lambda: TrainingDiagnostics(forensics_dir=__file__),
     f"forensics_dir must be a folder (created if missing), got {__file__!r}: a file of that "
     "name exists"),
    (lambda: TrainingDiagnostics(checkpoint_dir=__file__), "checkpoint_dir must be a folder"),
    (lambda: TrainingDiagnostics(tensorboard_dir=__file__), "tensorboard_dir must be a folder"),
    (lambda: ForensicsSink(__file__), "directory must be a folder"),
    (lambda: ForensicsSink("x", severities=("fatal",)),
     "severities has unknown names ['fatal']; known: ['critical', 'info', 'warning']"),
])
def test_each_mistake_has_one_message_naming_the_option(make, message):
    with pytest.raises(ValueError) as error:
        make()
    assert message in str(error.value)


@pytest.mark.parametrize("make, option", [
    (lambda auth: EndpointSecurity(basic_auth=auth), "prometheus_basic_auth"),
    (lambda auth: TrainingDiagnostics(prometheus_basic_auth=auth), "prometheus_basic_auth"),
    (lambda auth: TrainingDiagnostics(pushgateway_basic_auth=auth), "pushgateway_basic_auth"),
    (lambda auth: HttpPoster("http://x", basic_auth=auth), "basic_auth"),
])
@pytest.mark.parametrize("credentials", [("user", ""), ("", "hunter2"), ("user",),
                                         "user:hunter2", ("user", 7)])
def test_basic_auth_is_checked_once_alike_and_never_echoed(make, option, credentials):
    with pytest.raises(ValueError) as error:
        make(credentials)
    assert str(error.value) == (f"{option} must be a (username, password) pair of non-empty "
                                "strings")


def test_good_credentials_are_kept_as_a_pair():
    assert EndpointSecurity(basic_auth=["user", "hunter2"]).basic_auth == ("user", "hunter2")
    poster = HttpPoster("http://x", basic_auth=("user", "hunter2"))
    assert poster.headers["Authorization"] == "Basic dXNlcjpodW50ZXIy"
    poster.close(0.1)
