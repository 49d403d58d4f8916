"""The examples run as documented."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .helpers import read_scalars

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
