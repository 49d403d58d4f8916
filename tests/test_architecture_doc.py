"""docs/architecture.md's table "metric -> the function that computes it" stays true: every
gradwatch_* family of the metric contract has its row, and every function a row names
exists (an importable ``gradwatch.monitor.<module>.<qualname>``)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from gradwatch.monitor.records.metrics import METRICS

pytestmark = pytest.mark.unit

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
SECTION = "## Metric -> the function that computes it"
PACKAGE = "gradwatch.monitor"
CODE = re.compile(r"`([^`]+)`")


def table_rows() -> dict[str, list[str]]:
    """metric family -> the dotted names in its row's other cells."""
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index(SECTION):]
    section = section[:section.find("\n## ", 1)]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`gradwatch_"):
            continue
        rows[cells[0].strip("`")] = [name for cell in cells[1:] for name in CODE.findall(cell)
                                     if "." in name and not name.startswith("gradwatch_")]
    return rows


def resolve(dotted: str) -> object:
    """The object ``gradwatch.monitor.<dotted>`` names: the longest importable module, then
    attributes (class, method)."""
    parts = f"{PACKAGE}.{dotted}".split(".")
    for split in range(len(parts) - 1, 1, -1):
        try:
            target = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[split:]:
            target = getattr(target, attribute)
        return target
    raise ModuleNotFoundError(dotted)


def test_every_metric_family_has_its_row():
    rows = table_rows()
    assert sorted(rows) == sorted(METRICS)
    assert all(rows.values()), "a row names no function"


def test_every_named_function_resolves():
    names = {name for row in table_rows().values() for name in row}
    unresolved = []
    for name in sorted(names):
        try:
            target = resolve(name)
        except (AttributeError, ModuleNotFoundError):
            unresolved.append(name)
            continue
        assert callable(target), f"{name} is not a function"
    assert unresolved == []


def test_resolve_fails_for_a_name_that_does_not_exist():
    assert resolve("probes.tensor_stats.squared_norms").__name__ == "squared_norms"
    assert resolve("records.packing.pack_snapshot").__qualname__ == "pack_snapshot"
    for missing in ("probes.tensor_stats.no_such_function", "no_such_module.f"):
        try:
            resolve(missing)
        except (AttributeError, ModuleNotFoundError):
            continue
        raise AssertionError(f"{missing} resolved")
