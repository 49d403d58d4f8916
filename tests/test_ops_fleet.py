"""At fleet scale, with the real Prometheus and the repository's rules and dashboards:

- a NaN from one of two real DDP ranks (tests/distributed_job.py) gives at most three firing
  alerts, one NonFiniteValues naming its layers and origin rank; the Layers dashboard answers
  with the NaN values, during the run and after it ended; rank 1 exports no per-layer series;
- after a healthy run's clean end, every dashboard query still answers, and neither
  TrainerDown nor TrainingStalled has anything to say.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gradwatch.monitor.ops import dashboards, rules
from .ops_dashboard_queries import MODEL_DEPENDENT, dashboard_queries, substitute
from .ops_servers import wait_until
from .training_target import TrainingTarget

pytestmark = pytest.mark.servers

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / rules.RULES_PATH
#: Range of the "after the end" queries: the test's whole life.
SECONDS = 180


def alert_exprs() -> dict[str, str]:
    (group,) = yaml.safe_load(RULES.read_text())["groups"]
    return {r["alert"]: r["expr"] for r in group["rules"] if "alert" in r}


def boards() -> dict[str, dict]:
    return {name: json.loads(text) for name, text in dashboards.render_dashboards().items()}


def unanswered(prometheus, board: dict, run: str, skip=lambda expr: False) -> list[str]:
    """The queries of ``board`` that return nothing, each asked the way its panel asks."""
    empty = []
    for where, expr, instant in dashboard_queries(board):
        expr = substitute(expr, {"run": run, "layer": ".*"})
        if skip(expr):
            continue
        answer = prometheus.query(expr) if instant else prometheus.query_range(expr, SECONDS)
        if not answer:
            empty.append(f"{where}: {expr}")
    return empty


def firing(prometheus) -> list[dict]:
    return prometheus.query('ALERTS{alertstate="firing"}')


def quiet_after_a_clean_end(prometheus, run: str) -> None:
    """TrainerDown and TrainingStalled hold for none of the run's targets (their expressions
    are asked directly: their ``for`` would outlast the test), and nothing is pending."""
    wait_until(lambda: prometheus.query('up{job="gradwatch"} == 0'), 30, "the targets down")
    assert prometheus.query(f'last_over_time(gradwatch_run_finished{{run="{run}"}}[5m]) == 1'), \
        "the last scrape read gradwatch_run_finished 1"
    exprs = alert_exprs()
    for _ in range(3):  # a few evaluations after the end
        for name in ("TrainerDown", "TrainingStalled"):
            assert prometheus.query(exprs[name]) == [], name
            assert prometheus.query(f'ALERTS{{alertname="{name}"}}') == [], name
        prometheus.wait_evaluations()


def test_a_nan_on_one_of_two_ranks(prometheus_server, tmp_path):
    out = tmp_path / "ddp"
    out.mkdir()
    job = subprocess.Popen([sys.executable, str(ROOT / "tests" / "distributed_job.py"),
                            "--out", str(out), "--steps", "6", "--poison-rank", "1",
                            "--poison-step", "1", "--hold"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=out)
    try:
        ports = wait_until(lambda: all((out / f"port{r}").exists() for r in (0, 1)) and [
            (out / f"port{r}").read_text() for r in (0, 1)], 150, "both ranks serving")
        prometheus = prometheus_server([f"127.0.0.1:{p}" for p in ports], rule_files=[RULES])
        wait_until(lambda: all((out / f"rank{r}.json").exists() for r in (0, 1)), 120,
                   "both ranks done (holding their endpoints)")
        prometheus.wait_for('ALERTS{alertstate="firing", alertname="NonFiniteValues"}')
        counts = []
        for _ in range(5):  # a few more evaluations: alerts that come later count too
            counts.append(len(firing(prometheus)))
            prometheus.wait_evaluations()
        assert max(counts) <= 3, firing(prometheus)
        nonfinite = [a for a in prometheus.query("ALERTS") if a["metric"]["alertname"] ==
                     "NonFiniteValues"]
        assert [a["metric"]["run"] for a in nonfinite] == ["ddp"]  # one, not per layer x rank
        from .ops_servers import get_json

        (alert,) = [a for a in get_json(prometheus.url + "/api/v1/alerts")["data"]["alerts"]
                    if a["labels"]["alertname"] == "NonFiniteValues"]
        assert alert["annotations"]["origin_ranks"] == "1"
        layers = alert["annotations"]["layers"].split(", ")
        assert layers and set(layers) <= {"net.0", "net.2", "net.4"}
        # the NaN is exported: gradient norms are there, and NaN
        norms = prometheus.query('gradwatch_grad_norm{run="ddp"}')
        assert len(norms) == 3 and all(n["value"][1] == "NaN" for n in norms)
        assert {n["metric"]["rank"] for n in norms} == {"all"}
        # rank 1's per-layer series: only the NaNs of its own activations, no duplicate
        own = prometheus.query('{__name__=~"gradwatch_.+", rank="1", layer!=""}')
        assert own and {(s["metric"]["__name__"], s["metric"]["source"]) for s in own} == {
            ("gradwatch_nonfinite_total", "activation")}
        layers_board = boards()["gradwatch-layers.json"]
        assert unanswered(prometheus, layers_board, "ddp") == []

        (out / "release").write_text("")
        _, errors = job.communicate(timeout=60)
        assert job.returncode == 0, errors[-4000:]
        quiet_after_a_clean_end(prometheus, "ddp")
        assert unanswered(prometheus, layers_board, "ddp") == []
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()


def test_dashboards_answer_after_a_healthy_run_ended(prometheus_server, one_torch_thread):
    training = TrainingTarget(run="ended-run", scenario="healthy", steps=150)
    try:
        prometheus = prometheus_server([training.target], rule_files=[RULES])
        prometheus.wait_for("gradwatch:steps_per_second:deriv2m > 0")
        prometheus.wait_for("gradwatch:amp_skipped_steps:increase10m")
    finally:
        training.close()
    quiet_after_a_clean_end(prometheus, "ended-run")
    assert firing(prometheus) == []
    # a healthy run has no alert and no non-finite value, and this MLP no attention, output
    # logits or Adam: those need only be valid PromQL
    for name, board in boards().items():
        assert unanswered(prometheus, board, "ended-run", skip=lambda e: "ALERTS" in e or (
            "nonfinite" in e) or any(metric in e for metric in MODEL_DEPENDENT)) == [], name
