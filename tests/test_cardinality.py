"""Series counts at fleet scale (benchmarks/cardinality.py), on a smaller model: the target
holds, and each rank above 0 exports a constant handful, whatever the depth."""

from __future__ import annotations

import pytest

from benchmarks import cardinality

pytestmark = pytest.mark.unit


def test_series_across_ranks_within_the_target(one_torch_thread):
    counts = cardinality.count_worlds(layers=30, worlds=(1, 2, 16))
    single = counts[0].total
    assert single > 9 * 30  # 8 gauges + depth per layer, on the only rank
    for count in counts:
        assert count.total <= count.target(single), count
    others = {c.other_rank for c in counts[1:]}
    assert len(others) == 1 and others.pop() < 20  # no per-layer series on ranks above 0
    assert counts[2].total == counts[2].rank0 + 15 * counts[2].other_rank


def test_the_section_replaces_itself_in_the_document(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Bench\n\n## Other\nkept\n")
    cardinality.write_section(doc, cardinality.SECTION + "\n\nfirst\n")
    cardinality.write_section(doc, cardinality.SECTION + "\n\nsecond\n")
    text = doc.read_text()
    assert text.count(cardinality.SECTION) == 1 and "second" in text and "first" not in text
    assert text.startswith("# Bench\n\n## Other\nkept\n")
