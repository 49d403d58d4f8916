"""The start-up line: on rank 0, once per fit, the `gradwatch` log says where /metrics is
(the port actually bound), where TensorBoard writes, how often layers are sampled and where
alerts go; a user sees it with Lightning's default logging."""

from __future__ import annotations

import logging
import re
import subprocess
import sys

import lightning.pytorch as pl
import pytest

from gradwatch import TrainingDiagnostics

from .helpers import TINY_MODULE_SOURCE, sample, samples, scrape
from .lightning_models import regression_module, trainer

pytestmark = pytest.mark.training

URL = re.compile(r"/metrics (http://127\.0\.0\.1:(\d+)/metrics)")


def startup_lines(records) -> list[str]:
    messages = [r.getMessage() for r in records if r.name == "gradwatch"]
    return [m for m in messages if "/metrics" in m]


class ScrapeNamedUrl(pl.Callback):
    """Scrapes the URL the start-up line names while it is served, after gradwatch's
    last flush (it runs after TrainingDiagnostics' on_train_end)."""

    def __init__(self, caplog) -> None:
        self.caplog = caplog
        self.scraped: str | None = None

    def on_train_end(self, trainer, pl_module):
        (line,) = startup_lines(self.caplog.records)
        self.scraped = scrape(URL.search(line).group(1))


def test_startup_line_names_the_bound_port_and_it_serves_the_run(tmp_path, caplog,
                                                                   one_torch_thread):
    caplog.set_level(logging.INFO, logger="gradwatch")
    logger = logging.getLogger("gradwatch")
    handlers_before = list(logger.handlers)
    diagnostics = TrainingDiagnostics(
        run_name="startup", every_n_steps=5, prometheus_port=0,
        tensorboard_dir=str(tmp_path / "tb"),
        alertmanager_url="http://user:s3cret@127.0.0.1:9/", webhook_url="http://127.0.0.1:9/hook")
    scraper = ScrapeNamedUrl(caplog)
    trainer(callbacks=[diagnostics, scraper], root=tmp_path, max_steps=4,
            logger=False).fit(regression_module())
    (line,) = startup_lines(caplog.records)
    port = int(URL.search(line).group(2))
    assert port == diagnostics.bound_port and port != 0
    assert diagnostics.prometheus_url == f"http://127.0.0.1:{port}/metrics"
    assert sample(samples(scraper.scraped), "gradwatch_step", run="startup") == 3
    assert f"TensorBoard {tmp_path / 'tb'}" in line
    assert "every_n_steps=5" in line
    assert "Alertmanager http://127.0.0.1:9/" in line and "webhook http://127.0.0.1:9/hook" in line
    assert "s3cret" not in line
    # logging was configured (pytest's root handlers): gradwatch adds no handler of its own
    assert logger.handlers == handlers_before and logger.propagate


def test_startup_line_without_endpoint_says_off(tmp_path, caplog, one_torch_thread):
    caplog.set_level(logging.INFO, logger="gradwatch")
    trainer(callbacks=[TrainingDiagnostics(tensorboard=False, alerts=False)], root=tmp_path,
            max_steps=1, logger=False).fit(regression_module())
    (line,) = startup_lines(caplog.records)
    assert "/metrics off, TensorBoard off" in line and line.endswith("alerts -> off")


UNCONFIGURED = """
import torch
import lightning.pytorch as pl
from torch import nn
from gradwatch import TrainingDiagnostics

torch.set_num_threads(1)

""" + TINY_MODULE_SOURCE + """

diagnostics = TrainingDiagnostics(prometheus_port=0, tensorboard=False)
for fit in range(2):
    pl.Trainer(max_steps=1, callbacks=[diagnostics], logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False).fit(Model())
    print("bound", diagnostics.bound_port)
"""


def test_startup_line_is_shown_by_default_once_per_fit(tmp_path):
    """No logging configured (a plain script): the INFO line reaches stderr, as Lightning's
    own lines do, once per fit and never twice."""
    result = subprocess.run([sys.executable, "-c", UNCONFIGURED], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    shown = [int(m.group(2)) for m in URL.finditer(result.stderr)]
    bound = [int(line.split()[1]) for line in result.stdout.splitlines()
             if line.startswith("bound")]
    assert shown == bound and len(bound) == 2, result.stderr
