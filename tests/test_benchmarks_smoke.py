"""The overhead benchmark runs end to end (``--smoke``: tiny sizes, one round, a few steps).

Checks the report's shape, not timings: a row per available configuration, and ratios that
are positive finite numbers.
"""

from __future__ import annotations

import math
import re

from benchmarks import overhead
from benchmarks.configs import CONFIGS

ROW = re.compile(r"^\| (?P<config>[\w-]+)(?: \*)? \| [\d.]+ \| x(?P<ratio>\S+) \[(?P<low>\S+)-(?P<high>\S+)\]")


def test_smoke_run_writes_a_row_per_config(tmp_path):
    output = overhead.main(["--smoke", "--output", str(tmp_path / "bench.md")])
    text = output.read_text()
    rows = {m["config"]: m for m in map(ROW.match, text.splitlines()) if m}
    expected = {c.name for c in CONFIGS if c.available()}
    assert set(rows) == expected
    for row in rows.values():
        for field in ("ratio", "low", "high"):
            value = float(row[field])
            assert math.isfinite(value) and value > 0, (row["config"], field, value)
    assert "## Scale" in text and "/metrics" in text
