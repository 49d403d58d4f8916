"""The house rules of the code base (issue 14): modules a newcomer can read alone."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
MAX_CLASS_LINES = 300
MAX_FUNCTION_LINES = 60
PACKAGE_FOLDERS = ("gradwatch", "monitor", "callbacks")


def oversized(source: str, where: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            limit = MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else MAX_FUNCTION_LINES
            if lines > limit:
                found.append(f"{where}:{node.lineno} {node.name}: {lines} lines > {limit}")
    return found


def test_no_class_over_300_lines_and_no_function_over_60():
    found = [problem for folder in PACKAGE_FOLDERS for path in sorted((ROOT / folder).glob("*.py"))
             for problem in oversized(path.read_text(), str(path.relative_to(ROOT)))]
    assert found == []


def test_the_check_sees_an_oversized_function():
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    assert oversized(f"def long():\n{body}", "f.py") == [
        f"f.py:1 long: {MAX_FUNCTION_LINES + 1} lines > {MAX_FUNCTION_LINES}"]
    assert oversized("def short():\n    return 1\n", "f.py") == []
