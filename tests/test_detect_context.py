"""Detectors that understand the training they watch (issue 27): real recipes whose numbers
only the run's context explains, judged in-process and by the shipped rules (promtool)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from .realistic import Setup, first_firing_in_promtool, scrapes, train
from .detect_fixtures import mlp
from .realistic_scenarios import _images, _regression
from gradwatch.monitor.ops import rules
from gradwatch.monitor.records.thresholds import Thresholds

pytestmark = pytest.mark.servers  # each judged by the shipped rules too (promtool)

#: Steps per scrape in the replays, as in test_realistic_alerts.
STRIDE = 5


def sigmoid_cnn_sgd(weight_decay: float) -> Setup:
    """The textbook CNN recipe on a 20-layer sigmoid CNN without BatchNorm: SGD lr 0.05,
    momentum 0.9, weight decay 5e-4. Its gradients vanish ~1e-15x toward the input."""
    torch.manual_seed(40)
    layers: list[nn.Module] = [nn.Conv2d(1, 8, 3, padding=1), nn.Sigmoid()]
    for _ in range(19):
        layers += [nn.Conv2d(8, 8, 3, padding=1), nn.Sigmoid()]
    model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(8 * 8 * 8, 4))
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9,
                                        weight_decay=weight_decay),
                 _images(), loss_fn=nn.functional.cross_entropy)


@pytest.fixture(scope="module")
def weight_decayed_vanishing():
    return train("sigmoid_cnn_wd", sigmoid_cnn_sgd(5e-4), steps=60)


def test_weight_decay_does_not_hide_vanishing_gradients(weight_decayed_vanishing, promtool,
                                                        tmp_path):
    run = weight_decayed_vanishing
    first = run.snapshots[-1]
    # what the recipe is: the loss at chance, the first layer's gradient ~1e-15 of the head's,
    # and weight decay alone moving it by ~lr x wd / (1 - momentum) = 2.5e-4 a step
    assert run.losses[-1] == pytest.approx(math.log(4), rel=0.05)
    assert first.grad_norm[0] < 1e-12 * first.grad_norm[-1]
    assert 1e-4 < first.update_ratio[0] <= 0.05 * 5e-4 / 0.1 * 1.01
    assert abs(first.update_grad_cosine[0]) < 0.2  # the update does not follow the gradient
    vanishing = [a for a in run.fired() if a.name == "GradientVanishing"]
    assert [a.step for a in vanishing] == [20]  # the third sample, as without weight decay
    assert "weight decay moves 0, 2, 4" in vanishing[0].description
    assert "their gradients do not" in vanishing[0].description
    fired = first_firing_in_promtool(promtool, str(rules.RULES_PATH.resolve()),
                                     {run.name: scrapes(run, STRIDE)}, tmp_path)[run.name]
    # the last sigmoid saturates too (0.57, 0.71, 0.79 at samples 30-50): three samples are
    # under unit_warning_samples in-process, while the rule's 75 s at STRIDE steps a scrape
    # see the share over the line for 30 steps (records.conditions.UNIT_PACE: rules alone)
    assert first.activation_saturation_ratio[-2] > Thresholds().saturation_ratio
    assert set(fired) == {"GradientVanishing", "ActivationSaturation"}
    assert fired["GradientVanishing"] * STRIDE <= 30


def fp16_regression() -> Setup:
    """fp16 autocast with a GradScaler on CPU, a regression on targets of scale 10: its
    gradients are ~1e2 at first, so the scaler, starting at 2^16, skips its first steps
    while it halves to a scale they fit in (and a few more early on, as they grow)."""
    torch.manual_seed(17)
    model = mlp([16, 64, 64, 1], nn.ReLU)
    return Setup(model, torch.optim.SGD(model.parameters(), lr=1e-3),
                 _regression(scale=10.0), precision="fp16")


def test_the_grad_scalers_calibration_is_no_overflow_storm(promtool, tmp_path):
    run = train("fp16_calibration", fp16_regression(), steps=100)
    skipped = [p.step for p in run.pulses if p.scaler_skipped]
    calibrating = [p.step for p in run.pulses if p.scaler_skipped and p.scaler_calibrating]
    overflowed = [p.step for p in run.pulses if p.scaler_overflowed]
    assert calibrating == [0, 1, 2] and len(skipped) >= 5  # the old rule's count pages
    assert overflowed == [s for s in skipped if s not in calibrating]
    assert sum(run.losses[-10:]) < 0.5 * sum(run.losses[:10])  # and it learns
    replay = scrapes(run, STRIDE)
    # the exporter counts both: every skip, and the skips the detector and the rule judge
    last = replay[-1]
    counted = {name.split("{")[0]: value for name, value in last.items()
               if name.startswith("gradwatch_amp_")}
    assert counted["gradwatch_amp_skipped_steps_total"] == len(skipped)
    assert counted["gradwatch_amp_overflow_steps_total"] == len(overflowed)
    assert [a.name for a in run.fired()] == []
    fired = first_firing_in_promtool(promtool, str(rules.RULES_PATH.resolve()),
                                     {run.name: replay}, tmp_path)[run.name]
    assert fired == {}


def sgdr(period: int = 200, low: float = 1 / 25_000):
    """CosineAnnealingWarmRestarts (T_mult 1) as an lr multiplier: cosine from 1 to ``low``
    over ``period`` steps, then back to 1 (a ~25,000x raise)."""
    def schedule(step: int) -> float:
        return low + (1 - low) * 0.5 * (1 + math.cos(math.pi * (step % period) / period))
    return schedule


def sgdr_regression() -> Setup:
    """SGD with momentum and weight decay under SGDR: at each restart the loss rises
    several-fold for ~60 steps (momentum builds the larger steps up), then recovers."""
    torch.manual_seed(10)
    model = mlp([16, 64, 64, 1], nn.ReLU)
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9,
                                        weight_decay=5e-4),
                 _regression(noise=0.05), schedule=sgdr())


def test_a_warm_restart_is_no_divergence(promtool, tmp_path):
    run = train("sgdr", sgdr_regression(), steps=420)
    lr = [p.learning_rates[0][0] for p in run.pulses]
    assert lr[199] < 1e-5 and lr[200] == pytest.approx(0.03)  # the restart
    before, after = sorted(run.losses[180:200])[10], max(run.losses[200:280])
    assert after > 4 * before and sorted(run.losses[280:300])[10] < 0.5 * after  # recovers
    assert [(a.name, a.step) for a in run.fired()] == []
    fired = first_firing_in_promtool(promtool, str(rules.RULES_PATH.resolve()),
                                     {run.name: scrapes(run, STRIDE)}, tmp_path)[run.name]
    assert fired == {}
