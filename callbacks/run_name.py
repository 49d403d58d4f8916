"""The ``run`` label of a fit when ``run_name`` is not given: read from the Trainer's logger
in the words its own UI uses (``lightning_logs/version_3``, MLflow's
``<experiment>/<run name>``, W&B's ``<project>/<run name>``), not its internal ids."""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger("gradwatch")


def default_run_name(trainer: Any) -> str:
    """``<logger name>/<version>`` of the Trainer's first logger, else ``run-<timestamp>``."""
    logger = trainer.logger
    if logger is None:
        return time.strftime("run-%Y%m%d-%H%M%S")
    kind = type(logger).__name__
    try:
        if kind == "MLFlowLogger":
            return _mlflow_name(logger)
        if kind == "WandbLogger":
            return f"{logger.name}/{logger.experiment.name or logger.version}"
    except Exception as exc:  # a tracking server that does not answer: its ids will do
        log.debug("gradwatch: the run name of %s: %r", kind, exc)
    if not logger.name:
        return time.strftime("run-%Y%m%d-%H%M%S")
    version = logger.version
    return f"{logger.name}/" + (f"version_{version}" if isinstance(version, int) else str(version))


def _mlflow_name(logger: Any) -> str:
    """MLflow's experiment and run names (its logger's name and version are their ids)."""
    client, run_id = logger.experiment, logger.run_id
    experiment = client.get_experiment(logger.experiment_id).name
    return f"{experiment}/{client.get_run(run_id).info.run_name or run_id[:8]}"
