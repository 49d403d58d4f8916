"""The metric contract: the docs, the spec table and what a real run exposes agree."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
import pytest

from gradwatch.callbacks import TrainingDiagnostics
from gradwatch.monitor.records.metrics import METRICS, render_markdown

from .helpers import scrape
from .lightning_models import lightning, regression_module, trainer

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.unit
def test_committed_metrics_doc_is_generated_from_the_code():
    assert (ROOT / "docs" / "metrics.md").read_text() == render_markdown(), \
        "docs/metrics.md is stale: run `gradwatch metrics-doc --out docs/metrics.md`"


@pytest.mark.training
def test_a_real_run_exposes_exactly_the_documented_metrics(tmp_path):
    diagnostics = TrainingDiagnostics(every_n_steps=2, prometheus_port=0, tensorboard=False)
    pl = lightning()
    seen = {}

    class Grab(pl.Callback):
        def on_train_end(self, trainer, module):
            seen["text"] = scrape(diagnostics.prometheus_url)

    trainer(callbacks=[diagnostics, Grab()], root=str(tmp_path), max_steps=3,
            gradient_clip_val=1.0).fit(regression_module())
    families = {f.name: f for f in text_string_to_metric_families(seen["text"])}
    assert set(families) == set(METRICS)
    for name, family in families.items():
        assert family.type == METRICS[name].kind, name
        assert family.documentation == METRICS[name].help, name
        for sample in family.samples:
            expected = {"run", *METRICS[name].labels} | ({"le"} if family.type == "histogram"
                                                          and sample.name.endswith("_bucket")
                                                          else set())
            assert set(sample.labels) == expected, (sample.name, sample.labels)
