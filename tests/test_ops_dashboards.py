"""The generated Grafana dashboards: committed JSON, thresholds, depth order, and every
panel query answered by a real Prometheus scraping a healthy run."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from gradwatch.monitor.ops import dashboards, rules
from gradwatch.monitor.records.thresholds import Thresholds
from .ops_dashboard_queries import MODEL_DEPENDENT, dashboard_exprs, substitute
from .ops_servers import get_json

ROOT = Path(__file__).resolve().parents[1]
HEALTH = "gradwatch-training-health.json"
LAYERS = "gradwatch-layers.json"


def generated(thresholds: Thresholds | None = None) -> dict[str, dict]:
    return {name: json.loads(text)
            for name, text in dashboards.render_dashboards(thresholds).items()}


def panel(board: dict, title_start: str) -> dict:
    (found,) = [p for p in board["panels"] if p["title"].startswith(title_start)]
    return found


def threshold_values(p: dict) -> list[float | None]:
    return [step["value"] for step in p["fieldConfig"]["defaults"]["thresholds"]["steps"]]


@pytest.mark.unit
def test_committed_dashboards_equal_generated():
    for name, text in dashboards.render_dashboards(Thresholds()).items():
        assert (ROOT / "dashboards" / name).read_text() == text, \
            "run monitor.dashboards.write_dashboards()"
    assert sorted(p.name for p in (ROOT / "dashboards").glob("*.json")) == sorted(
        dashboards.render_dashboards())


@pytest.mark.unit
def test_drawn_thresholds_are_the_thresholds_values(tmp_path):
    t = Thresholds(explosion_norm=123.0, stalled_seconds=77.0, amp_skipped_steps=9,
                   update_ratio_low=2e-5, update_ratio_high=3e-2, saturation_ratio=0.4,
                   dead_ratio=0.8)
    dashboards.write_dashboards(tmp_path, t)
    health = json.loads((tmp_path / HEALTH).read_text())
    layers = json.loads((tmp_path / LAYERS).read_text())
    assert threshold_values(panel(health, "Global gradient norm")) == [None, 123.0]
    assert threshold_values(panel(health, "Time since last step")) == [None, 77.0]
    assert threshold_values(panel(health, "AMP skipped steps")) == [None, 9]
    assert threshold_values(panel(layers, "Update ratio")) == [None, 2e-5, 3e-2]
    assert threshold_values(panel(layers, "Saturated activations")) == [None, 0.4]
    assert threshold_values(panel(layers, "Dead units")) == [None, 0.8]
    band = panel(layers, "Update ratio")["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]
    assert band["mode"] == "line+area"


@pytest.mark.unit
def test_gradient_norm_uses_a_log_scale_with_the_explosion_line():
    p = panel(generated()[HEALTH], "Global gradient norm")
    custom = p["fieldConfig"]["defaults"]["custom"]
    assert custom["scaleDistribution"] == {"type": "log", "log": 10}
    assert custom["thresholdsStyle"]["mode"] == "dashed"


@pytest.mark.unit
def test_regime_colours_cover_every_regime():
    p = panel(generated()[HEALTH], "Regime")
    (mapping,) = p["fieldConfig"]["defaults"]["mappings"]
    texts = {code: option["text"] for code, option in mapping["options"].items()}
    assert texts == {str(i): name for i, name in enumerate(rules.REGIMES)}
    assert mapping["options"]["0"]["color"] == "green"


@pytest.mark.unit
def test_layer_panels_are_ordered_by_depth():
    board = generated()[LAYERS]
    for p in board["panels"]:
        for target in p["targets"]:
            assert ":by_depth" in target["expr"], p["title"]
            if target.get("range"):
                assert target["legendFormat"].startswith("{{depth}}"), p["title"]
        if p["type"] == "barchart":
            assert {"id": "sortBy", "options": {"sort": [{"field": "depth"}]}} in \
                p["transformations"]


@pytest.mark.unit
def test_variables_datasources_annotations_and_layout():
    for name, board in generated().items():
        variables = [v["name"] for v in board["templating"]["list"]]
        assert variables == (["datasource", "run", "layer"] if name == LAYERS
                             else ["datasource", "run"])
        (annotation,) = board["annotations"]["list"]
        assert annotation["expr"].startswith('ALERTS{alertstate="firing"')
        cells = set()
        for p in board["panels"]:
            assert p["datasource"]["uid"] == "${datasource}"
            refs = [t["refId"] for t in p["targets"]]
            assert len(set(refs)) == len(refs) and all(refs), p["title"]
            g = p["gridPos"]
            assert g["x"] + g["w"] <= 24
            area = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                    for y in range(g["y"], g["y"] + g["h"])}
            assert not cells & area, f"{p['title']} overlaps another panel"
            cells |= area


@pytest.mark.unit
def test_variable_substitution():
    assert substitute('x{run=~"$run", l=~"${layer}"}[$__rate_interval]',
                      {"run": "r", "layer": ".*"}) == 'x{run=~"r", l=~".*"}[1m]'
    assert substitute("$unknown", {}) == "$unknown"


@pytest.fixture
def healthy_prometheus(prometheus_server, scrape_target):
    """Prometheus with the repository's rules, scraping a healthy run, recording rules ready."""
    prometheus = prometheus_server([scrape_target], rule_files=[ROOT / rules.RULES_PATH])
    # Rates and derivatives need two samples in their window.
    prometheus.wait_for("gradwatch:steps_per_second:deriv2m > 0")
    prometheus.wait_for("gradwatch:amp_skipped_steps:increase10m")
    # the loss's level and bar: once the loss is judged (after loss_warmup_steps steps)
    prometheus.wait_for("gradwatch_loss_recent_median")
    return prometheus


RARE_EVENTS = "gradwatch_nonfinite_total"


@pytest.mark.servers
def test_every_dashboard_query_returns_data(healthy_prometheus):
    run = healthy_prometheus.query("gradwatch_step")[0]["metric"]["run"]
    values = {"run": run, "layer": ".*"}
    empty = []
    checked = 0
    for name, board in generated().items():
        for where, expr in dashboard_exprs(board):
            result = healthy_prometheus.query(substitute(expr, values))
            checked += 1
            # A healthy run has no firing alert and no non-finite value: those queries need
            # only be valid PromQL (query() raises on an invalid one).
            if not result and not expr.startswith("ALERTS") and RARE_EVENTS not in expr \
                    and not any(metric in expr for metric in MODEL_DEPENDENT):
                empty.append(f"{name}: {where}: {expr}")
    assert checked >= 20
    assert empty == []


@pytest.mark.servers
def test_layers_come_back_in_depth_order(healthy_prometheus):
    """The series of a by_depth rule sort input layer first, whatever the layer names."""
    from .training_target import LAYERS

    now = time.time()
    answer = get_json(healthy_prometheus.url + "/api/v1/query_range", {
        "query": "gradwatch:grad_norm:by_depth", "start": str(now - 5), "end": str(now),
        "step": "1"})
    layers = [series["metric"]["layer"] for series in answer["data"]["result"]]
    assert layers == list(LAYERS)
    assert layers != sorted(layers), "the layer names must not sort like their depth"


@pytest.mark.unit
def test_threshold_panels_explain_their_numbers():
    t = Thresholds(explosion_norm=321.0)
    p = panel(generated(t)[HEALTH], "Global gradient norm")
    assert p["description"].startswith("explosion_norm = 321.0: ")
    assert Thresholds.documented()["explosion_norm"][1] in p["description"]


@pytest.mark.unit
def test_depth_map_fits_deep_models_with_absolute_bands_from_thresholds():
    import math

    t = Thresholds(vanishing_depth_ratio=1e-4)
    board = generated(t)[LAYERS]
    p = panel(board, "Gradient norm relative to the output side")
    assert p["type"] == "state-timeline"
    assert p["options"]["perPage"] >= 1000 and p["options"]["showValue"] == "never"
    defaults = p["fieldConfig"]["defaults"]
    assert defaults["color"]["mode"] == "thresholds"
    assert defaults["thresholds"]["mode"] == "absolute"
    assert threshold_values(p) == [None, math.log10(1e-4), -math.log10(1e-4)]


@pytest.mark.unit
def test_nonfinite_values_have_a_colour_of_their_own_on_every_layer_panel():
    board = generated()[LAYERS]
    for p in board["panels"]:
        mappings = p["fieldConfig"]["defaults"]["mappings"]
        colours = {m["options"]["result"]["text"]: m["options"]["result"]["color"]
                   for m in mappings}
        assert colours == dashboards.NONFINITE_COLORS, p["title"]
        special = [m for m in mappings if m["type"] == "special"]
        assert [m["options"]["match"] for m in special] == ["nan"]
    latest = [t["expr"] for p in board["panels"] for t in p["targets"] if t.get("instant")]
    assert latest and all(e.startswith("last_over_time(") for e in latest)


@pytest.mark.unit
def test_health_dashboard_has_a_rank_view():
    p = panel(generated()[HEALTH], "Step time by rank")
    assert [t["expr"].split("{")[0] for t in p["targets"]][0] == "gradwatch_step_seconds"
    assert p["targets"][0]["legendFormat"] == "{{run}} {{rank}}"
