"""The built wheel installs one import package, `gradwatch`, and nothing that a user's own
`callbacks.py` or `monitor.py` (both common in training repositories) could clash with."""

from __future__ import annotations

import site
import subprocess
import sys
import sysconfig
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from .helpers import TINY_MODULE_SOURCE

ROOT = Path(__file__).resolve().parents[1]

USER_SCRIPT = """
import lightning.pytorch as pl
import torch
from torch import nn

from callbacks import EarlyStopOnPlateau          # the user's callbacks.py
from monitor import watch_disk                     # the user's monitor.py
from gradwatch import Monitor, Thresholds, TrainingDiagnostics
import gradwatch
import gradwatch.monitor.judging.engine

assert EarlyStopOnPlateau.__module__ == "callbacks" and watch_disk() == "disk ok"
assert Monitor.__module__ == "gradwatch.monitor.capture.monitor"
assert gradwatch.__file__.startswith(SITE), gradwatch.__file__
assert gradwatch.monitor.judging.engine.__file__.startswith(SITE)

""" + TINY_MODULE_SOURCE + """

torch.manual_seed(0)
diagnostics = TrainingDiagnostics(every_n_steps=1, prometheus_port=None, thresholds=Thresholds())
pl.Trainer(max_steps=3, callbacks=[diagnostics], logger=False, enable_checkpointing=False,
           enable_progress_bar=False, enable_model_summary=False).fit(Model())
snapshot = diagnostics.last_snapshot
print("layers", list(snapshot.layers), "step", snapshot.step)
"""


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> tuple[Path, str]:
    """The wheel built offline from this checkout, and pip's output while building it."""
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                            "--no-build-isolation", "-w", str(out), str(ROOT)],
                           check=True, capture_output=True, text=True, timeout=300)
    (wheel,) = out.glob("gradwatch-*.whl")
    return wheel, built.stdout + built.stderr


@pytest.fixture(scope="module")
def wheel(build) -> Path:
    return build[0]


@pytest.mark.unit
def test_wheel_holds_only_the_gradwatch_package(wheel):
    top_level = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {name for name in top_level if not name.endswith(".dist-info")} == {"gradwatch"}
    names = zipfile.ZipFile(wheel).namelist()
    assert "gradwatch/py.typed" in names
    assert "gradwatch/monitor/records/thresholds.py" in names
    assert "gradwatch/callbacks/training_diagnostics.py" in names


@pytest.mark.training
def test_installed_beside_a_users_callbacks_and_monitor_modules(tmp_path, wheel):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--no-deps", str(wheel)], check=True, capture_output=True, timeout=300)
    venv_site = Path(subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True).stdout.strip())
    installed = {path.name for path in venv_site.iterdir()}
    assert {name for name in installed if not name.endswith((".dist-info", ".pth"))
            and not name.startswith("_")} == {"gradwatch"}
    # torch, Lightning and the rest come from this environment, after the fresh venv's own
    # site-packages (so the wheel's gradwatch is the one imported, not this checkout's)
    # (sys.path also holds those a .pth file of this environment added)
    dependencies = [sysconfig.get_paths()["purelib"], *site.getsitepackages(),
                    *(path for path in sys.path if path.endswith("site-packages"))]
    (venv_site / "zz_dependencies.pth").write_text("\n".join(dict.fromkeys(dependencies)) + "\n")

    project = tmp_path / "user_project"
    project.mkdir()
    (project / "callbacks.py").write_text("class EarlyStopOnPlateau:\n    pass\n")
    (project / "monitor.py").write_text("def watch_disk():\n    return 'disk ok'\n")
    (project / "train.py").write_text(f"SITE = {str(venv_site)!r}\n" + USER_SCRIPT)
    result = subprocess.run([str(python), "train.py"], cwd=project, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "layers ['net.0', 'net.2'] step 2" in result.stdout, result.stdout[-2000:]

    cli = subprocess.run([str(venv / "bin" / "gradwatch"), "--help"], cwd=project,
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0 and "doctor" in cli.stdout, cli.stderr[-2000:]


@pytest.mark.unit
def test_wheel_declares_the_license_as_spdx_and_ships_it(build):
    wheel, output = build
    names = zipfile.ZipFile(wheel).namelist()
    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    fields = Parser().parsestr(zipfile.ZipFile(wheel).read(metadata).decode())
    assert fields["License-Expression"] == "Apache-2.0" and fields["License"] is None
    (license_file,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
    text = zipfile.ZipFile(wheel).read(license_file).decode()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text  # the full text, not a stub
    assert "deprecat" not in output.lower(), output
