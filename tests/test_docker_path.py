"""The compose path as docs/ops.md writes it: the containerised Prometheus scrapes the host's
trainer through host.docker.internal, which reaches the host's bridge address, not its
loopback. No Docker engine runs here: Compose validates the file, and a real Prometheus
scrapes a real trainer bound to a non-loopback address of this machine."""

from __future__ import annotations

import json
import socket

import pytest

from gradwatch.monitor.ops import doctor
from gradwatch.monitor.sinks.prometheus import PrometheusSink
from gradwatch.monitor.ops.targets import target_group

from .test_ops_configs import ROOT, compose_config  # noqa: F401  (a fixture)
from .training_target import TrainingTarget

DOCUMENTED_TARGET = "gradwatch targets --host host.docker.internal --port 9400"
DOCUMENTED_BIND = 'prometheus_addr="172.17.0.1"'


@pytest.fixture
def host_address() -> str:
    address = doctor.outbound_address()
    if address is None:
        pytest.skip("this machine has no address but loopback")
    return address


@pytest.mark.unit
def test_the_default_loopback_bind_refuses_the_containers_route(host_address):
    sink = PrometheusSink("loopback-run")
    port = sink.serve(0)
    try:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((host_address, port), timeout=5).close()
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    finally:
        sink.close()


@pytest.mark.servers
def test_a_trainer_bound_to_a_host_address_is_scraped_through_it(host_address,
                                                                  prometheus_server):
    training = TrainingTarget(run="bridge-run", addr=host_address)
    try:
        assert training.target.startswith(f"{host_address}:")
        prometheus = prometheus_server([training.target])
        (series,) = prometheus.wait_for('gradwatch_step{run="bridge-run"}')
        assert series["metric"]["instance"] == training.target
        (up,) = prometheus.query(f'up{{instance="{training.target}"}}')
        assert up["value"][1] == "1"
    finally:
        training.close()


@pytest.mark.servers
def test_the_documented_target_is_what_the_stack_scrapes(compose_config):  # noqa: F811
    prometheus = compose_config["services"]["prometheus"]
    extra_hosts = prometheus["extra_hosts"]
    # Compose writes the mapping as "host=address" (the file says "host:address")
    assert "host.docker.internal=host-gateway" in extra_hosts, extra_hosts
    mounts = {v["target"]: v["source"] for v in prometheus["volumes"] if v["type"] == "bind"}
    assert mounts["/etc/prometheus"] == str(ROOT / "deploy" / "prometheus")
    example = json.loads((ROOT / "deploy/prometheus/targets/trainer.json.example").read_text())
    assert [entry["targets"] for entry in example] == [
        group["targets"] for group in target_group("host.docker.internal", 9400)]
    for doc in ("README.md", "docs/ops.md"):
        text = (ROOT / doc).read_text()
        assert DOCUMENTED_TARGET in text and DOCUMENTED_BIND in text, doc
    # what doctor accepts as the same trainer: the documented target and the bound address
    assert doctor.same_endpoint("host.docker.internal:9400", "http://172.17.0.1:9400/metrics")
