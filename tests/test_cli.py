"""The `gradwatch` command line, run as a user would (the console script's module)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gradwatch.monitor.ops import rules
from gradwatch.cli import main
from gradwatch.monitor.ops.dashboards import render_dashboards

from .helpers import gradwatch_cli

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("demo", "report", "rules", "dashboards", "targets", "doctor", "metrics-doc")


def gradwatch(*args: str, cwd: Path | None = None, timeout: float = 120, code: str | None = None,
              **env: str):
    return gradwatch_cli(*args, cwd=cwd or ROOT, timeout=timeout, code=code, **env)


@pytest.mark.unit
@pytest.mark.parametrize("command", ("", *COMMANDS))
def test_help_everywhere(command):
    result = gradwatch(*([command] if command else []), "--help")
    assert result.returncode == 0
    assert "usage: gradwatch" in result.stdout
    if not command:
        assert all(c in result.stdout for c in COMMANDS)


@pytest.mark.unit
def test_rules_and_dashboards_regenerate_the_committed_files(tmp_path):
    result = gradwatch("rules", "--out", str(tmp_path / "rules.yml"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "rules.yml").read_text() == (ROOT / rules.RULES_PATH).read_text()
    result = gradwatch("dashboards", "--out", str(tmp_path / "boards"))
    assert result.returncode == 0, result.stderr
    for name, text in render_dashboards().items():
        assert (tmp_path / "boards" / name).read_text() == text
        assert (ROOT / "dashboards" / name).read_text() == text


@pytest.mark.unit
def test_thresholds_file_changes_the_rules_and_bad_ones_are_named(tmp_path):
    overrides = tmp_path / "t.yml"
    overrides.write_text("explosion_norm: 123.0\n")
    assert gradwatch("rules", "--thresholds", str(overrides), "--out",
                     str(tmp_path / "r.yml")).returncode == 0
    assert 'gradwatch_step_global_grad_norm_bucket{le="123.0"}' in (tmp_path / "r.yml").read_text()
    overrides.write_text("explosion_nrom: 1\n")
    result = gradwatch("rules", "--thresholds", str(overrides), "--out", str(tmp_path / "x"))
    assert result.returncode == 2 and "explosion_nrom" in result.stderr
    overrides.write_text("tanh_flat: .nan\n")
    result = gradwatch("rules", "--thresholds", str(overrides), "--out", str(tmp_path / "x"))
    assert result.returncode == 2 and "tanh_flat" in result.stderr


@pytest.mark.unit
def test_runbook_base_url_option_sets_every_link_and_bad_ones_are_named(tmp_path):
    out = tmp_path / "r.yml"
    assert gradwatch("rules", "--runbook-base-url", "https://wiki.example/rb", "--out",
                     str(out)).returncode == 0
    links = re.findall(r"runbook_url: (\S+)", out.read_text())
    assert links and all(link.startswith("https://wiki.example/rb#") for link in links)
    result = gradwatch("rules", "--runbook-base-url", "docs/runbook.md", "--out", str(out))
    assert result.returncode == 2 and "runbook_base_url" in result.stderr


@pytest.mark.unit
def test_targets_writes_a_file_sd_entry_per_node(tmp_path):
    result = gradwatch("targets", "--host", "node7", "--port", "9400", "--ranks", "4",
                       "--label", "cluster=a", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "node7.json").read_text()) == [{
        "targets": ["node7:9400", "node7:9401", "node7:9402", "node7:9403"],
        "labels": {"cluster": "a"}}]
    bad = gradwatch("targets", "--host", "node7", "--port", "70000", "--out", str(tmp_path))
    assert bad.returncode == 2 and "port" in bad.stderr


@pytest.mark.unit
def test_report_of_a_missing_run_is_a_clear_error(tmp_path):
    result = gradwatch("report", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert "gradwatch report:" in result.stderr


@pytest.mark.servers
def test_doctor_against_the_real_stack(prometheus_server, alertmanager_server, scrape_target):
    alertmanager = alertmanager_server({"route": {"receiver": "null"},
                                        "receivers": [{"name": "null"}]})
    prometheus = prometheus_server([scrape_target], rule_files=[ROOT / rules.RULES_PATH],
                                   alertmanager_url=alertmanager.url)
    prometheus.wait_for("gradwatch_step")
    metrics = f"http://{scrape_target}/metrics"
    result = gradwatch("doctor", "--metrics-url", metrics, "--prometheus-url", prometheus.url,
                       "--alertmanager-url", alertmanager.url)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 7 and all(line.startswith("[pass]") for line in lines[:-1]), lines
    assert lines[-1].startswith("[skip] test alert reaches the receiver: --test-alert"), lines
    dead = gradwatch("doctor", "--metrics-url", "http://127.0.0.1:9/metrics", "--timeout", "1",
                     "--wait", "1")
    assert dead.returncode == 1
    assert "[FAIL] metrics endpoint reachable" in dead.stdout
    assert "[skip] Alertmanager reachable" in dead.stdout


@pytest.mark.training
def test_demo_shows_the_four_verdicts(demo_runs):
    result = demo_runs.result
    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout[result.stdout.index("what each run looked like"):]
    rows = {line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[2:5]]
            for line in table.splitlines() if line.startswith("│") and line.split("│")[1].strip()}
    assert {run: cells[0] for run, cells in rows.items()} == {
        "healthy": "healthy", "vanishing": "vanishing", "exploding": "exploding",
        "nan": "nonfinite"}
    # at 80 columns every line fits (but the commands and paths, copied as printed: this
    # test's are long) and no alert name is split
    where = str(demo_runs.out)
    assert max(len(line) for line in result.stdout.splitlines() if where not in line) <= 80
    assert rows["vanishing"][1].startswith("GradientVanishing @ step")
    assert rows["nan"][1].startswith("GradientExplosion @ step")
    tips = result.stdout[result.stdout.index("what to try"):result.stdout.index("where to look")]
    remedies: dict[str, str] = {}
    for line in tips.splitlines()[1:]:  # a run's remedy, wrapped onto the lines below it
        start = re.match(r"(healthy|vanishing|exploding|nan): (.*)", line)
        if start:
            run, remedies[start[1]] = start[1], start[2]
        else:
            remedies[run] += " " + line.strip()
    # context-aware: clipping at 1.0 is already on; the NaN run exploded first
    assert remedies["exploding"].startswith("Gradient clipping is on (norm clipped to 1)")
    assert remedies["nan"].startswith("Lower the learning rate")
    assert "GradientExplosion at step" in remedies["nan"]
    # the live alert lines keep their layers (not read as Rich markup)
    assert re.search(r"FIRING GradientVanishing step \d+ \[net\.0, net\.2", result.stdout)
    assert "FIRING NonFiniteValues" in result.stdout
    for run in rows:
        assert (demo_runs.out / run / "gradwatch-report.html").is_file()
        assert list((demo_runs.out / run).glob("events.out.tfevents.*"))
    assert "tensorboard --logdir" in result.stdout


@pytest.mark.training
def test_the_commands_the_demo_prints_run_as_printed(demo_runs):
    """"tensorboard --logdir ..." and "gradwatch report ...", typed as printed where the
    demo ran (its .venv not activated: the demo names the script's path)."""
    printed = dict(re.findall(r"^(TensorBoard|A report again): (.+)$", demo_runs.result.stdout,
                              re.M))
    tensorboard, gradwatch_report = printed["TensorBoard"].split(), printed[
        "A report again"].split()
    where = demo_runs.out.parent
    assert shutil.which(tensorboard[0], path=str(where)) or (where / tensorboard[0]).is_file()
    assert (where / tensorboard[2]).is_dir()
    again = subprocess.run(gradwatch_report, cwd=where, capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("wrote ") == 4


@pytest.mark.unit
def test_printed_commands_name_the_venv_when_it_is_not_on_path(monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.chdir(ROOT)
    from gradwatch.demo import command

    script = Path(sys.executable).parent / "tensorboard"
    expected = (os.path.relpath(script) if str(script).startswith(str(ROOT))
                else str(script))
    assert command("tensorboard") == expected
    assert Path(command("tensorboard")).is_file()
    monkeypatch.setenv("PATH", str(script.parent))
    assert command("tensorboard") == "tensorboard"


@pytest.mark.training
def test_report_command_writes_a_report_per_run(tmp_path):
    from gradwatch.callbacks import TrainingDiagnostics

    from .lightning_models import regression_module, trainer

    for _ in range(2):  # two runs: version_0 and version_1
        trainer(callbacks=[TrainingDiagnostics(every_n_steps=2)], root=str(tmp_path),
                max_steps=4).fit(regression_module())
    runs = tmp_path / "lightning_logs"
    result = gradwatch("report", str(runs))
    assert result.returncode == 0, result.stderr
    for version in ("version_0", "version_1"):
        report = runs / version / "gradwatch-report.html"
        assert f"wrote {report}" in result.stdout
        assert "<svg" in report.read_text()
    single = gradwatch("report", str(runs / "version_0"), "--out", str(tmp_path / "one.html"))
    assert single.returncode == 0 and (tmp_path / "one.html").is_file()


# --- where output goes, defaults, optional packages (issue 15) ------------------------------

GENERATORS = {   # command line -> what it prints
    ("rules",): lambda: (ROOT / rules.RULES_PATH).read_text(),
    ("metrics-doc",): lambda: (ROOT / "docs" / "metrics.md").read_text(),
    ("metrics-doc", "--arguments"): lambda: (ROOT / "docs" / "arguments.md").read_text(),
    ("targets", "--host", "node7", "--ranks", "2"): lambda: json.dumps(
        [{"targets": ["node7:9400", "node7:9401"], "labels": {}}], indent=2) + "\n",
    ("dashboards",): lambda: json.dumps(
        {name: json.loads(text) for name, text in render_dashboards().items()}, indent=2,
        sort_keys=True) + "\n",
}


@pytest.mark.unit
@pytest.mark.parametrize("command", GENERATORS, ids=lambda c: c[0])
@pytest.mark.parametrize("out", ([], ["--out", "-"]), ids=("default", "dash"))
def test_generators_print_to_stdout_and_write_nothing_unasked(command, out, tmp_path,
                                                             monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)   # in-process main(): the console script's own entry point
    assert main([*command, *out]) == 0
    assert capsys.readouterr().out == GENERATORS[command]()
    assert list(tmp_path.iterdir()) == []   # no ./deploy, ./dashboards, ./docs, nor a "-"


@pytest.mark.training
def test_report_to_stdout_writes_no_file(demo_runs, tmp_path):
    run = demo_runs.out / "healthy"
    before = sorted(p.name for p in run.iterdir())
    result = gradwatch("report", str(run), "--out", "-", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("<!DOCTYPE html>") and "healthy" in result.stdout
    assert sorted(p.name for p in run.iterdir()) == before and list(tmp_path.iterdir()) == []
    bad = gradwatch("report", str(run), "--colours", "rainbow", cwd=tmp_path)
    assert bad.returncode == 2 and "--colours" in bad.stderr


@pytest.mark.unit
@pytest.mark.parametrize("command, shown", [
    ("rules", "(default: -)"), ("dashboards", "(default: -)"), ("targets", "(default: 9400)"),
    ("metrics-doc", "(default: -)"), ("doctor", "(default: 5.0)"),
    ("report", "(default: thresholds)"), ("demo", "(default: gradwatch_demo)")])
def test_help_shows_the_defaults(command, shown, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "200")   # argparse wraps at the terminal's width
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert shown in text
    assert "(default: None)" not in text and "(default: False)" not in text


@pytest.mark.unit
def test_a_missing_optional_package_is_one_line_and_exit_2(tmp_path):
    # None in sys.modules makes the import fail for real (ModuleNotFoundError)
    result = gradwatch("dashboards", "--out", str(tmp_path / "boards"),
                       code="sys.modules['grafana_foundation_sdk'] = None")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "gradwatch dashboards: needs the optional package grafana_foundation_sdk: "
        "pip install 'gradwatch[dashboards]'"]
    assert not (tmp_path / "boards").exists()
