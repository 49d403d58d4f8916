"""End to end with the real servers: metrics source -> Prometheus (the repository's generated
rules) -> Alertmanager (the repository's config) -> webhook; and the Pushgateway path.

The metrics source is the ``scrape_target`` / ``diverging_scrape_target`` fixture: a real
Lightning training with TrainingDiagnostics (tests/training_target.py)."""

from __future__ import annotations

from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry, Gauge, delete_from_gateway, push_to_gateway
import pytest

from gradwatch.monitor.ops import rules
from gradwatch.monitor.records.alert_table import spec
from gradwatch.monitor.records.thresholds import Thresholds
from .training_target import LAYERS
from .ops_servers import get_json, post_json, wait_until

pytestmark = pytest.mark.servers

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / rules.RULES_PATH


def repository_alertmanager_config(webhook_url: str) -> dict:
    """deploy/alertmanager/alertmanager.yml, pointed at the test receiver, with short waits."""
    config = yaml.safe_load((ROOT / "deploy/alertmanager/alertmanager.yml").read_text())
    (receiver,) = config["receivers"]
    receiver["webhook_configs"][0]["url"] = webhook_url
    config["route"].update(group_wait="1s", group_interval="1s")
    return config


def run_label(prometheus) -> str:
    return prometheus.wait_for("gradwatch_step")[0]["metric"]["run"]


def test_generated_rules_evaluate_without_errors(prometheus_server, scrape_target):
    prometheus = prometheus_server([scrape_target], rule_files=[RULES])
    prometheus.wait_for("gradwatch:grad_norm:by_depth")

    expected = len(rules.rule_groups(Thresholds())["groups"][0]["rules"])

    def evaluated_rules():
        groups = get_json(prometheus.url + "/api/v1/rules")["data"]["groups"]
        found = [r for g in groups for r in g["rules"]]
        never = "0001-01-01T00:00:00Z"  # lastEvaluation of a rule not evaluated yet
        return found if len(found) == expected and never not in {
            r["lastEvaluation"] for r in found} else None

    all_rules = wait_until(evaluated_rules, 15, "every generated rule evaluated")
    assert [r for r in all_rules if r["health"] != "ok"] == []
    assert prometheus.query("ALERTS") == [], "a healthy run must not alert"


def test_diverging_run_alert_reaches_the_webhook_through_alertmanager(
        prometheus_server, alertmanager_server, webhook_receiver, diverging_scrape_target):
    alertmanager = alertmanager_server(repository_alertmanager_config(webhook_receiver.url))
    prometheus = prometheus_server([diverging_scrape_target], rule_files=[RULES],
                                   alertmanager_url=alertmanager.url)
    run = run_label(prometheus)

    alert = webhook_receiver.wait_for_alert(alertname="NonFiniteValues", timeout=60)
    # One alert for the run, whatever the number of layers: the layers are an annotation;
    # exactly the labels the trainer uses when it pushes the same alert itself.
    rule_labels = {"alertname": "NonFiniteValues", "severity": "critical", "run": run,
                   "regime": "nonfinite"}
    assert alert["status"] == "firing"
    assert alert["labels"] == rule_labels
    assert alert["annotations"]["runbook_url"] == spec("NonFiniteValues").runbook_url()
    assert alert["annotations"]["remedy"] == spec("NonFiniteValues").remedy
    assert f"in run {run}" in alert["annotations"]["description"]
    culprits = alert["annotations"]["layers"].split(", ")
    assert 1 <= len(culprits) <= rules.CULPRITS and set(culprits) <= set(LAYERS)

    # The explosion that preceded the NaNs is inhibited by NonFiniteValues of the same run.
    def explosion_suppressed():
        return [a for a in alertmanager.alerts()
                if a["labels"]["alertname"] == "GradientExplosion"
                and a["status"]["state"] == "suppressed" and a["status"]["inhibitedBy"]]

    (explosion,) = wait_until(explosion_suppressed, 30, "GradientExplosion inhibited")
    assert explosion["labels"]["run"] == run

    # The trainer's own push of the same alert carries the very same labels: Alertmanager
    # takes it for the rule's alert (one alert, one page), not a second one.
    post_json(alertmanager.url + "/api/v2/alerts", [{
        "labels": rule_labels, "annotations": {"summary": "pushed by the trainer"}}])

    def merged():
        groups = [g for g in get_json(alertmanager.url + "/api/v2/alerts/groups")
                  if g["labels"] == {"alertname": "NonFiniteValues", "run": run}]
        alerts = [a for g in groups for a in g["alerts"]]
        return alerts if any(a["annotations"].get("summary") == "pushed by the trainer"
                             for a in alerts) else None

    (alert,) = wait_until(merged, 15, "the pushed alert merged with the rule's")
    assert alert["labels"] == rule_labels


def test_pushgateway_path(prometheus_server, pushgateway_server):
    address = pushgateway_server.url.removeprefix("http://")
    prometheus = prometheus_server({"pushgateway": [address]}, honor_labels=True)
    registry = CollectorRegistry()
    Gauge("gradwatch_step", "global step", registry=registry).set(42)
    group = {"run": "pushed-run", "rank": "1"}

    push_to_gateway(address, job=rules.TRAINER_JOB, registry=registry, grouping_key=group)
    query = 'gradwatch_step{run="pushed-run", rank="1", job="gradwatch"}'
    (sample,) = prometheus.wait_for(query)
    assert sample["value"][1] == "42"
    assert "instance" not in sample["metric"], "honor_labels keeps the pushed (empty) instance"

    delete_from_gateway(address, job=rules.TRAINER_JOB, grouping_key=group)
    wait_until(lambda: not prometheus.query(query), 15, "the deleted group to go stale")
