"""Prometheus file_sd target files: how Prometheus finds trainers without a config edit.

One JSON file per node, listing every local rank's /metrics address (base port + local
rank), dropped into the folder Prometheus watches (``deploy/prometheus/targets/``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

TARGETS_DIR = Path("deploy/prometheus/targets")


def target_group(host: str, port: int, ranks: int = 1,
                 labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The file_sd document for one node: ``ranks`` ports from ``port`` on."""
    if not host or any(c in host for c in "/ :"):
        raise ValueError(f"host must be a host name or address, got {host!r}")
    if not 0 < port < 65536 or not 0 < port + ranks - 1 < 65536:
        raise ValueError(f"port must be in 1..65535 for every rank, got {port} with {ranks} ranks")
    if ranks < 1:
        raise ValueError(f"ranks must be >= 1, got {ranks}")
    return [{"targets": [f"{host}:{port + rank}" for rank in range(ranks)],
             "labels": dict(labels or {})}]


def write_targets(host: str, port: int, ranks: int = 1, labels: dict[str, str] | None = None,
                  directory: str | os.PathLike[str] = TARGETS_DIR) -> Path:
    """Write ``<directory>/<host>.json`` atomically (Prometheus may read it at any time)."""
    path = Path(directory) / f"{host}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.tmp")
    partial.write_text(json.dumps(target_group(host, port, ranks, labels), indent=2) + "\n")
    os.replace(partial, path)
    return path
