"""The examples run as documented."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import read_scalars

pytestmark = pytest.mark.training

ROOT = Path(__file__).resolve().parents[1]


def test_plain_pytorch_example_writes_every_layer(tmp_path):
    log_dir = tmp_path / "plain"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "plain_pytorch.py"), "--steps", "21",
         "--port", "0", "--log-dir", str(log_dir)],
        capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "/metrics on http://127.0.0.1:" in result.stdout
    scalars = read_scalars(str(log_dir))
    for layer in ("0", "2", "4"):
        assert [step for step, _ in scalars[f"gradwatch/grad_norm/{layer}"]] == [0, 10, 20]
    assert len(scalars["gradwatch/loss"]) == 21
    assert len(scalars["gradwatch/update_ratio/2"]) == 3


def run_example(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                            cwd=cwd, timeout=180)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def test_lightning_example(tmp_path):
    run_example(str(ROOT / "examples" / "lightning_train.py"), "--steps", "26", "--port", "0",
                "--root", str(tmp_path), cwd=tmp_path)
    scalars = read_scalars(str(tmp_path / "lightning_logs" / "version_0"))
    assert [s for s, _ in scalars["gradwatch/grad_norm/net.0"]] == [0, 25]
    assert "train_loss" in scalars  # the user's own logging is untouched


def test_lightning_cli_yaml_config(tmp_path):
    run_example(str(ROOT / "examples" / "cli.py"), "fit", "--config",
                str(ROOT / "examples" / "cli_config.yaml"), "--trainer.max_steps=21",
                f"--trainer.default_root_dir={tmp_path}",
                "--trainer.callbacks.init_args.prometheus_port=0", cwd=tmp_path)
    scalars = read_scalars(str(tmp_path / "lightning_logs" / "version_0"))
    assert [s for s, _ in scalars["gradwatch/activation_variance/net.6"]] == [0, 20]
    assert len(scalars["gradwatch/loss"]) == 21
