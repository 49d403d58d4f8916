"""The generated Prometheus rules: committed file, contract names, promtool checks and tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from gradwatch.monitor.ops import rules
from gradwatch.monitor.records.alert_table import RULE_NAMES, RUNBOOK_BASE_URL
from gradwatch.monitor.records.thresholds import Thresholds

ROOT = Path(__file__).resolve().parents[1]
#: The architecture's contract names (extended, never renamed) and the ones added since.
CONTRACT_ALERTS = {"NonFiniteValues", "GradientExplosion", "GradientVanishing", "LossDivergence",
                   "AmpOverflowStorm", "TrainingStalled", "TrainerDown", "LossSpike",
                   # leading indicators and skip-on-spike
                   "AttentionLogitGrowth", "OutputLogitDivergence", "AdamUpdateDecorrelation",
                   "UpdateSkipped",
                   # issue 27: the per-layer shares of units that pass no gradient
                   "DeadUnits", "ActivationSaturation"}


def alert_rules(text: str) -> dict[str, dict]:
    groups = yaml.safe_load(text)["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


@pytest.mark.unit
def test_committed_rules_equal_generated():
    committed = (ROOT / rules.RULES_PATH).read_text()
    assert committed == rules.render_rules(Thresholds()), "run monitor.rules.write_rules()"


@pytest.mark.unit
def test_every_contract_alert_is_documented_and_labelled():
    found = alert_rules(rules.render_rules())
    assert set(found) == CONTRACT_ALERTS == set(RULE_NAMES)
    for name, rule in found.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}
        notes = rule["annotations"]
        assert notes["runbook_url"] == f"{RUNBOOK_BASE_URL}#{name.lower()}"
        assert notes["remedy"]
        assert "$labels.run" in notes["summary"] + notes["description"]
        assert "$value" in notes["description"]
        assert "$labels.layer" in notes["description"]


@pytest.mark.unit
def test_one_alert_per_run_and_alertname():
    """Every alert aggregates by (run) alone: no per-layer or per-rank fan-out; only
    TrainerDown's branch for a target with no run seen keeps job/instance."""
    for name, rule in alert_rules(rules.render_rules()).items():
        expr = rule["expr"]
        assert expr.startswith(("max by (run) (", "min by (run) (", "count by (run) (")), name
        if name != "TrainerDown":
            assert "instance" not in expr and "job" not in expr, name
        assert "layer" not in rule["labels"] and "rank" not in rule["labels"]


@pytest.mark.unit
def test_runbook_links_share_one_configurable_base(tmp_path):
    path = rules.write_rules(tmp_path / "r.yml", runbook_base_url="https://wiki.example/rb")
    for name, rule in alert_rules(path.read_text()).items():
        assert rule["annotations"]["runbook_url"] == f"https://wiki.example/rb#{name.lower()}"


@pytest.mark.unit
def test_numbers_come_from_thresholds(tmp_path):
    custom = Thresholds(explosion_norm=500.0, vanishing_depth_ratio=0.01, stalled_seconds=60.0,
                        amp_skipped_steps=7, loss_spike_factor=4.0, vanishing_samples=4,
                        loss_divergence_factor=1.25, loss_warmup_steps=50)
    path = rules.write_rules(tmp_path / "r.yml", custom)
    text = path.read_text()
    assert 'gradwatch_step_global_grad_norm_bucket{le="500.0"}' in text
    found = alert_rules(text)
    assert "< 0.01" in found["GradientVanishing"]["expr"]
    assert found["GradientVanishing"]["for"] == f"{4 * rules.SCRAPE_INTERVAL_SECONDS}s"
    assert found["TrainingStalled"]["expr"].endswith("> 60.0")
    assert found["AmpOverflowStorm"]["expr"].endswith(">= 7")
    assert "gradwatch_loss_reference_median) > 1.25" in found["LossDivergence"]["expr"]
    # the exporter judges each step's spike (every step, whatever the pace) with the
    # trainer's thresholds: the rule counts them and says by which numbers
    assert "above 4.0x the median" in found["LossSpike"]["annotations"]["description"]


@pytest.mark.unit
def test_explosion_bucket_label_matches_the_exporters_spelling():
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    registry = CollectorRegistry()
    Histogram("h", "h", buckets=[Thresholds().explosion_norm], registry=registry).observe(1)
    label = rules.explosion_bucket_label(Thresholds())
    assert f'h_bucket{{le="{label}"}} 1.0' in generate_latest(registry).decode()


@pytest.mark.servers
def test_promtool_check_rules(promtool):
    result = subprocess.run([promtool, "check", "rules", str(ROOT / rules.RULES_PATH)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.servers
def test_promtool_unit_tests_pass(promtool):
    tests = sorted((ROOT / "deploy/prometheus/tests").glob("*.yml"))
    assert tests
    result = subprocess.run([promtool, "test", "rules", *map(str, tests)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    tested = set()
    for path in tests:
        for case in yaml.safe_load(path.read_text())["tests"]:
            tested |= {check["alertname"] for check in case["alert_rule_test"]
                       if check["exp_alerts"]}
    assert tested == CONTRACT_ALERTS, "every alert needs a promtool test that fires it"


def any_thresholds():
    """Thresholds with every field drawn from its own allowed range."""
    from dataclasses import fields

    from hypothesis import strategies as st

    def allowed(f):  # counts of steps or samples are integers
        if f.metadata.get("integer"):
            return st.integers(min_value=f.metadata["low"], max_value=f.metadata["high"])
        return st.floats(min_value=f.metadata["low"], max_value=min(f.metadata["high"], 1e12),
                         allow_nan=False, allow_infinity=False)

    return st.builds(Thresholds, **{f.name: allowed(f) for f in fields(Thresholds)})


@pytest.mark.servers
def test_rules_for_any_valid_thresholds_pass_promtool(promtool, tmp_path):
    """Whatever the numbers (tiny, huge, fractional), the generated PromQL stays valid."""
    from hypothesis import HealthCheck, given, settings

    @settings(max_examples=15, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(any_thresholds())
    def check(thresholds):
        path = rules.write_rules(tmp_path / "rules.yml", thresholds)
        result = subprocess.run([promtool, "check", "rules", str(path)],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr

    check()
