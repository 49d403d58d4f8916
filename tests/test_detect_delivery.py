"""Alert delivery: a real Alertmanager, a webhook receiver, a receiver that is down."""

from __future__ import annotations

import base64
import logging
import math
import threading
import time
from datetime import datetime

import pytest
import torch
from torch import nn

from .detect_fixtures import (
    Alertmanager,
    WebhookReceiver,
    free_port,
    train,
    wait_for,
)
from gradwatch.monitor.records.alert_table import RUNBOOK_BASE_URL
from .helpers import alert_of
from gradwatch.monitor.sinks.delivery import (
    AlertmanagerSink,
    CallableAlertSink,
    HttpPoster,
    LoggingAlertSink,
    WebhookSink,
)


@pytest.fixture(scope="module")
def receiver():
    hook = WebhookReceiver()
    yield hook
    hook.close()


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory, receiver):
    am = Alertmanager(tmp_path_factory.mktemp("am"), free_port(), receiver.url)
    yield am
    am.close()


def make_alert(**fields):
    base = dict(name="GradientExplosion", severity="critical", status="firing", run="deliv",
                rank=0, step=12, layers=("encoder.0",), value=2e4, threshold=1e4,
                summary="Global gradient norm 2e4", description="details", remedy="clip",
                regime="exploding", origin_exact=None, starts_at=time.time() - 5,
                ends_at=None)
    base.update(fields)
    return alert_of(**base)


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def am_alert(am: Alertmanager, run: str, name: str):
    return next((a for a in am.alerts() if a["labels"].get("run") == run
                 and a["labels"]["alertname"] == name), None)


@pytest.mark.servers
def test_real_alertmanager_gets_labels_annotations_and_resolution(alertmanager, receiver):
    sink = AlertmanagerSink(alertmanager.url, resend_interval=30.0, backoff=0.05)
    firing = make_alert()
    sink.on_alert(firing)
    seen = wait_for(lambda: am_alert(alertmanager, "deliv", "GradientExplosion"),
                    what="the alert in Alertmanager")
    assert seen["labels"] == {"alertname": "GradientExplosion", "severity": "critical",
                              "run": "deliv", "regime": "exploding"}  # run-wide: no layer
    assert seen["annotations"] == {
        "summary": "Global gradient norm 2e4", "description": "details", "remedy": "clip",
        "runbook_url": f"{RUNBOOK_BASE_URL}#gradientexplosion", "layers": "encoder.0"}
    assert parse_time(seen["startsAt"]) == pytest.approx(firing.starts_at, abs=1e-3)
    # firing: endsAt 4 resend intervals ahead, so Alertmanager does not auto-resolve it
    assert parse_time(seen["endsAt"]) == pytest.approx(time.time() + 120, abs=10)
    assert seen["status"]["state"] == "active"

    resolved = make_alert(status="resolved", step=30, ends_at=time.time())
    sink.on_alert(resolved)
    # Alertmanager notifies the receiver of the resolution, with our endsAt
    notice = wait_for(lambda: next(
        (a for body in receiver.bodies("/am") for a in body["alerts"]
         if a["labels"].get("run") == "deliv" and a["status"] == "resolved"), None),
        what="the resolved notification")
    assert parse_time(notice["endsAt"]) == pytest.approx(resolved.ends_at, abs=1e-3)
    wait_for(lambda: am_alert(alertmanager, "deliv", "GradientExplosion") is None,
             what="the alert to leave the active list")
    assert sink.close(5.0) and sink.poster.dropped == 0


@pytest.mark.servers
def test_training_run_alerts_reach_alertmanager(alertmanager, one_torch_thread):
    sink = AlertmanagerSink(alertmanager.url, backoff=0.05)
    torch.manual_seed(0)
    teacher = torch.randn(32, 1, generator=torch.Generator().manual_seed(0))

    def batches(step):
        x = torch.randn(64, 32, generator=torch.Generator().manual_seed(step))
        return x, x @ teacher

    run = train(nn.Linear(32, 1), batches, 300, lr=1.0, sinks=[sink])  # close() flushes
    fired = {a.name for a in run.engine.history if a.status == "firing"}
    assert {"GradientExplosion", "NonFiniteValues"} <= fired
    names = wait_for(lambda: {a["labels"]["alertname"] for a in alertmanager.alerts()
                              if a["labels"]["run"] == "train"} >= fired and fired,
                     what="the run's alerts in Alertmanager")
    nonfinite = am_alert(alertmanager, "train", "NonFiniteValues")
    assert nonfinite["labels"]["severity"] == "critical" and names
    assert nonfinite["labels"]["regime"] == "nonfinite"
    assert nonfinite["annotations"]["runbook_url"] == f"{RUNBOOK_BASE_URL}#nonfinitevalues"


@pytest.mark.servers
def test_receiver_down_never_blocks_warns_once_and_delivers_when_back(
        tmp_path, receiver, caplog, connections):
    port = free_port()  # nothing listens there yet
    sink = AlertmanagerSink(f"http://127.0.0.1:{port}", backoff=0.05, max_backoff=0.2,
                            timeout=1.0)
    caplog.set_level(logging.INFO, logger="gradwatch")

    def attempts() -> list[int]:  # the threads that tried the receiver, one per attempt
        return [thread for thread, address in connections if address[1] == port]

    for i in range(50):
        sink.on_alert(make_alert(run="down", name="Fp16HeadroomLow", step=i,  # per layer: 50
                                 layers=(f"layer{i}",)))
    wait_for(lambda: any("unreachable" in r.message for r in caplog.records),
             what="the warning")
    tried = len(attempts())
    wait_for(lambda: len(attempts()) >= tried + 3, what="several more failed retries")
    assert threading.get_ident() not in attempts()  # queued, not sent, on this thread
    warnings = [r for r in caplog.records if "unreachable" in r.message]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert sink.poster.sent == 0 and sink.poster.pending == 50

    am = Alertmanager(tmp_path / "am", port, receiver.url)  # it comes back
    try:
        wait_for(lambda: sink.poster.pending == 0, what="the backlog to drain")
        down = wait_for(lambda: [a for a in am.alerts() if a["labels"]["run"] == "down"],
                        what="the queued alerts")
        assert sorted(a["labels"]["layer"] for a in down) == sorted(
            f"layer{i}" for i in range(50))
        assert any("reachable again" in r.message for r in caplog.records)
    finally:
        sink.close(2.0)
        am.close()


@pytest.mark.unit
def test_bounded_queue_drops_oldest_and_close_is_bounded():
    poster = HttpPoster(f"http://127.0.0.1:{free_port()}", max_queue=5, backoff=0.05,
                        timeout=0.5)
    for i in range(12):
        poster.submit({"n": i})
    assert poster.dropped >= 12 - 6  # at most 5 queued + 1 in flight are kept
    closed = []
    closing = threading.Thread(target=lambda: closed.append(poster.close(0.5)))
    closing.start()
    closing.join(30)  # a close that waited for the receiver would never return
    assert closed == [False] and poster.pending > 0  # it gave up on what was left


@pytest.mark.unit
def test_webhook_gets_the_alert_json_with_auth(receiver):
    sink = WebhookSink(receiver.url + "/hook", world_size=2, basic_auth=("user", "s3cret"))
    alert = make_alert(run="hooked", rank=1, value=math.inf)
    sink.on_alert(alert)
    assert sink.close(5.0)
    ((path, headers, body),) = [r for r in receiver.requests if r[0] == "/hook"]
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"user:s3cret").decode()
    assert body["name"] == "GradientExplosion" and body["step"] == 12
    assert body["value"] is None and body["layers"] == ["encoder.0"]
    # one alert per (run, alertname) across ranks: the rank is an annotation
    assert "rank" not in body["labels"] and body["annotations"]["rank"] == "1"
    assert body["annotations"]["remedy"] == "clip"


@pytest.mark.unit
def test_firing_alerts_are_resent_until_resolved(receiver):
    sink = AlertmanagerSink(receiver.url + "/resend", resend_interval=0.2)
    sink.on_alert(make_alert(run="resend"))
    posts = wait_for(lambda: (b := receiver.bodies("/resend/api/v2/alerts")) and len(b) >= 3
                     and b, what="re-sends")
    ends = [parse_time(body[0]["endsAt"]) for body in posts[:3]]
    assert ends == sorted(ends) and ends[-1] > ends[0]
    resolved = make_alert(run="resend", status="resolved", ends_at=time.time())
    sink.on_alert(resolved)
    wait_for(lambda: [sink.payload(resolved)] in receiver.bodies("/resend/api/v2/alerts"),
             what="the resolution")
    count = len(receiver.bodies("/resend/api/v2/alerts"))
    interval, resend = sink.poster.periodic  # count the re-send timer's ticks from here
    ticks: list[list] = []

    def counted_resend() -> list:
        ticks.append(resend())
        return ticks[-1]

    sink.poster.periodic = (interval, counted_resend)
    wait_for(lambda: len(ticks) >= 3, what="three more re-send ticks")
    # no more re-sends once resolved: each tick found nothing firing, and nothing was posted
    assert ticks == [[]] * len(ticks) and sink.poster.pending == 0
    assert len(receiver.bodies("/resend/api/v2/alerts")) == count
    assert sink.close(2.0)



@pytest.mark.unit
def test_a_resend_built_before_a_resolution_does_not_fire_it_again(receiver):
    """The re-send timer builds its document, the alert resolves, then the document is sent
    (after the resolution, in queue order): it must not carry the resolved alert."""
    sink = AlertmanagerSink(receiver.url + "/race", resend_interval=3600.0)
    firing, other = make_alert(run="race"), make_alert(run="race", name="LossSpike")
    sink.on_alert(firing)
    sink.on_alert(other)
    (document,) = sink._resend()  # built by the timer, not sent yet
    sink.on_alert(make_alert(run="race", status="resolved", ends_at=time.time()))
    sent = document()  # rendered when sent
    assert [body["labels"]["alertname"] for body in sent] == ["LossSpike"]
    assert sink.close(2.0)


@pytest.mark.unit
def test_secrets_never_logged(caplog):
    caplog.set_level(logging.INFO, logger="gradwatch")
    port = free_port()
    sink = WebhookSink(f"http://admin:hunter2@127.0.0.1:{port}/hook?token=t0ps3cret",
                       backoff=0.05, timeout=0.5)
    sink.on_alert(make_alert())
    wait_for(lambda: any("unreachable" in r.message for r in caplog.records),
             what="the warning")
    sink.close(0.2)
    text = " ".join(r.getMessage() for r in caplog.records) + repr(sink.poster)
    assert f"127.0.0.1:{port}/hook?..." in text
    for secret in ("hunter2", "admin", "t0ps3cret"):
        assert secret not in text


@pytest.mark.unit
def test_url_credentials_become_basic_auth(receiver):
    host = receiver.url.removeprefix("http://")
    sink = WebhookSink(f"http://us%40er:p%3Ass@{host}/creds")
    sink.on_alert(make_alert())
    assert sink.close(5.0) and sink.poster.sent == 1
    ((_, headers, _),) = [r for r in receiver.requests if r[0] == "/creds"]
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"us@er:p:ss").decode()
    with pytest.raises(ValueError, match="credentials"):
        WebhookSink(f"http://a:b@{host}/", bearer_token="t")


@pytest.mark.unit
@pytest.mark.parametrize("kwargs, option", [
    ({"url": "ftp://x"}, "url"),
    ({"url": "http://x", "timeout": 0}, "timeout"),
    ({"url": "http://x", "max_queue": -1}, "max_queue"),
    ({"url": "http://x", "basic_auth": ("a", "b"), "bearer_token": "t"}, "basic_auth"),
    ({"url": "http://x", "basic_auth": ("a",)}, "basic_auth"),
    ({"url": "https://x", "ca_file": "/nonexistent/ca.pem"}, "ca_file"),
])
def test_bad_http_config_names_the_option(kwargs, option):
    with pytest.raises(ValueError, match=option):
        HttpPoster(**kwargs)


@pytest.mark.unit
def test_bad_sink_config():
    with pytest.raises(ValueError, match="resend_interval"):
        AlertmanagerSink("http://x", resend_interval=0)
    with pytest.raises(ValueError, match="fn"):
        CallableAlertSink(42)


@pytest.mark.unit
def test_logging_and_callable_sinks(caplog):
    caplog.set_level(logging.INFO, logger="gradwatch.alerts")
    LoggingAlertSink().on_alert(make_alert())
    LoggingAlertSink().on_alert(make_alert(status="resolved", ends_at=1.0,
                                           severity="warning"))
    first, second = caplog.records
    assert first.levelno == logging.ERROR and "FIRING GradientExplosion" in first.message
    assert "[encoder.0]" in first.message and "Try: clip" in first.message
    assert second.levelno == logging.INFO and "RESOLVED" in second.message
    got = []
    CallableAlertSink(got.append).on_alert(make_alert())
    assert got[0].name == "GradientExplosion"


@pytest.mark.unit
def test_alerts_queued_through_an_outage_arrive_still_firing(caplog):
    caplog.set_level(logging.INFO, logger="gradwatch")
    port = free_port()
    sink = AlertmanagerSink(f"http://127.0.0.1:{port}", resend_interval=0.1, backoff=0.05,
                            max_backoff=0.1, timeout=0.5)
    alert = make_alert(run="outage")
    sink.on_alert(alert)  # endsAt would be 0.4 s ahead if rendered now
    wait_for(lambda: any("unreachable" in r.message for r in caplog.records),
             what="a refused delivery")
    back_at = time.time()
    back = WebhookReceiver(port)
    try:
        posts = wait_for(lambda: back.bodies("/api/v2/alerts"), what="the delivery")
        # rendered at send time, after the receiver was back: its lease runs from then on
        assert parse_time(posts[0][0]["endsAt"]) >= parse_time(
            sink.payload(alert, now=back_at)["endsAt"])
    finally:
        sink.close(1.0)
        back.close()


@pytest.mark.unit
def test_unserialisable_document_is_dropped_not_fatal(receiver, caplog):
    poster = HttpPoster(receiver.url + "/poster", backoff=0.05)
    poster.submit({"value": math.nan})  # not JSON: dropped with a warning
    poster.submit({"value": 1})
    assert poster.close(5.0)
    assert receiver.bodies("/poster") == [{"value": 1}]
    assert (poster.sent, poster.dropped) == (1, 1)
    assert any("not JSON" in r.message for r in caplog.records)
