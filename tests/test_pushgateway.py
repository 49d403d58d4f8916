"""TrainingDiagnostics pushing to a REAL Pushgateway: the group (run + rank) is there while
the job runs, deleted at a clean end, kept when asked or when the training failed."""

from __future__ import annotations

import pytest

from gradwatch.callbacks import TrainingDiagnostics

from .helpers import sample, samples, scrape
from .lightning_models import lightning, regression_module, trainer

pytestmark = pytest.mark.servers


def run_pushing(pushgateway, tmp_path, keep=False, fail_at=None):
    pl = lightning()
    seen = {}

    class Watch(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.global_step == fail_at:
                raise RuntimeError("the job dies")

        def on_train_end(self, trainer, module):
            diagnostics.pusher.push()  # as the periodic push would, without waiting for it
            seen["during"] = samples(scrape(pushgateway.url + "/metrics"))

    diagnostics = TrainingDiagnostics(run_name="short-job", every_n_steps=2,
                                      pushgateway_url=pushgateway.url, push_interval=0.2,
                                      pushgateway_keep=keep, tensorboard=False)
    run = trainer(callbacks=[diagnostics, Watch()], root=str(tmp_path), max_steps=5,
                  logger=False)
    if fail_at is None:
        run.fit(regression_module())
    else:
        with pytest.raises(RuntimeError, match="the job dies"):
            run.fit(regression_module())
    seen["after"] = samples(scrape(pushgateway.url + "/metrics"))
    return seen


def pushed(parsed, metric: str):
    matches = [v for (name, labels), v in parsed.items() if name == metric
               and ("run", "short-job") in labels and ("job", "gradwatch") in labels]
    return matches[0] if matches else None


def pushed_step(parsed):
    return pushed(parsed, "gradwatch_step")


def test_pushed_while_running_and_deleted_at_a_clean_end(pushgateway_server, tmp_path):
    seen = run_pushing(pushgateway_server, tmp_path)
    assert pushed_step(seen["during"]) == 4
    assert sample(seen["during"], "gradwatch_layer_depth", run="short-job", layer="net.4") == 2
    assert pushed_step(seen["after"]) is None


def test_kept_when_asked(pushgateway_server, tmp_path):
    seen = run_pushing(pushgateway_server, tmp_path, keep=True)
    assert pushed_step(seen["after"]) == 4
    # the last push says the run ended cleanly: TrainingStalled stays quiet for it
    assert pushed(seen["during"], "gradwatch_run_finished") == 0
    assert pushed(seen["after"], "gradwatch_run_finished") == 1


def test_kept_with_the_last_figures_when_the_job_fails(pushgateway_server, tmp_path):
    seen = run_pushing(pushgateway_server, tmp_path, fail_at=3)
    assert pushed_step(seen["after"]) == 2  # the last finished step before the failure
    assert pushed(seen["after"], "gradwatch_run_finished") == 0  # a failure is no clean end
