"""`gradwatch doctor` against the real Prometheus and Alertmanager binaries: the whole path
passes whatever name Prometheus knows the trainer under, it waits for a trainer that is
still starting, and each failure mode explains itself with its fix."""

from __future__ import annotations

import threading

import pytest

from gradwatch.monitor.ops import doctor, rules
from gradwatch.monitor.ops.doctor import TEST_ALERT, run_checks, same_endpoint

from .conftest import binary
from .ops_servers import free_port, get_json, prometheus_config, start_prometheus, wait_until
from .test_package import ROOT
from .training_target import TrainingTarget

WEBHOOK_ROUTE = {"receiver": "hook", "group_wait": "1s", "group_interval": "1s",
                 "repeat_interval": "1h", "group_by": ["alertname", "run"]}


def webhook_config(url: str) -> dict:
    return {"route": WEBHOOK_ROUTE,
            "receivers": [{"name": "hook", "webhook_configs": [{"url": url}]}]}


def by_name(checks) -> dict[str, doctor.Check]:
    return {check.name: check for check in checks}


@pytest.mark.unit
@pytest.mark.parametrize("a, b", [
    ("localhost:9400", "http://127.0.0.1:9400/metrics"),
    ("host.docker.internal:9400", "http://127.0.0.1:9400/metrics"),
    ("http://[::1]:9400/metrics", "localhost:9400"),
])
def test_one_listener_under_several_names(a, b):
    assert same_endpoint(a, b)


@pytest.mark.unit
@pytest.mark.parametrize("a, b", [
    ("127.0.0.1:9401", "http://127.0.0.1:9400/metrics"),
    ("192.0.2.77:9400", "http://127.0.0.1:9400/metrics"),  # another machine (TEST-NET-1)
])
def test_different_listeners(a, b):
    assert not same_endpoint(a, b, local={"127.0.0.1", "::1", "0.0.0.0"})


@pytest.mark.servers
def test_the_whole_path_passes_under_another_name(prometheus_server, alertmanager_server,
                                                   webhook_receiver, scrape_target):
    alertmanager = alertmanager_server(webhook_config(webhook_receiver.url))
    port = scrape_target.rpartition(":")[2]
    # Prometheus knows the trainer as localhost:PORT; the user names it 127.0.0.1:PORT
    prometheus = prometheus_server([f"localhost:{port}"], rule_files=[ROOT / rules.RULES_PATH],
                                   alertmanager_url=alertmanager.url)
    prometheus.wait_for('gradwatch_step{run="healthy-run"}')
    checks = run_checks(f"http://127.0.0.1:{port}/metrics", prometheus.url, alertmanager.url,
                        wait=30, test_alert=True)
    assert all(check.ok for check in checks), [c.line() for c in checks]
    assert f"localhost:{port}" in by_name(checks)["Prometheus scraping the trainer"].detail
    assert "run='healthy-run'" in by_name(checks)["metrics endpoint reachable"].detail
    delivered = webhook_receiver.wait_for_alert(timeout=10, alertname=TEST_ALERT)
    assert delivered["labels"]["severity"] == "info"
    # resolved right after: no test alert stays active
    wait_until(lambda: not [a for a in alertmanager.alerts()
                            if a["labels"]["alertname"] == TEST_ALERT], 10,
               "the test alert resolved")


@pytest.mark.training
def test_it_waits_for_a_trainer_that_is_still_starting(monkeypatch):
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    found: dict = {}
    refused: list[str] = []
    get = doctor._get

    def counted_get(address: str, timeout: float) -> str:  # the doctor's requests, unchanged
        try:
            return get(address, timeout)
        except OSError:
            refused.append(address)
            raise

    monkeypatch.setattr(doctor, "_get", counted_get)
    doctor_thread = threading.Thread(
        target=lambda: found.update(doctor.read_trainer(url, timeout=2, wait=120)))
    doctor_thread.start()
    # the doctor is already polling a port nothing listens on: refused, and it tried again
    wait_until(lambda: len(refused) >= 2, 30, "the doctor to poll the silent port twice")
    training = TrainingTarget(run="late-run", port=port)
    try:
        doctor_thread.join(120)
    finally:
        training.close()
    assert found["run"] == "late-run" and int(found["step"]) >= 0


@pytest.mark.servers
def test_each_failure_of_the_prometheus_side_says_its_fix(tmp_path):
    address = doctor.outbound_address()
    if address is None:
        pytest.skip("this machine has no address but loopback")
    port = free_port()  # nothing listens there, on any address
    config = prometheus_config({"gradwatch": [f"{address}:{port}"]}, (), None, False)
    prometheus = start_prometheus(binary("prometheus"), tmp_path, config)
    try:
        def scraped_once() -> bool:
            targets = get_json(prometheus.url + "/api/v1/targets")["data"]["activeTargets"]
            return bool(targets) and all(t["health"] != "unknown" for t in targets)

        wait_until(scraped_once, 30, "a first scrape")
        checks = by_name(run_checks(f"http://127.0.0.1:{port}/metrics", prometheus.url,
                                    f"http://127.0.0.1:{free_port()}", timeout=2, wait=1,
                                    test_alert=True))
        with pytest.raises(doctor.Failed) as no_target:
            doctor.find_target(prometheus.url, f"http://127.0.0.1:{free_port()}/metrics", None, 2)
    finally:
        prometheus.stop()
    lines = {name: check.line() for name, check in checks.items()}
    assert checks["thresholds valid"].ok
    assert "nothing answered within 1s" in lines["metrics endpoint reachable"]
    assert "log line" in lines["metrics endpoint reachable"]
    scraping = lines["Prometheus scraping the trainer"]
    assert scraping.startswith("[FAIL]") and f"{address}:{port}" in scraping
    # nothing answers doctor either: the trainer is not running, not a Docker network issue
    assert "refused" in scraping and "the trainer is not running" in scraping
    assert "prometheus_addr" not in scraping
    assert "gradwatch rules" in lines["alert rules loaded"]
    assert "rule_files" in lines["alert rules loaded"]
    assert "alerting.alertmanagers" in lines["Prometheus sends alerts to Alertmanager"]
    assert "[FAIL] Alertmanager reachable" in lines["Alertmanager reachable"]
    assert "unreachable" in lines["Alertmanager reachable"]
    assert lines["test alert reaches the receiver"].startswith("[skip]")
    assert "gradwatch targets --host host.docker.internal" in str(no_target.value)
    assert "--out deploy/prometheus/targets" in str(no_target.value)  # a file, not stdout
    assert "static_configs" in str(no_target.value)  # without file_sd
    assert f"{address}:{port}" in str(no_target.value)  # the targets it does have


@pytest.mark.servers
def test_a_test_alert_without_delivery_says_why(alertmanager_server):
    nowhere = alertmanager_server({"route": {"receiver": "null"},
                                   "receivers": [{"name": "null"}]})
    check = by_name(run_checks(alertmanager_url=nowhere.url, wait=5, test_alert=True))
    line = check["test alert reaches the receiver"].line()
    assert line.startswith("[FAIL]") and "receiver null, which has no integration" in line

    dead = alertmanager_server(webhook_config(f"http://127.0.0.1:{free_port()}/alerts"))
    check = by_name(run_checks(alertmanager_url=dead.url, wait=20, test_alert=True))
    line = check["test alert reaches the receiver"].line()
    assert line.startswith("[FAIL]") and "could not deliver to receiver hook (webhook)" in line


@pytest.mark.servers
def test_it_waits_for_prometheus_to_scrape_the_trainer_once(tmp_path, scrape_target):
    """Right after Prometheus starts (scrapes 5 s apart: the first comes within 5 s) the
    target is listed but not scraped: doctor waits for that scrape instead of failing on
    "unknown"."""
    config = prometheus_config({"gradwatch": [scrape_target]}, (), None, False)
    config["global"]["scrape_interval"] = "5s"
    prometheus = start_prometheus(binary("prometheus"), tmp_path, config)
    try:
        check = by_name(run_checks(f"http://{scrape_target}/metrics", prometheus.url,
                                   timeout=2, wait=30))["Prometheus scraping the trainer"]
    finally:
        prometheus.stop()
    assert check.ok, check.line()
    assert f"target {scrape_target} (job gradwatch) up" in check.detail


@pytest.mark.servers
def test_a_trainer_reachable_here_but_not_from_prometheus_is_told_apart(tmp_path):
    """The trainer serves on 127.0.0.1 only; Prometheus scrapes this machine's other address
    (as a container scrapes the Docker bridge): the trainer answers doctor, so the fix is
    its prometheus_addr, not starting it."""
    address = doctor.outbound_address()
    if address is None or address.startswith("127."):
        pytest.skip("this machine has no address but loopback")
    training = TrainingTarget(run="loopback-run", steps=40)  # then held open until closed
    port = training.target.rpartition(":")[2]
    config = prometheus_config({"gradwatch": [f"{address}:{port}"]}, (), None, False)
    prometheus = start_prometheus(binary("prometheus"), tmp_path, config)
    try:
        checks = by_name(run_checks(f"http://127.0.0.1:{port}/metrics", prometheus.url,
                                    timeout=2, wait=30))
    finally:
        prometheus.stop()
        training.close()
    assert checks["metrics endpoint reachable"].ok
    line = checks["Prometheus scraping the trainer"].line()
    assert line.startswith("[FAIL]") and "refused" in line, line
    assert "the trainer answers here, not from where Prometheus runs" in line
    assert "prometheus_addr" in line and "not running" not in line


@pytest.mark.servers
def test_an_alertmanager_given_as_prometheus_is_named(alertmanager_server):
    alertmanager = alertmanager_server(webhook_config("http://127.0.0.1:9/alerts"))
    checks = by_name(run_checks(prometheus_url=alertmanager.url, timeout=2, wait=0))
    for name in ("Prometheus scraping the trainer", "alert rules loaded",
                 "Prometheus sends alerts to Alertmanager"):
        line = checks[name].line()
        assert line.startswith("[FAIL]") and "that is not Prometheus" in line, line
        assert "--prometheus-url" in line and "Error" not in line, line
