"""Property-based checks of the configuration: every wrong value of every argument fails at
construction with a ValueError that names the argument; valid values never fail."""

from __future__ import annotations

import math
from dataclasses import fields

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import pytest

from gradwatch.callbacks import TrainingDiagnostics
from gradwatch.monitor.records.thresholds import Thresholds

pytestmark = pytest.mark.unit

not_int = st.one_of(st.floats(), st.text(max_size=5), st.none(), st.booleans(), st.lists(st.integers(), max_size=2))
not_bool = st.one_of(st.integers(), st.text(max_size=5), st.none(), st.floats())
not_text = st.one_of(st.just(""), st.integers(), st.floats(), st.booleans(), st.lists(st.text(), max_size=2))
not_url = st.one_of(st.text(max_size=20).filter(lambda s: not s.startswith(("http://", "https://"))),
                    st.integers(), st.booleans())

WRONG = {
    "run_name": not_text,
    "every_n_steps": st.one_of(st.integers(max_value=0), not_int),
    "prometheus_port": st.one_of(st.integers(max_value=-1), st.integers(min_value=65536),
                                 st.floats(), st.text(max_size=5), st.booleans()),
    "prometheus_addr": st.one_of(not_text, st.none()),
    "prometheus_linger": st.one_of(st.floats(max_value=-1e-9), st.just(math.nan),
                                   st.just(math.inf), st.text(max_size=3), st.booleans()),
    "prometheus_tls_cert": st.one_of(st.just("/nonexistent/cert.pem"), st.integers()),
    "prometheus_tls_key": st.one_of(st.just("/nonexistent/key.pem"), st.integers()),
    "prometheus_tls_client_ca": st.one_of(st.just("/nonexistent/ca.pem"), st.integers()),
    "port_in_use": st.one_of(st.text(max_size=6).filter(lambda s: s not in ("error", "warn")),
                             st.integers(), st.none()),
    "prometheus_basic_auth": st.one_of(st.text(max_size=5), st.tuples(st.text(), st.just("")),
                                       st.tuples(st.integers(), st.text(min_size=1))),
    "tensorboard": not_bool,
    "tensorboard_dir": not_text,
    "pushgateway_url": not_url,
    "push_interval": st.one_of(st.floats(max_value=0), st.just(math.nan), st.just(math.inf),
                               st.text(max_size=3), st.booleans()),
    "pushgateway_keep": not_bool,
    "pushgateway_basic_auth": st.one_of(st.text(max_size=5), st.tuples(st.just(""), st.text())),
    "max_exported_layers": st.one_of(st.integers(max_value=0), not_int),
    "rank_activations": not_bool,
    "update_ratio": not_bool,
    "activation_sample": st.one_of(st.integers(max_value=-1), st.floats(), st.text(max_size=3),
                                   st.booleans()),
    "thresholds": st.one_of(st.integers(), st.text(max_size=3), st.dictionaries(st.text(), st.floats())),
    "alerts": not_bool,
    "alertmanager_url": not_url,
    "webhook_url": not_url,
    "on_alert": st.one_of(st.integers(), st.text(max_size=3)),
    "stop_on": st.one_of(st.text(min_size=1, max_size=8), st.lists(st.sampled_from(["NaN", "Boom", "x"]), min_size=1)),
    "forensics_dir": not_text,
    "skip_on_spike": st.one_of(st.text(max_size=8), st.integers(), st.booleans()),
    "checkpoint_on": st.one_of(st.text(min_size=1, max_size=8),
                               st.lists(st.sampled_from(["NaN", "Boom", "x"]), min_size=1)),
    "checkpoint_dir": not_text,
}


def test_every_argument_has_a_wrong_value_strategy():
    import inspect

    assert set(WRONG) == set(inspect.signature(TrainingDiagnostics.__init__).parameters) - {"self"}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(WRONG)).flatmap(lambda name: st.tuples(st.just(name), WRONG[name])))
def test_wrong_values_are_rejected_naming_the_argument(case):
    name, value = case
    try:
        TrainingDiagnostics(**{name: value})
    except ValueError as error:
        assert name in str(error), (name, value, str(error))
    else:
        raise AssertionError(f"{name}={value!r} was accepted")


@settings(max_examples=100, deadline=None)
@given(every_n_steps=st.integers(1, 10_000), port=st.one_of(st.none(), st.integers(0, 65535)),
       interval=st.floats(min_value=1e-3, max_value=1e6), layers=st.integers(1, 100_000),
       run=st.one_of(st.none(), st.text(min_size=1, max_size=40)))
def test_valid_values_are_accepted(every_n_steps, port, interval, layers, run):
    callback = TrainingDiagnostics(run_name=run, every_n_steps=every_n_steps,
                                   prometheus_port=port, push_interval=interval,
                                   max_exported_layers=layers)
    assert callback.options.every_n_steps == every_n_steps


THRESHOLD_NAMES = [f.name for f in fields(Thresholds)]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(THRESHOLD_NAMES),
       st.one_of(st.just(math.nan), st.just(math.inf), st.just(-math.inf),
                 st.floats(max_value=-1e-9), st.text(max_size=3), st.none(), st.booleans()))
def test_bad_thresholds_are_rejected_naming_the_field(name, value):
    try:
        Thresholds(**{name: value})
    except ValueError as error:
        assert f"Thresholds.{name}" in str(error)
    else:
        raise AssertionError(f"Thresholds({name}={value!r}) was accepted")
