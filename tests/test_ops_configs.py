"""Static checks of the stack's configuration: promtool, amtool, Compose, and the security
defaults (loopback-only ports, no default password, no anonymous Grafana)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from gradwatch.monitor.ops import rules

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_YML = ROOT / "deploy/prometheus/prometheus.yml"
ALERTMANAGER_YML = ROOT / "deploy/alertmanager/alertmanager.yml"


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, **kwargs)


def compose(docker_compose: list[str], *args: str, password: str | None):
    env = {k: v for k, v in os.environ.items() if k != "GRAFANA_ADMIN_PASSWORD"}
    if password is not None:
        env["GRAFANA_ADMIN_PASSWORD"] = password
    return run([*docker_compose, "-f", "docker-compose.yml", *args], env=env)


@pytest.fixture(scope="module")
def compose_config(docker_compose) -> dict:
    result = compose(docker_compose, "config", "--format", "json", password="s3cret-for-test")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.servers
def test_promtool_checks_prometheus_config(promtool):
    result = run([promtool, "check", "config", str(PROMETHEUS_YML)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


@pytest.mark.servers
def test_promtool_checks_the_remote_write_example(promtool):
    """The fleet example (docs/ops.md): a valid config that forwards only gradwatch series."""
    example = PROMETHEUS_YML.parent / "remote-write.example.yml"
    result = run([promtool, "check", "config", str(example)])
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(example.read_text())
    (remote,) = config["remote_write"]
    (keep,) = remote["write_relabel_configs"]

    kept = re.compile(keep["regex"])
    for name in ("gradwatch_grad_norm", "gradwatch:grad_norm:by_depth", "up", "ALERTS"):
        assert kept.fullmatch(name), name
    assert not kept.fullmatch("node_cpu_seconds_total")
    assert config["global"]["scrape_interval"] == f"{rules.SCRAPE_INTERVAL_SECONDS}s"


@pytest.mark.unit
def test_prometheus_config_matches_the_rules_assumptions():
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    assert config["global"]["scrape_interval"] == f"{rules.SCRAPE_INTERVAL_SECONDS}s"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    trainer = jobs[rules.TRAINER_JOB]
    assert trainer["file_sd_configs"][0]["files"] == ["targets/*.json"]
    assert jobs["pushgateway"]["honor_labels"] is True
    assert (PROMETHEUS_YML.parent / "rules" / rules.RULES_PATH.name).is_file()


@pytest.mark.unit
def test_file_sd_example_is_a_valid_target_list():
    example = ROOT / "deploy/prometheus/targets/trainer.json.example"
    entries = json.loads(example.read_text())
    assert entries and all(entry["targets"] for entry in entries)
    # No run label here: it would collide with the run label the exporter serves.
    assert all("run" not in entry.get("labels", {}) for entry in entries)


@pytest.mark.servers
def test_amtool_checks_alertmanager_config(amtool):
    result = run([amtool, "check-config", str(ALERTMANAGER_YML)])
    assert result.returncode == 0, result.stdout + result.stderr


def uncomment_examples(text: str) -> str:
    """The config with its commented YAML examples enabled (prose comments start with a
    capital letter and stay comments)."""
    example = re.compile(r"^(\s*)# ( *(?:- )?[a-z_]+:.*| *- .*)$")
    return "\n".join(m[1] + m[2] if (m := example.match(line)) else line
                     for line in text.splitlines()) + "\n"


@pytest.mark.servers
def test_commented_slack_and_email_examples_are_valid(amtool, tmp_path):
    enabled = tmp_path / "alertmanager.yml"
    enabled.write_text(uncomment_examples(ALERTMANAGER_YML.read_text()))
    config = yaml.safe_load(enabled.read_text())
    assert [r["name"] for r in config["receivers"]] == ["webhook", "slack", "email"]
    assert config["route"]["routes"] == [{"matchers": ["severity = critical"],
                                          "receiver": "slack"}]
    result = run([amtool, "check-config", str(enabled)])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.unit
def test_alertmanager_groups_by_run_and_inhibits_on_nonfinite():
    config = yaml.safe_load(ALERTMANAGER_YML.read_text())
    assert config["route"]["group_by"] == ["alertname", "run"]
    (inhibit,) = config["inhibit_rules"]
    assert inhibit["source_matchers"] == ["alertname = NonFiniteValues"]
    assert inhibit["target_matchers"] == ['alertname =~ "GradientExplosion|LossDivergence"']
    assert inhibit["equal"] == ["run"]


@pytest.mark.servers
def test_compose_is_valid_with_a_password(docker_compose):
    result = compose(docker_compose, "config", "-q", password="s3cret-for-test")
    assert result.returncode == 0, result.stderr


@pytest.mark.servers
@pytest.mark.parametrize("password", [None, ""])
def test_compose_refuses_to_start_without_a_password(docker_compose, password):
    result = compose(docker_compose, "config", "-q", password=password)
    assert result.returncode != 0
    assert "set GRAFANA_ADMIN_PASSWORD" in result.stderr


@pytest.mark.servers
def test_published_ports_are_loopback_only(compose_config):
    ports = [p for s in compose_config["services"].values() for p in s.get("ports", [])]
    assert len(ports) == 4
    assert all(p["host_ip"] == "127.0.0.1" for p in ports)


@pytest.mark.servers
def test_grafana_has_no_default_password_and_no_anonymous_access(compose_config):
    env = compose_config["services"]["grafana"]["environment"]
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == "s3cret-for-test"
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert env["GF_USERS_ALLOW_SIGN_UP"] == "false"


@pytest.mark.servers
def test_images_are_pinned(compose_config):
    for name, service in compose_config["services"].items():
        assert re.search(r":v?\d+\.\d+\.\d+$", service["image"]), name


@pytest.mark.servers
def test_mounted_configs_exist_in_the_repository(compose_config):
    for service in compose_config["services"].values():
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), volume["source"]
                assert volume.get("read_only") is True, volume["target"]


@pytest.mark.servers
def test_trainers_on_the_host_are_reachable(compose_config):
    for name in ("prometheus", "alertmanager"):
        extra_hosts = compose_config["services"][name]["extra_hosts"]
        assert "host.docker.internal=host-gateway" in extra_hosts
