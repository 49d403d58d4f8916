"""Every citation of the theory in shipped files points at a section of docs/theory.md.

Alert texts, thresholds, dashboards and docs once cited "THEORY n", a document the
repository did not ship. They cite docs/theory.md now, in two forms: a link to an anchor
(``theory.md#sigmoid-saturation``) and, in user-visible texts, a section title
(``docs/theory.md § Sigmoid saturation``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
THEORY = ROOT / "docs" / "theory.md"
SHIPPED = ("monitor", "callbacks", "gradwatch", "dashboards", "deploy", "docs", "README.md")
OLD_CITATION = re.compile(r"\bTHEORY\b")
ANCHOR_LINK = re.compile(r"theory\.md#([^\s)\"'`,;]*)")
SECTION_CITATION = re.compile(r"theory\.md § ")
LOCAL_ANCHOR = re.compile(r"\]\(#([^)\s]*)\)")
# a Python string literal broken over lines: `"... see docs/theory.md "\n    "§ Title"`
STRING_BREAK = re.compile(r"\"\s*\n\s*f?\"")


def anchor(title: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def section_titles() -> list[str]:
    return [line.lstrip("#").strip() for line in THEORY.read_text(encoding="utf-8").splitlines()
            if line.startswith("## ")]


def shipped_texts() -> dict[str, str]:
    texts = {}
    for name in SHIPPED:
        path = ROOT / name
        for file in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
            if "__pycache__" in file.parts:
                continue
            try:
                text = file.read_text(encoding="utf-8")
            except UnicodeDecodeError:  # images
                continue
            if file.suffix == ".py":
                text = STRING_BREAK.sub("", text)
            elif file.suffix == ".json":  # their strings as written, "§" not "\u00a7"
                text = json.dumps(json.loads(text), ensure_ascii=False)
            elif file.suffix in (".yml", ".yaml"):
                text = json.dumps(list(yaml.safe_load_all(text)), ensure_ascii=False, default=str)
            texts[str(file.relative_to(ROOT))] = text
    return texts


def bad_citations(text: str, titles: list[str]) -> list[str]:
    """The citations in ``text`` that name no section of docs/theory.md."""
    anchors = {anchor(t) for t in titles}
    bad = [f"THEORY at offset {m.start()}" for m in OLD_CITATION.finditer(text)]
    bad += [f"theory.md#{m.group(1)}" for m in ANCHOR_LINK.finditer(text)
            if m.group(1) not in anchors]
    for m in SECTION_CITATION.finditer(text):
        rest = text[m.end():]
        if not any(rest.startswith(t) and not rest[len(t):len(t) + 1].isalnum() for t in titles):
            bad.append(f"theory.md § {rest[:40]!r}")
    return bad


def test_anchors_follow_github_headings():
    assert anchor("Xavier and He initialisation") == "xavier-and-he-initialisation"
    assert anchor("Update-to-weight ratio") == "update-to-weight-ratio"
    assert anchor("BatchNorm and LayerNorm") == "batchnorm-and-layernorm"


def test_the_checker_catches_each_kind_of_bad_citation():
    titles = ["Sigmoid saturation"]
    assert bad_citations("see theory.md#sigmoid-saturation and docs/theory.md § Sigmoid "
                         "saturation.", titles) == []
    assert bad_citations("(THEORY 2)", titles) == ["THEORY at offset 1"]
    assert bad_citations("theory.md#sigmoid", titles) == ["theory.md#sigmoid"]
    assert len(bad_citations("docs/theory.md § Sigmoid saturations", titles)) == 1
    assert len(bad_citations("docs/theory.md § Tanh", titles)) == 1


def test_theory_covers_the_topics_the_alerts_rest_on():
    titles = set(section_titles())
    for topic in ("Vanishing and exploding gradients", "Sigmoid saturation",
                  "Xavier and He initialisation", "BatchNorm and LayerNorm",
                  "Gradient clipping", "Residual connections", "LSTM gates"):
        assert topic in titles


def test_every_shipped_citation_names_a_section_of_theory():
    titles = section_titles()
    texts = shipped_texts()
    bad = {name: found for name, text in texts.items() if (found := bad_citations(text, titles))}
    assert bad == {}
    cited = [name for name, text in texts.items()
             if ANCHOR_LINK.search(text) or SECTION_CITATION.search(text)]
    # the sources, the generated files and the runbook all cite it
    for name in ("monitor/records/thresholds.py", "dashboards/gradwatch-layers.json", "docs/runbook.md"):
        assert name in cited


def test_theory_links_within_itself_resolve():
    anchors = {anchor(t) for t in section_titles()}
    links = LOCAL_ANCHOR.findall(THEORY.read_text(encoding="utf-8"))
    assert links and set(links) <= anchors
