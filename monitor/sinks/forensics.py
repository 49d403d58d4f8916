"""Forensics bundles: when an alert fires, the recent history that led to it, as JSON.

A sink (it runs on the export thread, so the file write never touches the training thread):
it keeps the latest Pulses and Snapshots it is handed, and on a firing alert of a chosen
severity writes ``<directory>/<run>-rank<rank>-step<step>-<alertname>.json`` with the
alert, those Pulses and Snapshots, so the steps before a divergence can be read after the
fact (and the offending batches found).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections import deque
from pathlib import Path

import numpy as np

from ..records.findings import FIRING, SEVERITIES, Alert
from ..records.snapshot import Pulse, Snapshot
from ..records.validation import check_directory, check_int, check_names


class ForensicsSink:
    """Writes a JSON bundle per firing alert.

    Args:
        directory: where bundles go (created if missing).
        pulses: how many of the latest Pulses a bundle holds.
        snapshots: how many of the latest Snapshots a bundle holds.
        severities: alert severities that get a bundle.

    Raises:
        ValueError: a bad option, naming it.
    """

    def __init__(self, directory: str | os.PathLike[str], *, pulses: int = 200, snapshots: int = 5,
                 severities: tuple[str, ...] = ("critical",)) -> None:
        check_directory("directory", directory)
        check_int("pulses", pulses, low=1)
        check_int("snapshots", snapshots, low=1)
        self.severities = check_names("severities", severities, SEVERITIES)
        self.directory = Path(directory)
        self.written: list[Path] = []
        self._pulses: deque[Pulse] = deque(maxlen=pulses)
        self._snapshots: deque[Snapshot] = deque(maxlen=snapshots)

    def on_pulse(self, pulse: Pulse) -> None:
        self._pulses.append(pulse)

    def on_snapshot(self, snapshot: Snapshot) -> None:
        self._snapshots.append(snapshot)

    def on_alert(self, alert: Alert) -> None:
        if alert.status != FIRING or alert.severity not in self.severities:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{alert.run}-rank{alert.rank}-step{alert.step}-"
                                                 f"{alert.name}")
        path = self.directory / f"{stem}.json"
        bundle = {
            "alert": alert.to_dict(),
            "pulses": [_plain(dataclasses.asdict(p)) for p in self._pulses],
            "snapshots": [_plain({f.name: getattr(s, f.name) for f in dataclasses.fields(s)
                                  if f.name != "pulses"}) for s in self._snapshots],
        }
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(bundle, allow_nan=False))
        tmp.replace(path)  # readers never see half a bundle
        self.written.append(path)

    def close(self) -> None:
        pass


def _plain(value: object) -> object:
    """JSON-ready: arrays to lists, non-finite floats to their names ("nan", "inf")."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else str(float(value))
    if isinstance(value, np.integer):
        return int(value)
    return value
