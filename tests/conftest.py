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
