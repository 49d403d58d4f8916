"""A new user's first five minutes: the README's Quickstart runs as pasted after the plain
install, every example runs on that install or names its extra on its first line, and
installing or attaching gradwatch leaves the user's Trainer as it was."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from .helpers import read_scalars
from .lightning_models import PACKAGES, lightning

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXTRAS = PYPROJECT["project"]["optional-dependencies"]
NAMED_EXTRA = re.compile(r"gradwatch\[(\w+)\]")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(requirements: list[str]) -> set[str]:
    """Every distribution those requirements install (as installed here), by Requires-Dist
    without extras unless a requirement asks for one."""
    seen: set[str] = set()
    pending = [Requirement(r) for r in requirements]
    while pending:
        requirement = pending.pop()
        name = canonical(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        for text in metadata.requires(requirement.name) or ():
            dependency = Requirement(text)
            wanted = requirement.extras or {""}
            if dependency.marker is None or any(
                    dependency.marker.evaluate({"extra": extra}) for extra in wanted):
                pending.append(dependency)
    return seen


BASE = closure(PYPROJECT["project"]["dependencies"])


@pytest.mark.unit
def test_the_base_install_brings_no_rich():
    assert "pytorch-lightning" in BASE and "torch" in BASE  # the closure is really walked
    assert "rich" not in BASE
    assert "rich" in closure(EXTRAS["demo"])


@pytest.mark.unit
@pytest.mark.parametrize("package", PACKAGES)
def test_attaching_the_callback_keeps_the_trainers_progress_bar_and_summary(package, tmp_path):
    from gradwatch import TrainingDiagnostics

    pl = lightning(package)

    def chosen(callbacks):
        trainer = pl.Trainer(callbacks=callbacks, default_root_dir=tmp_path, max_steps=1)
        summaries = [type(c) for c in trainer.callbacks
                     if isinstance(c, pl.callbacks.ModelSummary)]
        return type(trainer.progress_bar_callback), summaries

    assert chosen([TrainingDiagnostics()]) == chosen([])


def quickstart() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Quickstart"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.training
def test_readme_quickstart_runs_as_pasted(tmp_path):
    code = quickstart()
    # shorter and on any free port; otherwise exactly the README's text
    short = code.replace("max_epochs=16", "max_steps=3").replace("prometheus_port=9400",
                                                                 "prometheus_port=0")
    assert short.count("max_steps=3") == 1 and short.count("prometheus_port=0") == 1
    script = tmp_path / "quickstart.py"
    script.write_text("import torch\ntorch.set_num_threads(1)\n" + short)
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"gradwatch: run .*/metrics http://127\.0\.0\.1:\d+/metrics", result.stderr)
    # an epoch holds more batches than the logging interval: Lightning does not warn
    assert "smaller than the logging interval" not in result.stderr
    scalars = read_scalars(str(tmp_path / "lightning_logs" / "version_0"))
    assert [step for step, _ in scalars["gradwatch/grad_norm/net.0"]] == [0, 2]
    assert len(scalars["gradwatch/loss"]) == 3


def imported_distributions(path: Path) -> set[str]:
    """The installed distributions an example imports (not the stdlib, gradwatch, nor the
    examples' own modules)."""
    providers = metadata.packages_distributions()
    local = {p.stem for p in path.parent.glob("*.py")}
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    names -= set(sys.stdlib_module_names) | local | {"gradwatch"}
    return {canonical(d) for name in names for d in providers[name]}


@pytest.mark.unit
@pytest.mark.parametrize("example", sorted((ROOT / "examples").glob("*.py")), ids=lambda p: p.name)
def test_example_runs_on_the_base_install_or_names_its_extra(example):
    first_line = example.read_text().splitlines()[0]
    named = NAMED_EXTRA.findall(first_line)
    assert set(named) <= set(EXTRAS), f"{example.name} names an unknown extra: {named}"
    available = BASE | closure([r for extra in named for r in EXTRAS[extra]])
    missing = imported_distributions(example) - available
    assert not missing, (f"{example.name} imports {sorted(missing)}, not in the base install: "
                         "its first line must name the extra (pip install 'gradwatch[...]')")
    if not named:
        assert "base install" in first_line, first_line


@pytest.mark.unit
def test_demo_without_its_extra_says_which_in_one_line(tmp_path):
    hide_rich = ("import sys; sys.modules['rich'] = None; from gradwatch.cli import main; "
                 f"sys.exit(main(['demo', '--out', {str(tmp_path)!r}]))")
    result = subprocess.run([sys.executable, "-c", hide_rich], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "gradwatch demo: needs the optional package rich: pip install 'gradwatch[demo]'"]
    assert not any(tmp_path.iterdir())  # nothing trained
