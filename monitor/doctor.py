"""`gradwatch doctor`: is the whole path from a trainer to an alert working?

Each check says pass, FAIL (with why) or skip (what it needs); a check is skipped when the
address it needs was not given.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from .alert_table import RULE_NAMES
from .thresholds import Thresholds

#: The alert rules a working stack has loaded: the alert table's rule alerts.
CONTRACT_ALERTS = RULE_NAMES


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool | None  # None: skipped
    detail: str

    def line(self) -> str:
        mark = "skip" if self.ok is None else "pass" if self.ok else "FAIL"
        return f"[{mark}] {self.name}: {self.detail}"


def _get(url: str, timeout: float) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


def _check(name: str, needed: str | None, probe, timeout: float) -> Check:
    if needed is None:
        return Check(name, None, "no address given")
    try:
        ok, detail = probe(timeout)
    except Exception as exc:  # any failure of the probe is the answer
        return Check(name, False, f"{type(exc).__name__}: {exc}")
    return Check(name, ok, detail)


def run_checks(metrics_url: str | None = None, prometheus_url: str | None = None,
               alertmanager_url: str | None = None, thresholds_file: str | None = None,
               timeout: float = 5.0) -> list[Check]:
    """Every check, in the order a sample travels."""
    checks = []
    try:
        t = Thresholds.from_file(thresholds_file) if thresholds_file else Thresholds()
        checks.append(Check("thresholds valid", True, f"{len(Thresholds.documented())} "
                            f"thresholds ({thresholds_file or 'defaults'}); "
                            f"explosion_norm={t.explosion_norm:g}"))
    except (OSError, ValueError, TypeError) as exc:
        checks.append(Check("thresholds valid", False, str(exc)))

    def endpoint(timeout):
        families = {f.name: f for f in text_string_to_metric_families(_get(metrics_url, timeout))}
        step = families.get("gradwatch_step")
        if step is None or not step.samples:
            return False, "reachable, but it serves no gradwatch_step: is training running?"
        sample = step.samples[0]
        return True, f"run={sample.labels.get('run')!r} at step {int(sample.value)}"

    checks.append(_check("metrics endpoint reachable", metrics_url, endpoint, timeout))

    def scraping(timeout):
        if metrics_url:
            instance = urllib.parse.urlsplit(metrics_url).netloc
            query = f'up{{instance="{instance}"}}'
        else:
            query = "gradwatch_step"
        url = f"{prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": query})
        result = json.loads(_get(url, timeout))["data"]["result"]
        if not result:
            return False, f"Prometheus has no {query}: add the trainer (gradwatch targets)"
        if metrics_url and result[0]["value"][1] != "1":
            return False, f"{query} is {result[0]['value'][1]}: Prometheus cannot scrape it"
        return True, f"{query} = {result[0]['value'][1]}"

    checks.append(_check("Prometheus scraping the trainer", prometheus_url, scraping, timeout))

    def rules(timeout):
        groups = json.loads(_get(f"{prometheus_url}/api/v1/rules", timeout))["data"]["groups"]
        names = {r["name"] for g in groups for r in g["rules"] if r.get("type") == "alerting"}
        missing = [n for n in CONTRACT_ALERTS if n not in names]
        if missing:
            return False, f"alert rules missing: {', '.join(missing)} (gradwatch rules)"
        return True, f"all {len(CONTRACT_ALERTS)} gradwatch alert rules loaded"

    checks.append(_check("alert rules loaded", prometheus_url, rules, timeout))

    def alertmanager(timeout):
        _get(f"{alertmanager_url}/-/ready", timeout)
        status = json.loads(_get(f"{alertmanager_url}/api/v2/status", timeout))
        return True, f"ready, version {status.get('versionInfo', {}).get('version', '?')}"

    checks.append(_check("Alertmanager reachable", alertmanager_url, alertmanager, timeout))
    return checks
