"""The house rules of the code base (issues 14, 25): a tree whose folders are the flow, modules
a newcomer can read alone, and imports that all point one way (toward the records)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
MAX_CLASS_LINES = 300
MAX_FUNCTION_LINES = 60
MAX_FOLDER_MODULES = 15
PACKAGE_FOLDERS = ("gradwatch", "monitor", "callbacks")
#: Where each room of the core may import from (besides itself and the leaf modules at the
#: core's root: ``logs``, ``lazy``). The picture of docs/architecture.md, as a test.
ROOM_IMPORTS = {
    "records": set(),
    "probes": {"records"},
    "judging": {"records", "probes"},  # probes: the weight audit, read once (engine.audit)
    "sinks": {"records"},
    "capture": {"records", "probes", "sinks"},  # the Monitor hands its records to the sinks
    "ops": {"records"},
    "report": {"records", "sinks"},  # a run read back from what the TensorBoard sink wrote
}
ROOT_LEAVES = {"logs", "lazy"}


def shipped_modules() -> dict[str, Path]:
    """Every module of the installed package, by its import name (``gradwatch.monitor.x``)."""
    modules = {}
    for folder in PACKAGE_FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[0] != "gradwatch":
                parts.insert(0, "gradwatch")
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules ``name`` imports anywhere: at the top, inside functions
    (local imports) and under TYPE_CHECKING alike."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # `from . import x` imports the module x
                full = f"{target}.{alias.name}"
                found.add(full if full in known else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in known and m != name}


def import_graph() -> dict[str, set[str]]:
    modules = shipped_modules()
    return {name: imports_of(name, path, set(modules)) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def room(module: str) -> str | None:
    """The room of the core (``gradwatch.monitor.<room>...``) a module is in."""
    parts = module.split(".")
    if parts[:2] != ["gradwatch", "monitor"] or len(parts) < 3 or parts[2] in ROOT_LEAVES:
        return None
    return parts[2]


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
    found = [problem for path in shipped_modules().values()
             for problem in oversized(path.read_text(), str(path.relative_to(ROOT)))]
    assert found == []


def test_the_check_sees_an_oversized_function():
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    assert oversized(f"def long():\n{body}", "f.py") == [
        f"f.py:1 long: {MAX_FUNCTION_LINES + 1} lines > {MAX_FUNCTION_LINES}"]
    assert oversized("def short():\n    return 1\n", "f.py") == []


def test_no_folder_holds_more_than_15_modules():
    folders: dict[Path, int] = {}
    for path in shipped_modules().values():
        if path.name != "__init__.py":
            folders[path.parent] = folders.get(path.parent, 0) + 1
    crowded = {str(f.relative_to(ROOT)): n for f, n in folders.items() if n > MAX_FOLDER_MODULES}
    assert crowded == {}
    assert len(folders) >= 9, "the walk sees the subpackages"


def test_no_import_cycle():
    graph = import_graph()
    assert sum(map(len, graph.values())) > 100, "the walk sees the imports"
    assert cycles(graph) == []


def test_the_cycle_check_sees_a_cycle_through_a_local_import(tmp_path):
    (tmp_path / "a.py").write_text("from . import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from .a import g  # local\n")
    (tmp_path / "c.py").write_text("from typing import TYPE_CHECKING\n"
                                   "if TYPE_CHECKING:\n    from .a import g\n")
    known = {"p.a", "p.b", "p.c"}
    graph = {f"p.{m}": imports_of(f"p.{m}", tmp_path / f"{m}.py", known) for m in "abc"}
    assert graph == {"p.a": {"p.b"}, "p.b": {"p.a"}, "p.c": {"p.a"}}
    assert cycles(graph) == [["p.a", "p.b"]]


def test_every_import_of_the_core_points_toward_the_records():
    wrong = []
    for module, imported in import_graph().items():
        here = room(module)
        if here is None:
            continue
        for other in imported:
            there = room(other)
            if there is None and other.rpartition(".")[2] in ROOT_LEAVES:
                continue  # the logger and the lazy loader: leaves everyone may use
            if there != here and there not in ROOM_IMPORTS[here]:
                wrong.append(f"{module} -> {other}")
    assert sorted(wrong) == []
    assert set(ROOM_IMPORTS) == {room(m) for m in shipped_modules() if room(m)}


def test_records_and_judging_load_no_torch():
    heavy = ("torch", "lightning", "pytorch_lightning")
    found = []
    for module, path in shipped_modules().items():
        if room(module) not in ("records", "judging"):
            continue
        for node in ast.parse(path.read_text()).body:  # module level: what importing loads
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{module}: {n}" for n in names if n.split(".")[0] in heavy]
    assert found == []
