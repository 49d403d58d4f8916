"""The overhead benchmark (with its cardinality section), the step-cost benchmark and the
prepared GPU benchmark run end to end (``--smoke``: tiny sizes, one round, a few steps; the
GPU one on the CPU).

Checks the reports' shape, not timings: a row per available configuration, and ratios that
are positive finite numbers; the step cost's times and op counts, and their differences.
"""

from __future__ import annotations

import math
import re

import pytest

from benchmarks import cardinality, clip_cost, gpu, lightning_step, overhead, sampled_cost, step_cost
from benchmarks.configs import CONFIGS

pytestmark = pytest.mark.training

ROW = re.compile(r"^\| (?P<config>[\w-]+)(?: \*)? \| [\d.]+ \| x(?P<ratio>\S+) \[(?P<low>\S+)-(?P<high>\S+)\]")


def test_smoke_run_writes_a_row_per_config(tmp_path):
    report = tmp_path / "bench.md"
    report.write_text(f"# old\n\n## mlp\n\nold rows\n\n{gpu.SECTION}\n\nmeasured on a GPU\n")
    output = overhead.main(["--smoke", "--output", str(report)])
    text = output.read_text()
    assert "old rows" not in text and f"{gpu.SECTION}\n\nmeasured on a GPU\n" in text
    rows = {m["config"]: m for m in map(ROW.match, text.splitlines()) if m}
    expected = {c.name for c in CONFIGS if c.available()}
    assert set(rows) == expected
    for row in rows.values():
        for field in ("ratio", "low", "high"):
            value = float(row[field])
            assert math.isfinite(value) and value > 0, (row["config"], field, value)
    assert "## Scale" in text and "/metrics" in text
    assert step_cost.SECTION in text and "| bfloat16 | aten ops |" in text
    clip_rows = re.findall(r"^\| (bare|separate read|clip is the read) \| (\d+) \| ([+-]\d+) \|",
                           text.split(clip_cost.SECTION, 1)[1], re.M)
    ops = {path: (int(total), int(added)) for path, total, added in clip_rows}
    assert set(ops) == set(clip_cost.PATHS) and ops["bare"][1] == 0
    # the clip's pass is the read: a few scalar ops, far fewer than a read of its own
    assert 0 < ops["clip is the read"][1] < ops["separate read"][1]
    assert re.search(r"^\| 64 \| \d+ \| \d+ \| \d+ \| \d+ \| yes \|", text.split(
        cardinality.SECTION, 1)[1], re.M), "the cardinality section, with its 64-rank row"
    assert sampled_cost.SECTION in text and "| update stats |" in text


def smoke_section(benchmark, tmp_path) -> str:
    """``benchmark``'s smoke run written into a report with another section (kept)."""
    output = tmp_path / "bench.md"
    output.write_text("# report\n\n## Other\n\nkept\n")
    benchmark.main(["--smoke", "--output", str(output)])
    text = output.read_text()
    assert "## Other\n\nkept" in text and benchmark.SECTION in text
    return text


def test_step_cost_smoke_reports_time_and_ops(tmp_path):
    text = smoke_section(step_cost, tmp_path)
    for dtype in ("float32", "bfloat16"):
        time_row = re.search(rf"^\| {dtype} \| Python time \(us\) \| (\S+) \| (\S+) \| (\S+) \|",
                             text, re.M)
        ops_row = re.search(rf"^\| {dtype} \| aten ops \| (\S+) \| (\S+) \| (\S+) \|",
                            text, re.M)
        assert time_row and ops_row, dtype
        hooks, norm, beyond = (float(v) for v in time_row.groups())
        assert hooks > 0 and norm > 0 and math.isclose(beyond, hooks - norm, abs_tol=0.11)
        ops, norm_ops, beyond_ops = (float(v) for v in ops_row.groups())
        assert norm_ops >= 1 and ops >= norm_ops
        assert math.isclose(beyond_ops, ops - norm_ops, abs_tol=0.01)
    # the float32 CPU path reads the tiny MLP's 10 gradients one BLAS dot at a time
    norm_read = re.search(r"^\| float32 \| aten ops \| [\d.]+ \| (\d+) \|", text, re.M)
    assert norm_read and int(norm_read[1]) >= 10


def test_sampled_cost_smoke_reports_ops_and_time_per_part(tmp_path):
    text = smoke_section(sampled_cost, tmp_path)
    cells = {}
    for part in [*sampled_cost.PARTS, "total"]:
        row = re.search(rf"^\| {part} \| (.+) \|$", text, re.M)
        assert row, part
        cells[part] = row[1].split(" | ")
        assert len(cells[part]) == 6, part  # ops, ms (share) for each of the three models
    for model in range(3):
        ops = [float(cells[part][2 * model]) for part in sampled_cost.PARTS]
        assert "(" not in cells["total"][2 * model]  # no figures before: other sizes
        assert math.isclose(float(cells["total"][2 * model]), sum(ops), abs_tol=0.5)
        # a sampled step reads activations and weights and makes its one transfer
        for part in ("activation records", "weight stats", "transfer"):
            assert float(cells[part][2 * model]) >= 1, (model, part)
        ms = float(cells["total"][2 * model + 1].split()[0])
        assert math.isfinite(ms) and ms > 0


def test_gpu_smoke_runs_both_modes_and_counts_the_one_transfer(tmp_path):
    output = tmp_path / "bench.md"
    output.write_text(f"# report\n\n{gpu.SECTION}\n\nold\n\n## Other\n\nkept\n")
    gpu.main(["--smoke", "--output", str(output)])
    text = output.read_text()
    assert "old" not in text and "## Other\n\nkept" in text
    rows = {(m[1], m[2]): m for m in re.finditer(
        r"^\| (eager|compiled) \| ([\w-]+) \| 1 \| [\d.]+ \| x(\S+) \[.*\| (\S+) \|$",
        text, re.M)}
    assert set(rows) == {(mode, name) for mode in ("eager", "compiled")
                         for name in gpu.SMOKE_CONFIG_NAMES}
    for (mode, name), row in rows.items():
        assert float(row[3]) > 0
        # host reads added per step: none on unsampled steps, the ONE transfer on sampled ones
        assert float(row[4]) == (1.0 if name == gpu.EVERY_STEP else 0.0), (mode, name)


def test_lightning_step_smoke_reports_ratios_and_parts(tmp_path):
    text = smoke_section(lightning_step, tmp_path).split(lightning_step.SECTION, 1)[1]
    rows = re.findall(r"^\| (\w+): .* \| ([\d.]+) \| x\S+ \[\S+\] \| x(\S+) \[\S+\] "
                      r"\| x(\S+) \[\S+\] "
                      r"\| ([+-]\d+) \| x(\S+) \[\S+\] \| (-?[\d.]+) \|$", text, re.M)
    assert [name for name, *_ in rows] == [spec.name for spec in lightning_step.models()]
    for _, bare_ms, floor_ratio, gradwatch_ratio, _, every_step_ratio, _ in rows:
        assert float(bare_ms) > 0 and float(floor_ratio) > 0 and float(gradwatch_ratio) > 0
        assert float(every_step_ratio) > 0
    own = re.findall(r"^\| (\w+) \| ([\d.]+) \| ([\d.]+) \| [+-][\d.]+ \|$", text, re.M)
    assert [name for name, *_ in own] == [spec.name for spec in lightning_step.models()]
    assert all(float(floor) > 0 and float(gradwatch) > 0 for _, floor, gradwatch in own)
    parts = dict(re.findall(r"^\| ([^|]+?) \| ([\d.]+) \|", text, re.M))
    for hook in lightning_step.HOOKS:  # every hook of a step was clocked
        assert float(parts[f"hook {hook}"]) > 0
    assert float(parts["sampled steps: transfer + packing"]) > 0
    assert float(parts["detector GradientVanishing"]) > 0
