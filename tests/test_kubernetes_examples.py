"""The Kubernetes scraping examples parse and point at the ports the trainers serve."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

KUBE = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"


def documents(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((KUBE / name).read_text()) if d]


def test_podmonitor_scrapes_one_port_per_local_rank():
    (monitor,) = documents("podmonitor.yaml")
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
    endpoints = monitor["spec"]["podMetricsEndpoints"]
    assert [e["port"] for e in endpoints] == ["gradwatch-0", "gradwatch-1"]
    assert all(e["path"] == "/metrics" and e["honorLabels"] for e in endpoints)
    assert monitor["spec"]["selector"]["matchLabels"]


def test_servicemonitor_matches_its_service():
    service, monitor = documents("servicemonitor.yaml")
    assert (service["kind"], monitor["kind"]) == ("Service", "ServiceMonitor")
    assert service["spec"]["clusterIP"] == "None"  # every pod is scraped, not one behind a VIP
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert ports == {"gradwatch-0": 9400, "gradwatch-1": 9401}  # base port + local rank
    assert {e["port"] for e in monitor["spec"]["endpoints"]} == set(ports)
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
