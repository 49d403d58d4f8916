"""`gradwatch doctor`: is the whole path from a trainer to an alert working?

The checks follow a sample and an alert: the thresholds, the trainer's ``/metrics``
(waited for while training starts), Prometheus scraping that trainer (found by address and
port, whatever name Prometheus knows it under, or by the ``run`` label), the gradwatch
rules loaded, Prometheus's Alertmanager, Alertmanager itself and, on request, a test alert
delivered to the receiver. Each says pass, FAIL (why, and the fix) or skip (what it needs).
"""

from __future__ import annotations

import ipaddress
import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import yaml
from prometheus_client.parser import text_string_to_metric_families

from ..records.alert_table import RULE_NAMES
from ..records.thresholds import Thresholds

#: The alert rules a working stack has loaded: the alert table's rule alerts.
CONTRACT_ALERTS = RULE_NAMES
#: The test alert's name: no rule, detector or route of gradwatch uses it.
TEST_ALERT = "GradwatchDoctorTest"
#: Names by which a container reaches its Docker host (the compose file's extra_hosts, and
#: the default bridge's gateway).
DOCKER_HOST_NAMES = frozenset({"host.docker.internal", "172.17.0.1"})
POLL_SECONDS = 0.5


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool | None  # None: skipped
    detail: str

    def line(self) -> str:
        mark = "skip" if self.ok is None else "pass" if self.ok else "FAIL"
        return f"[{mark}] {self.name}: {self.detail}"


class Failed(Exception):
    """A check's failure: what is wrong and what to do about it."""


def _get(url: str, timeout: float) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


def _api(base: str, path: str, timeout: float, **params: str):
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    return json.loads(_get(f"{base}{path}{query}", timeout))


def _prometheus_api(prometheus_url: str, path: str, timeout: float, **params: str) -> dict:
    """Prometheus's HTTP API at ``path``; what is not Prometheus answering is a Failed that
    says so (an Alertmanager's address given for Prometheus's, nothing listening)."""
    try:
        answer = _api(prometheus_url, path, timeout, **params)
    except urllib.error.HTTPError as exc:
        raise Failed(f"{prometheus_url} answered HTTP {exc.code} to {path}: that is not "
                     "Prometheus; give --prometheus-url Prometheus's own address (e.g. "
                     "http://127.0.0.1:9090; an Alertmanager usually answers on :9093)") from None
    except OSError as exc:
        raise _unreachable("Prometheus", prometheus_url, exc, "is it running (docker compose "
                           "up -d) and is this its address (--prometheus-url)?") from None
    except ValueError:  # not JSON
        answer = None
    if not isinstance(answer, dict) or answer.get("status") != "success":
        raise Failed(f"{prometheus_url}{path} is not Prometheus's API (no JSON status): give "
                     "--prometheus-url Prometheus's own address (e.g. http://127.0.0.1:9090)")
    return answer


def _check(name: str, needed: str | None, probe: Callable[[str], str]) -> Check:
    """``probe(needed)``: pass with its detail, FAIL with why; skipped without ``needed``."""
    if needed is None:
        return Check(name, None, "no address given")
    try:
        return Check(name, True, probe(needed))
    except Failed as failure:
        return Check(name, False, str(failure))
    except Exception as exc:  # any other failure of the probe is the answer
        return Check(name, False, f"{type(exc).__name__}: {exc}")


def _unreachable(what: str, url: str, exc: Exception, fix: str) -> Failed:
    reason = getattr(exc, "reason", exc)
    return Failed(f"{what} {url} unreachable ({reason}): {fix}")


# --------------------------------------------------------------------------- addresses

def _host_port(address: str) -> tuple[str, int | None]:
    """``host:port``, ``[v6]:port`` or a URL -> (host, port)."""
    parts = urllib.parse.urlsplit(address if "//" in address else f"//{address}")
    return (parts.hostname or "").lower(), parts.port


def _local_addresses() -> set[str]:
    """The addresses of this machine (loopback, any-address, its own interfaces)."""
    local = {"0.0.0.0", "::"}
    for name in ("localhost", socket.gethostname()):
        local |= _resolve(name)
    return local | {address for address in [outbound_address()] if address}


def outbound_address() -> str | None:
    """This machine's address on its default route (a UDP "connect" sends no packet)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("198.51.100.1", 9))  # TEST-NET-2: never reached
            return probe.getsockname()[0]
    except OSError:  # no route at all: only loopback
        return None


def _resolve(host: str) -> set[str]:
    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except OSError:  # a name only a container resolves (e.g. a compose service)
        return set()


def _is_local(host: str, local: set[str]) -> bool:
    if host in DOCKER_HOST_NAMES:
        return True
    addresses = _resolve(host) or {host}
    return any(_loopback(a) or a in local for a in addresses)


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def same_endpoint(a: str, b: str, local: set[str] | None = None) -> bool:
    """Whether two addresses name the same listener: the same port, and hosts that resolve
    to a common address or both to this machine (localhost, 127.0.0.1, its own addresses,
    host.docker.internal from a container)."""
    (host_a, port_a), (host_b, port_b) = _host_port(a), _host_port(b)
    if port_a != port_b:
        return False
    if host_a == host_b or (_resolve(host_a) & _resolve(host_b)):
        return True
    local = _local_addresses() if local is None else local
    return _is_local(host_a, local) and _is_local(host_b, local)


# --------------------------------------------------------------------------- the checks

def check_thresholds(thresholds_file: str | None) -> Check:
    try:
        t = Thresholds.from_file(thresholds_file) if thresholds_file else Thresholds()
    except (OSError, ValueError, TypeError) as exc:
        return Check("thresholds valid", False, str(exc))
    return Check("thresholds valid", True, f"{len(Thresholds.documented())} thresholds "
                 f"({thresholds_file or 'defaults'}); explosion_norm={t.explosion_norm:g}")


def read_trainer(metrics_url: str, timeout: float, wait: float) -> dict[str, str]:
    """The trainer's ``gradwatch_step`` labels and value, waiting up to ``wait`` seconds for
    the endpoint to come up and for its first step."""
    deadline = time.monotonic() + wait
    while True:
        try:
            families = {f.name: f for f in text_string_to_metric_families(
                _get(metrics_url, timeout))}
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                raise Failed(f"{metrics_url} asks for credentials (prometheus_basic_auth): "
                             "doctor reads it without; check Prometheus's target "
                             "instead (--prometheus-url)") from None
            raise Failed(f"{metrics_url} answered HTTP {exc.code}: is that the trainer's "
                         "/metrics? (the gradwatch start-up log line names it)") from None
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise _unreachable("the trainer's /metrics", metrics_url, exc,
                                   f"nothing answered within {wait:g}s; is the training "
                                   "running with prometheus_port set? The gradwatch log "
                                   "line at the fit's start names the URL actually bound "
                                   "(--wait for a slower start)") from None
        else:
            step = families.get("gradwatch_step")
            if step is not None and step.samples:
                sample = step.samples[0]
                return {**sample.labels, "step": str(int(sample.value))}
            if time.monotonic() >= deadline:
                raise Failed(f"{metrics_url} answers, but without gradwatch_step after "
                             f"{wait:g}s: the training has not finished a first step yet, "
                             "or this is not a gradwatch endpoint (--wait for longer)")
        time.sleep(POLL_SECONDS)


class NotYet(Failed):
    """A check that may pass once Prometheus has (re)loaded its targets and scraped them."""


def find_target(prometheus_url: str, metrics_url: str | None, run: str | None,
                timeout: float, wait: float = 0.0, trainer_answers: bool | None = None) -> str:
    """The scrape target of this trainer, found by resolved address and port or by the
    ``run`` label of its series; it must be up. Waits up to ``wait`` seconds for Prometheus
    to list it and scrape it once (a Prometheus just started has done neither).
    ``trainer_answers``: whether the trainer's /metrics answered doctor itself (None:
    not checked), which tells a trainer that is not running from one Prometheus cannot
    reach."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return _find_target_once(prometheus_url, metrics_url, run, timeout,
                                     trainer_answers)
        except NotYet as pending:
            if time.monotonic() >= deadline:
                raise Failed(f"{pending} (after {wait:g}s; --wait for longer)") from None
        time.sleep(POLL_SECONDS)


def _find_target_once(prometheus_url: str, metrics_url: str | None, run: str | None,
                      timeout: float, trainer_answers: bool | None) -> str:
    if run:
        query = f"up and on(instance, job) gradwatch_step{{run={json.dumps(run)}}}"
        answer = _prometheus_api(prometheus_url, "/api/v1/query", timeout, query=query)
        for series in answer["data"]["result"]:
            if series["value"][1] == "1":
                labels = series["metric"]
                return (f"target {labels.get('instance')} (job {labels.get('job')}) up, "
                        f"series of run {run!r} stored")
    targets = _prometheus_api(prometheus_url, "/api/v1/targets", timeout)["data"][
        "activeTargets"]
    if metrics_url:
        local = _local_addresses()
        ours = [t for t in targets if same_endpoint(t["scrapeUrl"], metrics_url, local)]
    else:
        ours = [t for t in targets if t["labels"].get("job") == "gradwatch"]
    if not ours:
        raise NotYet(_no_target(metrics_url, targets))
    up = [t for t in ours if t["health"] == "up"]
    if up:
        return f"target {up[0]['labels'].get('instance')} (job {up[0]['labels'].get('job')}) up"
    target = ours[0]
    if target["health"] == "unknown":
        raise NotYet(f"Prometheus lists {target['scrapeUrl']} but has not scraped it yet")
    raise Failed(_down(target, metrics_url, trainer_answers))


def _no_target(metrics_url: str | None, targets: list[dict]) -> str:
    host, port = _host_port(metrics_url or "127.0.0.1:9400")
    host = "host.docker.internal" if _loopback_name(host) else host
    known = ", ".join(sorted(t["labels"].get("instance", "?") for t in targets)) or "none"
    return (f"Prometheus has no target for {metrics_url or 'the gradwatch job'} (its "
            f"targets: {known}): add {host}:{port} to a scrape job's static_configs in "
            f"prometheus.yml, or, with the file_sd of deploy/prometheus/prometheus.yml, run "
            f"gradwatch targets --host {host} --port {port} --out deploy/prometheus/targets "
            "(Prometheus in Docker reaches the host as host.docker.internal)")


def _down(target: dict, metrics_url: str | None, trainer_answers: bool | None) -> str:
    """Why a target is down, told apart: the trainer not running, or not reachable from
    where Prometheus runs."""
    error = target.get("lastError") or target["health"]
    where = f"Prometheus scrapes {target['scrapeUrl']} but it is {target['health']} ({error})"
    if not any(word in error for word in ("refused", "timeout", "deadline", "no route")):
        return where
    if trainer_answers is False:
        return (f"{where}, and nothing answers at {metrics_url} from here either: the "
                "trainer is not running (or not with this prometheus_port); start the "
                "training, then run doctor again")
    unreachable = ("the trainer binds 127.0.0.1 by default, which a Prometheus in a container "
                   "cannot reach: set prometheus_addr (the Docker bridge 172.17.0.1, or 0.0.0.0 "
                   "behind a firewall, with basic auth/TLS; docs/ops.md)")
    if trainer_answers:
        return f"{where}: the trainer answers here, not from where Prometheus runs; {unreachable}"
    return (f"{where}: either the trainer is not running (--metrics-url checks that from "
            f"here) or {unreachable}")


def _loopback_name(host: str) -> bool:
    return host == "localhost" or _loopback(host) or host in ("0.0.0.0", "::")


def check_rules(prometheus_url: str, timeout: float) -> str:
    groups = _prometheus_api(prometheus_url, "/api/v1/rules", timeout)["data"]["groups"]
    names = {r["name"] for g in groups for r in g["rules"] if r.get("type") == "alerting"}
    missing = [n for n in CONTRACT_ALERTS if n not in names]
    if missing:
        raise Failed(f"alert rules missing: {', '.join(missing)}: write them with "
                     "gradwatch rules and list that file under rule_files in prometheus.yml "
                     "(then reload Prometheus)")
    return f"all {len(CONTRACT_ALERTS)} gradwatch alert rules loaded"


def check_prometheus_alertmanager(prometheus_url: str, alertmanager_url: str | None,
                                  timeout: float) -> str:
    data = _prometheus_api(prometheus_url, "/api/v1/alertmanagers", timeout)["data"]
    active = [a["url"] for a in data.get("activeAlertmanagers", [])]
    if not active:
        raise Failed("Prometheus sends its alerts to no Alertmanager: add alerting."
                     "alertmanagers to prometheus.yml (deploy/prometheus/prometheus.yml "
                     "has one)")
    if alertmanager_url:
        local = _local_addresses()
        resolvable = [url for url in active if _resolve(_host_port(url)[0])]
        if resolvable and len(resolvable) == len(active) and not any(
                same_endpoint(url, alertmanager_url, local) for url in active):
            raise Failed(f"Prometheus sends alerts to {', '.join(active)}, not to "
                         f"{alertmanager_url}: fix alerting.alertmanagers in prometheus.yml")
    return f"Prometheus sends alerts to {', '.join(active)}"


def check_alertmanager(alertmanager_url: str, timeout: float) -> str:
    try:
        _get(f"{alertmanager_url}/-/ready", timeout)
        status = _api(alertmanager_url, "/api/v2/status", timeout)
    except OSError as exc:
        raise _unreachable("Alertmanager", alertmanager_url, exc,
                           "is it running (docker compose up -d) and is this its address?"
                           ) from None
    return f"ready, version {status.get('versionInfo', {}).get('version', '?')}"


def _notifications(alertmanager_url: str, timeout: float) -> dict[str, tuple[float, float]]:
    """Per integration (webhook, slack, ...): notification requests delivered and failed so
    far (each attempt counts, so a first failed attempt shows before any retry gives up)."""
    counts: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(_get(f"{alertmanager_url}/metrics", timeout)):
        column = {"alertmanager_notification_requests": 0,
                  "alertmanager_notification_requests_failed": 1}.get(family.name)
        if column is None:
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                counts.setdefault(sample.labels.get("integration", "?"), [0.0, 0.0])[column] \
                    += sample.value
    return {k: (requests - failed, failed) for k, (requests, failed) in counts.items()}


def _integrations(alertmanager_url: str, receiver: str, timeout: float) -> list[str]:
    """The receiver's integrations (``webhook``, ``slack``, ...) from the loaded config."""
    config = yaml.safe_load(_api(alertmanager_url, "/api/v2/status", timeout)["config"]
                            ["original"])
    for entry in config.get("receivers") or []:
        if entry.get("name") == receiver:
            return [key.removesuffix("_configs") for key, value in entry.items()
                    if key.endswith("_configs") and value]
    return []


def _post_alert(alertmanager_url: str, labels: dict[str, str], timeout: float,
                ends_at: str | None = None) -> None:
    alert: dict[str, object] = {
        "labels": labels,
        "annotations": {"summary": "gradwatch doctor's test alert: the path to this receiver "
                                   "works (nothing is wrong with any training)"}}
    if ends_at:
        alert["endsAt"] = ends_at
    request = urllib.request.Request(f"{alertmanager_url}/api/v2/alerts",
                                     data=json.dumps([alert]).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=timeout).close()


def send_test_alert(alertmanager_url: str, timeout: float, wait: float) -> str:
    """Post a test alert, find the receiver it is routed to and wait for that receiver's
    integration to count a delivered notification (or a failed one)."""
    before = _notifications(alertmanager_url, timeout)
    labels = {"alertname": TEST_ALERT, "severity": "info", "run": f"doctor-{uuid.uuid4().hex[:8]}"}
    _post_alert(alertmanager_url, labels, timeout)
    try:
        held = _api(alertmanager_url, "/api/v2/alerts", timeout,
                    filter=f'run="{labels["run"]}"')
        receivers = sorted({r["name"] for a in held for r in a.get("receivers", [])})
        if not receivers:
            raise Failed("Alertmanager accepted the test alert but holds it for no receiver")
        integrations = sorted({i for r in receivers
                               for i in _integrations(alertmanager_url, r, timeout)})
        if not integrations:
            raise Failed(f"the test alert is routed to receiver {', '.join(receivers)}, which "
                         "has no integration (webhook_configs, slack_configs, ...): nothing "
                         "is delivered; give it one in alertmanager.yml")
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            now = _notifications(alertmanager_url, timeout)
            grew = {i: (now.get(i, (0, 0))[0] - before.get(i, (0, 0))[0],
                        now.get(i, (0, 0))[1] - before.get(i, (0, 0))[1]) for i in integrations}
            if any(failed > 0 for _, failed in grew.values()):
                raise Failed(f"Alertmanager could not deliver to receiver "
                             f"{', '.join(receivers)} ({', '.join(integrations)}): its log "
                             "says why; check the receiver's URL and that it is running")
            if any(sent > 0 for sent, _ in grew.values()):
                return (f"test alert delivered to receiver {', '.join(receivers)} "
                        f"({', '.join(integrations)})")
            time.sleep(POLL_SECONDS)
        raise Failed(f"no notification to receiver {', '.join(receivers)} within {wait:g}s: "
                     "its route's group_wait may be longer (--wait), or the alert was "
                     "inhibited or silenced")
    finally:  # resolve it at once: a test alert must not stay firing
        _post_alert(alertmanager_url, labels, timeout,
                    ends_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def run_checks(metrics_url: str | None = None, prometheus_url: str | None = None,
               alertmanager_url: str | None = None, thresholds_file: str | None = None,
               timeout: float = 5.0, wait: float = 30.0, test_alert: bool = False
               ) -> list[Check]:
    """Every check, in the order a sample and an alert travel.

    Args:
        timeout: seconds per request.
        wait: seconds to wait for the trainer's first step and for the test alert's delivery.
        test_alert: post a test alert (``GradwatchDoctorTest``, resolved right after) to
            Alertmanager and wait until its receiver is notified; off by default, because the
            receiver really is notified.
    """
    trainer: dict[str, str] = {}

    def endpoint(url: str) -> str:
        trainer.update(read_trainer(url, timeout, wait))
        return f"run={trainer.get('run')!r} at step {trainer['step']}"

    checks = [check_thresholds(thresholds_file),
              _check("metrics endpoint reachable", metrics_url, endpoint)]
    answered = checks[-1].ok  # None: not checked
    checks.append(_check("Prometheus scraping the trainer", prometheus_url,
                         lambda url: find_target(url, metrics_url, trainer.get("run"), timeout,
                                                 wait, trainer_answers=answered)))
    checks.append(_check("alert rules loaded", prometheus_url,
                         lambda url: check_rules(url, timeout)))
    checks.append(_check("Prometheus sends alerts to Alertmanager", prometheus_url,
                         lambda url: check_prometheus_alertmanager(url, alertmanager_url,
                                                                  timeout)))
    checks.append(_check("Alertmanager reachable", alertmanager_url,
                         lambda url: check_alertmanager(url, timeout)))
    if not test_alert:
        checks.append(Check("test alert reaches the receiver", None,
                            "--test-alert sends one (your receiver is notified)"))
    elif checks[-1].ok:
        checks.append(_check("test alert reaches the receiver", alertmanager_url,
                             lambda url: send_test_alert(url, timeout, wait)))
    else:
        checks.append(Check("test alert reaches the receiver", None,
                            "needs a reachable Alertmanager"))
    return checks
