"""Checkpoint-on-alert: when a named alert fires, the last good state is saved through
Lightning's own checkpointing, at the end of that step, and the Alert names the file."""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger("gradwatch")


class AlertCheckpoints:
    """The checkpoints due for the alerts named in ``alert_names``, saved under ``root``."""

    def __init__(self, alert_names: frozenset[str]) -> None:
        self.alert_names = alert_names
        self.root = "."
        self._due: list[str] = []

    def start(self, root: str) -> None:
        """A new fit, saving under ``root``."""
        self.root, self._due = root, []

    def path_for(self, finding: Any) -> str | None:
        """The file for an alert about to fire (saved after the step), or None."""
        if finding.name not in self.alert_names:
            return None
        path = os.path.join(self.root, f"gradwatch-{finding.name}-step{finding.step}.ckpt")
        self._due.append(path)
        return path

    def save_due(self, trainer: Any) -> None:
        due, self._due = self._due, []
        for path in due:
            try:
                trainer.save_checkpoint(path)
            except Exception as exc:  # monitoring must not stop the training
                log.warning("gradwatch: checkpoint-on-alert could not save %s: %r", path, exc)
