"""The documentation cannot drift from the code: arguments, alerts, links; the README stays an
entrance (issue 25) and each metric is listed once."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from gradwatch.callbacks import TrainingDiagnostics
from gradwatch.monitor.ops.doctor import CONTRACT_ALERTS
from gradwatch.monitor.records.alert_table import TABLE
from gradwatch.monitor.records.findings import ALERT_NAMES
from gradwatch.monitor.records.metrics import METRICS, render_arguments

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]


def test_readme_starts_with_the_two_set_up_commands():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```")[1]
    commands = [line.split("#")[0].strip() for line in block.splitlines()[1:] if line.strip()]
    assert commands == ["make demo", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def prose_words(markdown: str) -> int:
    """Words outside fenced code blocks and table rows."""
    words, fenced = 0, False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and not line.lstrip().startswith("|"):
            words += len(line.split())
    return words


def test_prose_words_skip_code_and_tables():
    assert prose_words("one two\n```bash\nmake demo\n```\n| a | b |\nthree\n") == 3


def test_readme_is_an_entrance_of_at_most_1500_words_of_prose():
    assert prose_words((ROOT / "README.md").read_text()) <= 1500


def test_readme_alert_table_is_the_alert_tables_names_and_severities():
    readme = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| \[(\w+)\]\(docs/runbook\.md#(\w+)\) \| (\w+) \|", readme, re.M)
    assert [(name, anchor, severity) for name, anchor, severity in rows] == [
        (spec.name, spec.anchor, spec.severity) for spec in TABLE]


def test_docs_index_lists_every_page_once():
    index = (ROOT / "docs" / "index.md").read_text()
    listed = re.findall(r"^- \[[^]]+\]\(([\w-]+\.md)\): ", index, re.M)
    pages = sorted(p.name for p in (ROOT / "docs").glob("*.md") if p.name != "index.md")
    assert sorted(listed) == pages


def most_metrics_in_one_block(text: str) -> int:
    """The most distinct gradwatch_* metrics one paragraph, list or table names."""
    names = {m.name for m in METRICS.values()}
    return max(len({n.removesuffix("_total") for n in re.findall(r"gradwatch_\w+", block)}
                   & names) for block in re.split(r"\n\s*\n", text))


def test_every_metric_is_listed_once():
    """docs/metrics.md lists them all; elsewhere a mention, never a list (docs/architecture.md
    maps each metric to the code that computes it, for maintainers)."""
    assert most_metrics_in_one_block((ROOT / "docs" / "metrics.md").read_text()) == len(METRICS)
    texts = {path.name: path.read_text()
             for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
             if path.name not in ("metrics.md", "architecture.md")}
    texts["TrainingDiagnostics.__doc__"] = TrainingDiagnostics.__doc__ or ""
    listed = {name: n for name, text in texts.items() if (n := most_metrics_in_one_block(text)) > 8}
    assert listed == {}, "list them in monitor/records/metrics.py (docs/metrics.md) and link it"


def test_docs_arguments_documents_every_argument_of_the_callback():
    page = (ROOT / "docs" / "arguments.md").read_text()
    documented = {name for row in re.findall(r"^\| (`\w+`(?:, `\w+`)*) \|", page, flags=re.M)
                  for name in re.findall(r"`(\w+)`", row)}
    arguments = set(inspect.signature(TrainingDiagnostics.__init__).parameters) - {"self"}
    assert arguments <= documented, arguments - documented
    docstring = TrainingDiagnostics.__doc__
    assert all(re.search(rf"^\s+(\w+, )*{name}[:,]", docstring, re.M) for name in arguments)


def test_committed_arguments_doc_is_generated_from_the_docstring():
    assert (ROOT / "docs" / "arguments.md").read_text() == render_arguments(TrainingDiagnostics), \
        "docs/arguments.md is stale: run `gradwatch metrics-doc --arguments --out docs/arguments.md`"


def test_runbook_has_a_section_per_alert():
    sections = set(re.findall(r"^## (\w+)", (ROOT / "docs" / "runbook.md").read_text(), re.M))
    assert set(ALERT_NAMES) | set(CONTRACT_ALERTS) <= sections


def test_relative_links_in_the_docs_resolve():
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.name}: {target}"
