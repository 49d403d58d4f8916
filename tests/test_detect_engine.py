"""AlertEngine: firing state, resolution, regime, escalation, stop flag, Alert format,
init audit, forensics bundles."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from .detect_fixtures import FakeMonitor, pulse, snapshot
from gradwatch.monitor.records.alert_table import RUNBOOK_BASE_URL
from .helpers import alert_of
from gradwatch.monitor.records.findings import ALERT_NAMES, Alert, Finding
from gradwatch.monitor.judging.engine import AlertEngine
from gradwatch.monitor.judging.catalog import default_detectors
from gradwatch.monitor.sinks.forensics import ForensicsSink
from gradwatch.monitor.judging.init_audit import audit_initialization
from gradwatch.monitor.probes.weight_audit import audit_weights, following_activations
from gradwatch.monitor.records.thresholds import Thresholds

pytestmark = pytest.mark.unit


def alerts_of(monitor):
    return [item for method, item in monitor.published if method == "on_alert"]


def test_fires_once_and_resolves_with_the_same_identity():
    engine, mon = AlertEngine(), FakeMonitor()
    for i in range(20):
        engine.on_pulse(pulse(i), mon)
    for i in range(20, 25):  # five exploding steps in a row
        engine.on_pulse(pulse(i, norm=1e5), mon)
    assert [a.name for a in alerts_of(mon)] == ["GradientExplosion"]
    assert engine.regime == "exploding" and set(engine.active) == {"GradientExplosion"}
    for i in range(25, 40):
        engine.on_pulse(pulse(i), mon)
    fired, resolved = alerts_of(mon)
    assert resolved.status == "resolved" and fired.status == "firing"
    assert resolved.labels() == fired.labels() and resolved.starts_at == fired.starts_at
    # resolved on the history_min_steps-th calm step (25 + 10 - 1), at its time
    assert resolved.step == 34 and resolved.ends_at == pulse(34).time
    assert engine.regime == "healthy" and not engine.active
    assert list(engine.history) == [fired, resolved]


def test_regime_worst_active_wins_and_nonfinite_escalates():
    engine, mon = AlertEngine(), FakeMonitor()
    for i in range(3):
        engine.on_snapshot(snapshot(i, grad_norm=[1e-9, 1e-8, 1.0, 1.0],
                                    update_ratio=[1e-9, 1e-9, 1e-3, 1e-3]), mon)
    assert engine.regime == "vanishing"
    engine.on_pulse(pulse(3, norm=1e6), mon)
    assert engine.regime == "exploding"
    engine.on_pulse(pulse(4, loss=math.nan, norm=math.nan), mon)
    assert mon.escalations == [int(Thresholds().escalation_steps)]
    engine.on_snapshot(snapshot(5, origin="l0"), mon)
    assert engine.regime == "nonfinite"
    nonfinite = engine.active["NonFiniteValues"]
    assert nonfinite.step == 4 and nonfinite.origin_exact is False


def test_should_stop_only_for_configured_names():
    engine, mon = AlertEngine(stop_on=("NonFiniteValues",)), FakeMonitor()
    engine.on_pulse(pulse(0, norm=1e6), mon)
    assert not engine.should_stop
    engine.on_pulse(pulse(1, loss=math.nan), mon)
    engine.flush(mon)
    assert engine.should_stop and engine.active["NonFiniteValues"].origin_exact is None


@pytest.mark.parametrize("kwargs, option", [
    ({"stop_on": ("NaNs",)}, "stop_on"),
    ({"stop_on": "NonFiniteValues"}, "stop_on"),
    ({"history_size": 0}, "history_size"),
])
def test_bad_config_names_the_option(kwargs, option):
    with pytest.raises(ValueError, match=option):
        AlertEngine(**kwargs)


def test_engine_adopts_the_monitor_thresholds_and_survives_a_failing_detector(caplog):
    class Broken:
        name = "GradientExplosion"

        def on_pulse(self, pulse):
            raise RuntimeError("bug")

    strict = Thresholds(explosion_norm=5.0)
    engine, mon = AlertEngine(), FakeMonitor(thresholds=strict)
    engine.on_pulse(pulse(0, norm=6.0), mon)
    assert engine.thresholds is strict and "GradientExplosion" in engine.active
    broken = AlertEngine(detectors=[Broken()])
    for i in range(3):
        broken.on_pulse(pulse(i), mon)
    assert sum("detector Broken failed" in r.message for r in caplog.records) == 1


def test_history_is_bounded():
    engine, mon = AlertEngine(history_size=3), FakeMonitor()
    for i in range(10):  # fire/resolve GradientExplosion repeatedly
        engine.on_pulse(pulse(i * 20, norm=1e6), mon)
        for j in range(1, 12):
            engine.on_pulse(pulse(i * 20 + j), mon)
    assert len(engine.history) == 3 and len(alerts_of(mon)) == 20


def test_alert_names_are_all_declared():
    detector_names = {d.name for d in default_detectors(Thresholds())}
    assert detector_names | {"InitializationSuspect", "SymmetricInitialization"} == set(
        ALERT_NAMES)


def make_alert(**fields) -> Alert:
    base = dict(name="GradientVanishing", severity="critical", status="firing", run="r1",
                rank=2, step=10, layers=("enc.0", "enc.1"), value=1e-5, threshold=1e-3,
                summary="s", description="d", remedy="fix", regime="vanishing",
                origin_exact=None, starts_at=1.0, ends_at=None)
    base.update(fields)
    return alert_of(**base)


def test_alert_labels_and_annotations():
    alert = make_alert()
    # one alert per (run, alertname), as the Prometheus rules' copy: the layers and the rank
    # are annotations
    assert alert.labels() == {"alertname": "GradientVanishing", "severity": "critical",
                              "run": "r1", "layer": "", "regime": "vanishing"}
    assert alert.labels(world_size=4) == alert.labels()
    assert alert.annotations(world_size=4)["rank"] == "2"
    assert alert.annotations() == {"summary": "s", "description": "d", "remedy": "fix",
                                   "runbook_url": f"{RUNBOOK_BASE_URL}#gradientvanishing",
                                   "layers": "enc.0, enc.1"}
    # an in-process per-layer warning keeps its layer
    headroom = make_alert(name="Fp16HeadroomLow")
    assert headroom.labels()["layer"] == "enc.0" and "layers" not in headroom.annotations()
    # one the rules raise too is run-wide, as the rule's copy: Alertmanager sees one alert
    dead = make_alert(name="DeadUnits")
    assert dead.labels()["layer"] == "" and dead.annotations()["layers"] == "enc.0, enc.1"
    data = make_alert(value=math.nan).to_dict()
    assert data["value"] is None and data["layers"] == ["enc.0", "enc.1"]
    json.dumps(data, allow_nan=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        alert.step = 3


def test_an_alert_is_its_finding_in_a_run():
    """The fields a Finding and an Alert share are declared once, on the Finding; the
    Alert's JSON keeps its flat shape (sinks and Alertmanager payloads read it)."""
    shared = ({f.name for f in dataclasses.fields(Finding)}
              & {f.name for f in dataclasses.fields(Alert)})
    assert shared == set()
    finding = Finding("GradientVanishing", "warning", 10, 1.0, ("enc.0",), 1e-5, 1e-3,
                      "s", "d", "fix", "vanishing")
    alert = Alert.firing(finding, run="r1", rank=2)
    assert alert.to_dict() == {
        "name": "GradientVanishing", "severity": "warning", "status": "firing", "run": "r1",
        "rank": 2, "step": 10, "layers": ["enc.0"], "value": 1e-5, "threshold": 1e-3,
        "summary": "s", "description": "d", "remedy": "fix", "regime": "vanishing",
        "origin_exact": None, "starts_at": 1.0, "ends_at": None, "runbook_url": "",
        "checkpoint": None, "run_regime": None}
    resolved = alert.resolved(step=30, when=0.5)  # never ends before it started
    assert (resolved.status, resolved.step, resolved.starts_at, resolved.ends_at) == (
        "resolved", 30, 1.0, 1.0)
    assert list(resolved.to_dict()) == list(alert.to_dict())


# ---------------------------------------------------------------- init audit

def test_init_audit_expectations_per_activation():
    model = nn.Sequential(nn.Linear(10, 30), nn.BatchNorm1d(30), nn.ReLU(), nn.Linear(30, 20),
                          nn.Tanh(), nn.Linear(20, 5))
    following = following_activations(model)
    assert {name: type(m).__name__ if m else None for name, m in following.items()} == {
        "0": "ReLU", "3": "Tanh", "5": None}  # the BatchNorm between 0 and ReLU is skipped
    audits = {a.name: a for a in audit_weights(model)}
    assert set(audits) == {"0.weight", "3.weight", "5.weight"}
    first = audits["0.weight"]
    assert (first.fan_in, first.fan_out, first.expected) == (10, 30, 2 / 10)  # He
    assert audits["3.weight"].expected == pytest.approx(2 / 50)  # Xavier before tanh
    assert audits["5.weight"].expected == pytest.approx(2 / 25)  # Xavier, linear output
    weight = model[0].weight.detach()
    assert first.variance == pytest.approx(float(weight.var(unbiased=False)))


def test_init_audit_flags_scale_and_symmetry_not_defaults():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 16),
                          nn.ReLU(), nn.Linear(16, 4), nn.Embedding(100, 16))
    assert audit_initialization(audit_weights(model)) == []  # PyTorch defaults are within 8x; embeddings skipped
    with torch.no_grad():
        model[3].weight.mul_(10.0)  # variance x100
        model[5].weight.fill_(0.25)
    findings = {f.name: f for f in audit_initialization(audit_weights(model))}
    scale, symmetry = findings["InitializationSuspect"], findings["SymmetricInitialization"]
    assert scale.layers == ("3",) and symmetry.layers == ("5",)
    expected = float(model[3].weight.detach().var(unbiased=False)) / (2 / 8)
    assert scale.value == pytest.approx(expected) and scale.value > 8
    assert "kaiming" in scale.remedy and "symmetry is never broken" in symmetry.description


def test_engine_audit_publishes_warnings():
    engine, mon = AlertEngine(), FakeMonitor()
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    nn.init.zeros_(model[0].weight)
    alerts = engine.audit(model, mon)
    assert [a.name for a in alerts] == ["SymmetricInitialization"]
    assert alerts[0].severity == "warning" and alerts_of(mon) == alerts
    assert engine.regime == "healthy"


# ---------------------------------------------------------------- forensics

def test_forensics_bundle_holds_recent_history(tmp_path):
    sink = ForensicsSink(tmp_path / "f", pulses=3)
    for i in range(5):
        sink.on_pulse(pulse(i, loss=float(i)))
    sink.on_snapshot(snapshot(4, grad_norm=[1.0, np.nan, np.inf, 2.0]))
    sink.on_alert(make_alert(severity="warning"))  # not a chosen severity
    sink.on_alert(make_alert(status="resolved", ends_at=2.0))
    assert sink.written == []
    sink.on_alert(make_alert(run="a/b"))
    (path,) = sink.written
    assert path.name == "a_b-rank2-step10-GradientVanishing.json"
    bundle = json.loads(path.read_text())
    assert [p["loss"] for p in bundle["pulses"]] == [2.0, 3.0, 4.0]
    assert bundle["snapshots"][0]["grad_norm"] == [1.0, "nan", "inf", 2.0]
    assert bundle["alert"]["name"] == "GradientVanishing"


def test_forensics_bad_config():
    with pytest.raises(ValueError, match="pulses"):
        ForensicsSink("x", pulses=0)
    with pytest.raises(ValueError, match="severities"):
        ForensicsSink("x", severities=("fatal",))


def test_runbook_has_a_section_per_alert():
    runbook = Path(__file__).resolve().parent.parent / "docs" / "runbook.md"
    headings = [line[3:].strip() for line in runbook.read_text().splitlines()
                if line.startswith("## ")]
    assert set(headings) == set(ALERT_NAMES) | {"TrainingStalled", "TrainerDown"}
    for name in ALERT_NAMES:  # GitHub anchors: the heading lowercased
        assert make_alert(name=name).annotations()["runbook_url"].endswith(
            f"#{name.lower()}")


def test_alert_side_needs_no_torch():
    code = ("import sys, monitor.judging.engine, monitor.judging.catalog, "
            "monitor.records.findings, monitor.sinks.delivery, gradwatch.monitor.sinks.forensics; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root,
                   env={**os.environ, "PYTHONPATH": str(root)})


@pytest.mark.parametrize("field, bad", [("history_min_steps", 0),
                                        ("activation_variance_shrink", 2.0)])
def test_added_thresholds_are_documented_and_checked(field, bad):
    default, why = Thresholds.documented()[field]
    assert why and default == getattr(Thresholds(), field)
    with pytest.raises(ValueError, match=field):
        Thresholds(**{field: bad})
