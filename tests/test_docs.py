"""The documentation cannot drift from the code: arguments, alerts, links."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from gradwatch.callbacks import TrainingDiagnostics
from gradwatch.monitor.alerts import ALERT_NAMES
from gradwatch.monitor.doctor import CONTRACT_ALERTS

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]


def test_readme_starts_with_the_two_set_up_commands():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```")[1]
    commands = [line.split("#")[0].strip() for line in block.splitlines()[1:] if line.strip()]
    assert commands == ["make demo", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_readme_documents_every_argument_of_the_callback():
    readme = (ROOT / "README.md").read_text()
    documented = {name for row in re.findall(r"^\| (`\w+`(?:, `\w+`)*) \|", readme, flags=re.M)
                  for name in re.findall(r"`(\w+)`", row)}
    arguments = set(inspect.signature(TrainingDiagnostics.__init__).parameters) - {"self"}
    assert arguments <= documented, arguments - documented
    docstring = TrainingDiagnostics.__doc__
    assert all(re.search(rf"^\s+(\w+, )*{name}[:,]", docstring, re.M) for name in arguments)


def test_runbook_has_a_section_per_alert():
    sections = set(re.findall(r"^## (\w+)", (ROOT / "docs" / "runbook.md").read_text(), re.M))
    assert set(ALERT_NAMES) | set(CONTRACT_ALERTS) <= sections


def test_relative_links_in_the_docs_resolve():
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.name}: {target}"
