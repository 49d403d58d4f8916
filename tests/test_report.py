"""The HTML report, built from real Lightning runs, checked against TensorBoard and rendered
by headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import dataclasses
from dataclasses import dataclass
from html import unescape
from pathlib import Path

import numpy as np
from torch import nn
import pytest

from gradwatch.callbacks import TrainingDiagnostics
from gradwatch.monitor.records.findings import Alert, Finding
from gradwatch.demo import he, mlp
from gradwatch.monitor.sinks.prometheus import LAYER_GAUGES
from gradwatch.monitor.report.html import (
    MAX_HEATMAP_COLUMNS,
    MAX_HEATMAP_ROWS,
    NoGradwatchData,
    RunRecord,
    find_runs,
    load_run,
    render_report,
    spike_level,
    thin,
    write_report,
    write_reports,
)
from gradwatch.monitor.report.run_record import Series
from gradwatch.monitor.records.snapshot import NONFINITE_KINDS, NONFINITE_SOURCES, Pulse, Snapshot
from gradwatch.monitor.report.svg import MISSING_FILL, NONFINITE_FILL
from gradwatch.monitor.sinks.tensorboard import TensorBoardSink, fenced_json
from gradwatch.monitor.records.thresholds import Thresholds

from .helpers import read_scalars
from .lightning_models import regression_module, trainer

EVERY_N_STEPS = 2
MAX_STEPS = 24
CELL = re.compile(r'<rect class="cell" data-layer="([^"]*)" data-step="(\d+)" '
                  r'data-value="([^"]*)"[^>]*fill="([^"]*)"')


NETS = {  # the demo's vanishing and healthy models, sized for the 8-feature test data
    "vanishing": (lambda: mlp([8] + [16] * 8 + [1], nn.Sigmoid), 0.1, "sgd"),
    "healthy": (lambda: mlp([8, 16, 16, 16, 1], nn.ReLU, he), 1e-3, "adam"),
}


#: the alert events each run's detectors published, by run directory
PUBLISHED: dict[Path, list] = {}


def train(root: Path, scenario_name: str) -> Path:
    """One real training run with TrainingDiagnostics; returns its TensorBoard run dir."""
    build, lr, optimizer = NETS[scenario_name]
    module = regression_module(net=build(), lr=lr, optimizer=optimizer)
    events: list = []
    run = trainer(callbacks=[TrainingDiagnostics(every_n_steps=EVERY_N_STEPS,
                                                 on_alert=events.append)],
                  root=root, max_steps=MAX_STEPS)
    run.fit(module)
    PUBLISHED[Path(run.logger.log_dir)] = events
    return Path(run.logger.log_dir)


@pytest.fixture(scope="module")
def vanishing_run(tmp_path_factory) -> Path:
    """A deep sigmoid MLP: its gradients vanish, and the detectors say so."""
    return train(tmp_path_factory.mktemp("vanishing"), "vanishing")


@pytest.fixture(scope="module")
def healthy_run(tmp_path_factory) -> Path:
    return train(tmp_path_factory.mktemp("healthy"), "healthy")


@pytest.fixture(scope="module")
def vanishing_html(vanishing_run) -> str:
    return write_report(vanishing_run).read_text(encoding="utf-8")


def cells(html: str) -> list[tuple[str, int, float, str]]:
    return [(unescape(layer), int(step), float(value), fill)
            for layer, step, value, fill in CELL.findall(html)]


# --- values ----------------------------------------------------------------------------------

@pytest.mark.training
def test_load_run_equals_the_tensorboard_scalars(vanishing_run):
    record = load_run(vanishing_run)
    scalars = read_scalars(str(vanishing_run))
    assert record.layers == tuple(f"net.{i}" for i in range(0, 18, 2))   # depth order
    # every EVERY_N_STEPS steps, and the last step of the fit
    assert record.sampled_steps.tolist() == sorted({*range(0, MAX_STEPS, EVERY_N_STEPS),
                                                    MAX_STEPS - 1})
    for statistic in LAYER_GAUGES:
        matrix = record.statistics[statistic]
        assert matrix.shape == (len(record.layers), len(record.sampled_steps))
        for i, layer in enumerate(record.layers):
            written = dict(scalars.get(f"gradwatch/{statistic}/{layer}", []))
            for j, step in enumerate(record.sampled_steps):
                if step in written:
                    assert matrix[i, j] == written[step]
                else:
                    assert np.isnan(matrix[i, j])
    loss = dict(scalars["gradwatch/loss"])
    assert record.series["loss"].steps.tolist() == sorted(loss)
    assert record.series["loss"].values.tolist() == pytest.approx([loss[s] for s in sorted(loss)])
    grad_norm = record.statistics["grad_norm"]
    assert np.isfinite(grad_norm).all()
    # The picture the report exists for: the input side's gradients are orders smaller.
    assert grad_norm[0, -1] < 1e-3 * grad_norm[-1, -1]


@pytest.mark.training
def test_alerts_and_verdict(vanishing_run, healthy_run):
    record = load_run(vanishing_run)
    published = PUBLISHED[vanishing_run]
    assert [(a["name"], a["status"], a["step"]) for a in record.alerts] == [
        (a.name, a.status, a.step) for a in published]
    (vanishing,) = [a for a in record.alerts if a["name"] == "GradientVanishing"]
    assert vanishing["status"] == "firing" and vanishing["regime"] == "vanishing"
    assert vanishing["remedy"] == next(a.remedy for a in published if a.name == "GradientVanishing")
    assert record.verdict == "vanishing"
    healthy = load_run(healthy_run)
    assert healthy.alerts == () and healthy.verdict == "healthy"


# --- the page --------------------------------------------------------------------------------

@pytest.mark.training
def test_heatmap_has_one_cell_per_layer_and_sampled_step(vanishing_run, vanishing_html):
    record = load_run(vanishing_run)
    found = cells(vanishing_html)
    assert len(found) == len(record.layers) * len(record.sampled_steps)
    row = {layer: i for i, layer in enumerate(record.layers)}
    column = {int(step): j for j, step in enumerate(record.sampled_steps)}
    for layer, step, value, _ in found:
        assert value == record.statistics["grad_norm"][row[layer], column[step]]


@pytest.mark.training
def test_report_shows_alerts_remedies_and_verdict(vanishing_run, vanishing_html, healthy_run):
    assert 'data-regime="vanishing">vanishing<' in vanishing_html
    published = PUBLISHED[vanishing_run]
    assert vanishing_html.count('class="alert-row') == len(published)
    remedy = next(a.remedy for a in published if a.name == "GradientVanishing")
    assert unescape(vanishing_html).count(remedy) == 1
    assert 'class="marker"' in vanishing_html   # the firing alert on the per-step charts
    healthy_html = write_report(healthy_run).read_text(encoding="utf-8")
    assert 'id="no-alerts"' in healthy_html and 'data-regime="healthy">healthy<' in healthy_html


@pytest.mark.training
def test_report_is_self_contained(vanishing_html):
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", vanishing_html)
    assert not re.search(r"""url\(\s*["']?\s*(https?:)?//""", vanishing_html)
    assert "<script" not in vanishing_html and "<link" not in vanishing_html
    assert "@import" not in vanishing_html


@pytest.mark.training
def test_default_and_explicit_output_paths(healthy_run, tmp_path):
    assert write_report(healthy_run) == healthy_run / "gradwatch-report.html"
    out = write_report(healthy_run, tmp_path / "custom.html")
    assert out == tmp_path / "custom.html" and out.read_text().startswith("<!DOCTYPE html>")


# --- odd runs --------------------------------------------------------------------------------

def snapshot(step: int, layers: tuple[str, ...], grad_norm: list[float]) -> Snapshot:
    """A Snapshot with the given gradient norms and plain values elsewhere."""
    ones = np.ones(len(layers))
    nonfinite = np.zeros((len(NONFINITE_SOURCES), len(layers), len(NONFINITE_KINDS)), int)
    nonfinite[0, :, 1] = np.isinf(grad_norm)
    pulse = Pulse(step=step, time=time.time(), loss=float("nan") if step == 2 else 1.0,
                  global_grad_norm=float(np.sqrt(np.sum(np.square(grad_norm)))))
    return Snapshot("odd", 0, step, time.time(), layers, np.asarray(grad_norm, float), ones,
                    ones * 1e-3, ones * 0, ones, ones * 0.1, ones * 0, ones, ones, nonfinite,
                    "", (pulse,), 0.0)


@pytest.mark.unit
def test_nonfinite_and_missing_values_are_shown_distinctly(tmp_path):
    layers = ("encoder", "decoder")
    sink = TensorBoardSink(log_dir=str(tmp_path))
    for step, grad_norm in ((0, [0.5, float("nan")]), (2, [float("inf"), float("nan")])):
        sink.on_snapshot(snapshot(step, layers, grad_norm))
        sink.on_pulse(snapshot(step, layers, grad_norm).pulse)   # NaN loss at step 2
    sink.close()

    record = load_run(tmp_path)
    assert record.nonfinite_steps("gradient").tolist() == [2]
    assert record.nonfinite_steps("loss").tolist() == [2]
    assert record.verdict == "nonfinite"   # observed, even without alerts
    html = write_report(tmp_path).read_text(encoding="utf-8")
    fills = {(layer, step): fill for layer, step, _, fill in cells(html)}
    assert fills[("encoder", 0)].startswith("#")
    assert fills[("decoder", 0)] == MISSING_FILL     # not measured (the sink writes no NaN)
    assert fills[("encoder", 2)] == NONFINITE_FILL   # +Inf
    assert fills[("decoder", 2)] == NONFINITE_FILL   # NaN: a step with non-finite gradients
    assert 'class="nonfinite"' in html               # the NaN loss, marked on its chart
    assert "gradient 1, loss 1" in html              # the header's non-finite steps


@pytest.mark.unit
def test_one_sampled_step_and_no_per_step_figures(tmp_path):
    sink = TensorBoardSink(log_dir=str(tmp_path))
    sink.on_snapshot(snapshot(0, ("only",), [0.25]))
    sink.close()
    html = write_report(tmp_path).read_text(encoding="utf-8")
    assert [(layer, step) for layer, step, _, _ in cells(html)] == [("only", 0)]
    assert "Loss: not recorded." in html


@pytest.mark.unit
def test_alerts_only_and_malformed_events_do_not_crash(tmp_path):
    @dataclass(frozen=True)
    class OddAlert:   # fields missing or of the wrong type, as a buggy writer might leave
        name: str = "<Odd & Alert>"
        step: int = 3
        status: str = "firing"
        layers: None = None
        regime: str = "no such regime"

        def to_dict(self) -> dict:  # what the sink writes of an Alert
            return dataclasses.asdict(self)

    sink = TensorBoardSink(log_dir=str(tmp_path))
    sink.on_alert(OddAlert())
    sink.writer.add_text("gradwatch/alerts", "not JSON at all", 4)
    sink.close()
    record = load_run(tmp_path)
    assert len(record.alerts) == 1 and record.verdict == "healthy"
    html = write_report(tmp_path).read_text(encoding="utf-8")
    assert "&lt;Odd &amp; Alert&gt;" in html and "<Odd" not in html
    assert "No per-layer gradient norms were recorded." in html

    stepless = tmp_path / "stepless"
    sink = TensorBoardSink(log_dir=str(stepless))
    sink.writer.add_text("gradwatch/alerts", fenced_json(
        {"name": ["a", "list"], "layers": 5, "step": "seven", "status": "resolved"}), 7)
    sink.close()
    assert 'class="alert-row resolved"' in write_report(stepless).read_text(encoding="utf-8")


@pytest.mark.unit
def test_thousands_of_layers_and_steps_are_downsampled():
    layers, steps = 3000, 1000
    generator = np.random.default_rng(0)
    grad_norm = generator.lognormal(size=(layers, steps))
    grad_norm[5, -1] = np.inf   # the latest step is always shown
    statistics = {name: np.full((layers, steps), np.nan) for name in LAYER_GAUGES}
    statistics["grad_norm"] = grad_norm
    names = tuple(f"block.{i}.linear" for i in range(layers))
    loss = Series(np.arange(20_000), generator.random(20_000))
    record = RunRecord("big/run", Path("big/run"), names, np.arange(steps) * 10, statistics,
                       {"loss": loss}, ())
    html = render_report(record, Thresholds())
    # the 20 000-step loss is drawn thinned, as thin() gives it, and no line has more points
    lines = re.findall(r'<polyline points="([^"]*)"', html)
    assert lines and max(len(points.split()) for points in lines) <= len(thin(loss).steps)
    found = cells(html)
    assert len(found) <= MAX_HEATMAP_ROWS * MAX_HEATMAP_COLUMNS
    assert {step for _, step, _, _ in found} >= {0, (steps - 1) * 10}   # first and latest
    label, _, first_group, _ = found[0]   # the input-side group at the first step
    last_member = int(re.fullmatch(r"block\.0\.linear…block\.(\d+)\.linear", label).group(1))
    assert first_group == pytest.approx(np.sqrt(np.sum(grad_norm[:last_member + 1, 0] ** 2)))
    assert any(fill == NONFINITE_FILL for *_, fill in found)   # one Inf layer taints its group
    assert len(html) < 5_000_000


@pytest.mark.unit
def test_spike_level_and_thinning_keep_what_matters():
    series = Series(np.arange(5), np.array([1.0, 2.0, np.nan, 3.0, 100.0]))
    level = spike_level(series, factor=10, window=2)
    assert level.steps.tolist() == [1, 2, 3, 4]
    assert level.values.tolist() == [10.0, 20.0, 20.0, 30.0]   # NaN is not a level
    median = spike_level(series, factor=3, window=3, basis="median")  # the loss spike's basis
    assert median.values.tolist() == [3.0, 4.5, 4.5, 7.5]
    values = np.ones(10_000)
    values[1234], values[4321], values[7777] = 1e6, 1e-6, np.inf
    thinned = thin(Series(np.arange(10_000), values), most=100)
    assert len(thinned.steps) <= 101
    assert {1234, 4321, 7777} <= set(thinned.steps.tolist())   # spike, dip, Inf all kept


@pytest.mark.training
def test_directories_without_gradwatch_data_give_clear_errors(tmp_path, healthy_run):
    with pytest.raises(NoGradwatchData, match="not a directory"):
        load_run(tmp_path / "missing")
    with pytest.raises(NoGradwatchData, match="no TensorBoard event files"):
        load_run(tmp_path)
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(tmp_path / "other")) as writer:
        writer.add_scalar("train/loss", 1.0, 0)
    with pytest.raises(NoGradwatchData, match="without gradwatch data"):
        load_run(tmp_path / "other")
    parent = healthy_run.parent   # lightning_logs
    with pytest.raises(NoGradwatchData, match="runs below it: version_0"):
        load_run(parent)
    assert find_runs(parent) == [healthy_run]
    assert write_reports(parent) == [healthy_run / "gradwatch-report.html"]
    with pytest.raises(NoGradwatchData, match="no run with gradwatch data"):
        write_reports(tmp_path / "other")


# --- in a browser ----------------------------------------------------------------------------

def chromium(*arguments: str, cwd: Path) -> subprocess.CompletedProcess:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (scripts/setup.sh test installs it)")
        pytest.skip("chromium is not installed: apt-get install chromium, or scripts/setup.sh test")
    return subprocess.run(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
         f"--user-data-dir={cwd / 'chromium-profile'}", "--virtual-time-budget=15000",
         *arguments], cwd=cwd, capture_output=True, text=True, timeout=120, check=True)


@pytest.mark.servers
def test_chromium_renders_the_charts(vanishing_run, vanishing_html, tmp_path):
    record = load_run(vanishing_run)
    page = (vanishing_run / "gradwatch-report.html").resolve()
    dom = chromium("--dump-dom", page.as_uri(), cwd=tmp_path).stdout
    assert len(re.findall(r'<svg class="chart"', dom)) >= 8   # heatmap, legend, 2 + 4, alerts
    assert len(re.findall(r'<rect class="cell"', dom)) == len(record.layers) * len(
        record.sampled_steps)
    assert len(re.findall(r"<polyline", dom)) >= 6


@pytest.mark.servers
def test_screenshot_is_a_picture(vanishing_html, vanishing_run, tmp_path):
    from PIL import Image   # installed with tensorboard

    page = (vanishing_run / "gradwatch-report.html").resolve()
    chromium("--window-size=1400,2400", "--force-color-profile=srgb", "--screenshot=shot.png",
             page.as_uri(), cwd=tmp_path)
    image = Image.open(tmp_path / "shot.png").convert("RGB")
    assert image.size == (1400, 2400)
    pixels = np.asarray(image).reshape(-1, 3).astype(int)
    painted = {tuple(colour) for colour in np.unique(pixels, axis=0)}
    assert len(painted) > 200, len(painted)
    white = np.all(pixels == 255, axis=1)
    page_background = np.all(np.abs(pixels - [245, 247, 250]) <= 2, axis=1)
    ink = np.mean(~white & ~page_background)
    assert ink > 0.05, ink   # text, lines and the heatmap, not an empty page
    # Every colour of the heatmap's cells is on screen: the heatmap really was painted.
    fills = {fill for *_, fill in cells(vanishing_html)}
    assert {tuple(int(f[i:i + 2], 16) for i in (1, 3, 5)) for f in fills} <= painted


# --- the four demo runs, told apart by their heatmaps (issue 15) ------------------------------

DEMO_RUNS = ("healthy", "vanishing", "exploding", "nan")
#: Hue ranges (degrees) of the regime bands, as a reader names the colours on screen.
HUE_BANDS = {"vanishing": (250, 300), "healthy": (100, 170), "exploding": (12, 45)}
NONFINITE_HATCH = ("#d62728", "#ffd6d6")   # the hatch's two colours (svg.pattern_defs)


def demo_record(demo_runs, run: str) -> RunRecord:
    assert demo_runs.result.returncode == 0, demo_runs.result.stderr[-3000:]
    return load_run(demo_runs.out / run)


def expected_bands(grad_norm: np.ndarray, t: Thresholds) -> np.ndarray:
    """Each cell's regime as the detectors judge it: above explosion_norm; below
    vanishing_depth_ratio x the output-side quarter's geometric mean (3+ layers)."""
    bands = np.full(grad_norm.shape, "healthy", dtype=object)
    for j, column in enumerate(grad_norm.T):
        finite = column[np.isfinite(column)]
        if len(finite) >= 3:
            reference = np.exp(np.mean(np.log(finite[-max(1, len(finite) // 4):])))
            bands[column < t.vanishing_depth_ratio * reference, j] = "vanishing"
        bands[column > t.explosion_norm, j] = "exploding"
    bands[~np.isfinite(grad_norm)] = "missing-or-nonfinite"
    return bands


@pytest.mark.training
def test_cell_bands_are_judged_by_the_thresholds(demo_runs):
    t = Thresholds()
    found = {}
    for run in DEMO_RUNS:
        record = demo_record(demo_runs, run)
        html = render_report(record, t)
        bands = dict(((unescape(layer), int(step)), band) for layer, step, band in re.findall(
            r'<rect class="cell" data-layer="([^"]*)" data-step="(\d+)" data-value="[^"]*" '
            r'data-band="([^"]*)"', html))
        grad_norm = np.full((len(record.layers), len(record.sampled_steps)), np.nan)
        for i, layer in enumerate(record.layers):   # straight from TensorBoard's reader
            for step, value in read_scalars(str(demo_runs.out / run)).get(
                    f"gradwatch/grad_norm/{layer}", []):
                grad_norm[i, list(record.sampled_steps).index(step)] = value
        expected = expected_bands(grad_norm, t)
        for i, layer in enumerate(record.layers):
            for j, step in enumerate(record.sampled_steps):
                band = bands[(layer, int(step))]
                want = expected[i, j]
                assert band == want or (want == "missing-or-nonfinite"
                                        and band in ("missing", "nonfinite")), (run, layer, step)
        found[run] = {b: list(bands.values()).count(b) / len(bands) for b in set(bands.values())}
    assert found["healthy"] == {"healthy": 1.0}
    assert found["exploding"] == {"exploding": 1.0}
    assert 0.3 < found["vanishing"]["vanishing"] < 1.0
    assert found["nan"]["nonfinite"] > 0.3 and found["nan"]["exploding"] > 0.2


@pytest.mark.training
def test_relative_colours_are_the_option_that_hides_the_regime(demo_runs):
    """Relative colours are each run's own range: an exploding cell gets the colour of a
    healthy cell 100 000 times smaller, which is why they are not the default."""
    runs = {}
    for run in ("healthy", "exploding"):
        html = render_report(demo_record(demo_runs, run), Thresholds(), colours="relative")
        assert 'data-band="relative"' in html and "this run's range" in unescape(html)
        runs[run] = [(value, np.asarray([int(fill[i:i + 2], 16) for i in (1, 3, 5)]))
                     for _, _, value, fill in cells(html)]
    distance, healthy, exploding = min(
        (float(np.linalg.norm(a - b)), u, v) for u, a in runs["healthy"]
        for v, b in runs["exploding"])
    assert distance < 25 and exploding / healthy > 1e5, (distance, healthy, exploding)
    with pytest.raises(ValueError, match="colours"):
        render_report(demo_record(demo_runs, "healthy"), Thresholds(), colours="rainbow")


def hue_shares(pixels: np.ndarray) -> dict[str, float]:
    """Share of each band's hue, and of the non-finite hatch, among the pixels."""
    import colorsys

    hsl = np.asarray([colorsys.rgb_to_hls(*(pixel / 255.0)) for pixel in pixels])
    hue, saturation = hsl[:, 0] * 360, hsl[:, 2]
    coloured = saturation > 0.25
    shares = {band: float(np.mean(coloured & (lo <= hue) & (hue <= hi)))
              for band, (lo, hi) in HUE_BANDS.items()}
    shares["nonfinite"] = float(np.mean(coloured & ((hue < 8) | (hue > 345))))
    return shares


def heatmap_pixels(image: np.ndarray, fills: set[str]) -> np.ndarray:
    """The pixels of the heatmap's plot area: the first block of rows painted with its cell
    colours (the legend below it is separated by the axis), within their columns."""
    packed = (image[:, :, 0] << 16) | (image[:, :, 1] << 8) | image[:, :, 2]
    rows = np.flatnonzero(np.isin(packed, [int(f[1:], 16) for f in fills]).any(axis=1))
    end = next((k for k in range(1, len(rows)) if rows[k] - rows[k - 1] > 3), len(rows))
    top, bottom = rows[0], rows[end - 1] + 1
    # the columns of the cells and of the hatched ones (the verdict box has the hatch's red)
    hit = np.isin(packed[top:bottom], [int(f[1:], 16) for f in fills | set(NONFINITE_HATCH)])
    columns = np.flatnonzero(hit.any(axis=0))
    return image[top:bottom, columns[0]:columns[-1] + 1].reshape(-1, 3).astype(float)


@pytest.mark.servers
def test_screenshots_of_the_four_demo_reports_differ_in_colour_band(demo_runs, tmp_path):
    from PIL import Image

    shares = {}
    for run in DEMO_RUNS:
        page = write_report(demo_runs.out / run)
        fills = {fill for *_, fill in cells(page.read_text(encoding="utf-8"))
                 if fill.startswith("#")}
        chromium("--window-size=1300,1100", "--force-color-profile=srgb",
                 f"--screenshot={run}.png", page.resolve().as_uri(), cwd=tmp_path)
        image = np.asarray(Image.open(tmp_path / f"{run}.png").convert("RGB")).astype(int)
        pixels = heatmap_pixels(image, fills)
        shares[run] = hue_shares(pixels[:: max(1, len(pixels) // 40_000)])
    assert shares["healthy"]["healthy"] > 0.95, shares
    assert shares["exploding"]["exploding"] > 0.95, shares
    assert shares["vanishing"]["vanishing"] > 0.3 and shares["vanishing"]["healthy"] > 0.3, shares
    assert shares["nan"]["nonfinite"] > 0.2 and shares["nan"]["exploding"] > 0.2, shares
    dominant = {run: max(HUE_BANDS, key=shares[run].get) for run in ("healthy", "exploding")}
    assert dominant == {"healthy": "healthy", "exploding": "exploding"}


@pytest.mark.training
def test_heatmap_step_ticks_are_even_round_numbers(demo_runs):
    record = demo_record(demo_runs, "nan")
    assert len(set(np.diff(record.sampled_steps))) > 1   # sampled densely after the NaN
    heatmap = render_report(record, Thresholds()).split('<svg class="chart"')[1]
    ticks = [(float(x), int(label)) for x, label in re.findall(
        r'<text x="([\d.]+)" y="[\d.]+" text-anchor="middle" class="tick">(\d+)</text>',
        heatmap)]
    assert len(ticks) >= 4
    positions, labels = np.asarray(ticks).T
    assert len(set(np.diff(labels))) == 1 and np.diff(labels)[0] in (1, 2, 5, 10, 20, 50)
    assert np.ptp(np.diff(positions)) < 0.2   # evenly spaced on screen too
    cell_steps = {step for _, step, _, _ in cells(heatmap)}
    assert cell_steps == set(record.sampled_steps.tolist())


@pytest.mark.training
def test_one_layer_heatmap_has_room_for_its_axis_label(demo_runs):
    from PIL import ImageFont

    record = demo_record(demo_runs, "nan")
    assert len(record.layers) == 1
    heatmap = render_report(record, Thresholds()).split('<svg class="chart"')[1]
    plot = re.search(r'<rect x="[\d.]+" y="([\d.]+)" width="[\d.]+" height="([\d.]+)" '
                     r'fill="#fff"', heatmap)
    label = re.search(r'class="axis-label" transform="rotate\(-90[^"]*"\>([^<]+)<', heatmap)
    font = ImageFont.truetype("DejaVuSans.ttf", 11.5)   # the page's font, as fc-match gives it
    assert font.getlength(unescape(label.group(1))) <= float(plot.group(2))


# --- a folder reused by several runs --------------------------------------------------------

def vanishing_alert(step: int) -> Alert:
    finding = Finding("GradientVanishing", "warning", step, time.time(), ("encoder",), 1e-4,
                      1e-3, "Gradients vanish toward the input", "", "remedy", "vanishing")
    return Alert.firing(finding, run="demo/vanishing")


def write_run(folder: Path, steps: range, scale: float, alert_step: int | None = None) -> None:
    """One run's TensorBoard writer, as a training run leaves it: a snapshot every other
    step and the loss every step (``scale`` tells the runs apart)."""
    layers = ("encoder", "decoder")
    sink = TensorBoardSink(log_dir=str(folder))
    for step in steps:
        sink.on_pulse(Pulse(step=step, time=time.time(), loss=scale * (step + 1),
                            global_grad_norm=scale))
        if step % 2 == 0:
            sink.on_snapshot(snapshot(step, layers, [scale, 2 * scale]))
        if step == alert_step:
            sink.on_alert(vanishing_alert(step))
    sink.close()


@pytest.mark.unit
def test_a_rerun_into_the_same_folder_reports_the_latest_run_alone(tmp_path):
    for scale in (1.0, 2.0, 3.0):   # the demo run three times into one folder
        write_run(tmp_path, range(6), scale, alert_step=4)
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 3
    record = load_run(tmp_path)
    assert record.replaced_runs == 2
    assert [(a["name"], a["step"]) for a in record.alerts] == [("GradientVanishing", 4)]
    assert record.series["loss"].values.tolist() == [3.0 * (s + 1) for s in range(6)]
    assert record.statistics["grad_norm"][0].tolist() == [3.0, 3.0, 3.0]
    html = render_report(record, Thresholds())
    assert html.count('class="alert-row') == 1
    assert "earlier runs in this folder" in html and "2, replaced by this one from step 0" in html


@pytest.mark.unit
def test_a_resumed_run_keeps_the_history_before_its_first_step(tmp_path):
    write_run(tmp_path, range(10), 1.0, alert_step=2)
    write_run(tmp_path, range(6, 12), 5.0)   # resumed from a checkpoint at step 6
    record = load_run(tmp_path)
    assert record.replaced_runs == 1
    loss = record.series["loss"]
    assert loss.steps.tolist() == list(range(12))
    assert loss.values.tolist() == [s + 1.0 for s in range(6)] + [5.0 * (s + 1) for s in
                                                                   range(6, 12)]
    assert record.sampled_steps.tolist() == [0, 2, 4, 6, 8, 10]
    assert record.statistics["grad_norm"][0].tolist() == [1.0, 1.0, 1.0, 5.0, 5.0, 5.0]
    assert [a["step"] for a in record.alerts] == [2]   # before the resume: history


@pytest.mark.unit
def test_writers_open_at_the_same_time_are_one_run(tmp_path):
    layers = ("encoder", "decoder")
    scalars, alerts = (TensorBoardSink(log_dir=str(tmp_path)) for _ in range(2))
    scalars.on_snapshot(snapshot(0, layers, [1.0, 2.0]))
    alerts.on_alert(vanishing_alert(0))   # a second writer, e.g. every rank into one folder
    scalars.on_snapshot(snapshot(2, layers, [1.0, 2.0]))
    alerts.close()
    scalars.close()
    record = load_run(tmp_path)
    assert record.replaced_runs == 0 and len(record.alerts) == 1
    assert record.sampled_steps.tolist() == [0, 2]
