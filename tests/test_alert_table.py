"""The alert table agrees with everything that names an alert: the generated Prometheus
rules, the in-process detectors and init audit, the AlertEngine, doctor, Alertmanager's
inhibitions, the dashboards, the docs and the runbook."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from .detect_fixtures import FakeMonitor, pulse
from gradwatch.monitor.ops import doctor, rules
from gradwatch.monitor.records.alert_table import (
    IN_PROCESS,
    IN_PROCESS_NAMES,
    RULES,
    RULE_NAMES,
    SPECS,
    TABLE,
    markdown_table,
    spec,
)
from gradwatch.monitor.records.conditions import (
    CONDITIONS,
    SHARED_NAMES,
    markdown_conditions,
)
from gradwatch.monitor.records.findings import ALERT_NAMES
from gradwatch.monitor.judging.engine import AlertEngine
from gradwatch.monitor.judging.catalog import default_detectors
from gradwatch.monitor.judging.init_audit import INIT_SCALE, INIT_SYMMETRY
from gradwatch.monitor.records.thresholds import Thresholds

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]


def shipped_alert_rules() -> dict[str, dict]:
    groups = yaml.safe_load((ROOT / rules.RULES_PATH).read_text())["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


def test_rules_say_what_the_table_says():
    found = shipped_alert_rules()
    assert sorted(found) == sorted(RULE_NAMES)
    for name, rule in found.items():
        row = spec(name)
        assert rule["labels"] == {"severity": row.severity} | (
            {"regime": row.regime} if row.regime else {}), name
        notes = rule["annotations"]
        assert notes["remedy"] == row.remedy and notes["runbook_url"] == row.runbook_url()
        assert notes["summary"] == row.summary.format(**rules.SUMMARY_FIELDS)
        # the labels the table promises are the ones the expression keeps: the trainer's
        # copy and the rule's share their labels (Alertmanager sees one alert, not two)
        if IN_PROCESS in row.sources:
            by = re.match(r"\w+ by \(([^)]*)\)", rule["expr"])
            assert by is not None, name
            assert set(by[1].replace(" ", "").split(",")) == set(row.labels), name
        kept = {"run", "layer"} if "layer" in row.labels else {"run"}
        assert all(f"$labels.{label}" in notes["summary"] + notes["description"]
                   for label in kept), name


def test_in_process_names_are_the_tables():
    detectors = {d.name for d in default_detectors(Thresholds())}
    assert detectors | {INIT_SCALE, INIT_SYMMETRY} == set(IN_PROCESS_NAMES) == set(ALERT_NAMES)


def test_fired_alerts_carry_the_tables_severity_regime_and_remedy():
    """Drive the engine into several alerts and compare each with its row."""
    engine, mon = AlertEngine(), FakeMonitor()
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.mul_(100.0)
        model[2].weight.zero_()
    engine.audit(model, mon)
    for step in range(300):
        engine.on_pulse(pulse(step, loss=1.0 + 0.01 * (step % 3), norm=1.0), mon)
    engine.on_pulse(pulse(300, loss=50.0, norm=1e6), mon)  # spike + explosion
    fired = {a.name: a for a in engine.history if a.status == "firing"}
    assert set(fired) == {INIT_SCALE, INIT_SYMMETRY, "LossSpike", "GradientExplosion"}
    for name, alert in fired.items():
        row = spec(name)
        assert (alert.severity, alert.regime) == (row.severity, row.regime), name
        assert alert.runbook_url == row.runbook_url()
        assert alert.remedy.endswith(row.remedy) or row.remedy in alert.remedy, name
        assert len(alert.summary) + len(alert.description) < 300 or name not in (
            INIT_SCALE, INIT_SYMMETRY)


def test_doctor_checks_the_tables_rule_alerts():
    assert tuple(doctor.CONTRACT_ALERTS) == RULE_NAMES


def test_dashboards_show_the_tables_rule_alerts_with_their_severity_and_remedy():
    board = json.loads((ROOT / "dashboards/gradwatch-training-health.json").read_text())
    (panel,) = [p for p in board["panels"] if p.get("title") == "Firing alerts"]
    annotation = board["annotations"]["list"][0]["expr"]
    for expr in (panel["targets"][0]["expr"], annotation):
        (names,) = re.findall(r'alertname=~"([^"]+)"', expr)
        assert names.split("|") == list(RULE_NAMES)
    colours = panel["fieldConfig"]["defaults"]["mappings"][0]["options"]
    for name in RULE_NAMES:
        row = spec(name)
        assert colours[name]["color"] == {"critical": "red", "warning": "orange"}[row.severity]
        assert f"{name} ({row.severity}): {row.remedy} [runbook]({row.runbook_url()})" in \
            panel["description"]


def test_every_alert_of_both_sides_says_its_condition_once():
    assert sorted(c.name for c in CONDITIONS) == sorted(SHARED_NAMES)
    documented = set(Thresholds.documented())
    for condition in CONDITIONS:
        assert set(condition.thresholds) <= documented, condition.name
        assert {d.fires_alone for d in condition.differences} <= {IN_PROCESS, RULES}


def test_alertmanager_inhibitions_name_table_alerts():
    config = yaml.safe_load((ROOT / "deploy/alertmanager/alertmanager.yml").read_text())
    text = yaml.safe_dump(config.get("inhibit_rules", []))
    named = set(re.findall(r"\b([A-Z][a-z]+(?:[A-Z][a-z0-9]+)+)\b", text))
    assert named and named <= set(SPECS)


def test_docs_hold_the_generated_table_and_a_runbook_section_per_alert():
    alerts_doc = (ROOT / "docs" / "alerts.md").read_text()
    assert markdown_table() in alerts_doc, "paste monitor.alert_table.markdown_table()"
    assert markdown_conditions() in alerts_doc, "paste records.conditions.markdown_conditions()"
    sections = re.findall(r"^## (\w+)", (ROOT / "docs" / "runbook.md").read_text(), re.M)
    assert {s.name for s in TABLE} <= set(sections)
    for row in TABLE:
        block = (ROOT / "docs" / "runbook.md").read_text().split(f"## {row.name}\n", 1)[1]
        assert block.lstrip().startswith(f"**Severity:** {row.severity}"), row.name


@pytest.mark.parametrize("bad", ["docs/runbook.md", "https://x/rb#a", "", None, "ftp://x"])
def test_a_runbook_base_url_must_be_absolute(bad):
    with pytest.raises(ValueError, match="runbook_base_url"):
        AlertEngine(runbook_base_url=bad)
