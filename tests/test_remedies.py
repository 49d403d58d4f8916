"""Remedies from the run's context: the causal order decides the headline, and a fix that is
already on is named, not suggested again."""

from __future__ import annotations

import math

import pytest

from .detect_fixtures import FakeMonitor, pulse, snapshot
from gradwatch.monitor.records.alert_table import spec
from gradwatch.monitor.judging.engine import AlertEngine

pytestmark = pytest.mark.unit


def calm(engine, mon, steps, **fields):
    for step in range(steps):
        engine.on_pulse(pulse(step, loss=1.0 + 0.01 * (step % 3), norm=1.0, **fields), mon)


def fired(engine):
    return {a.name: a for a in engine.history if a.status == "firing"}


def test_divergence_then_explosion_then_nan_leads_with_the_learning_rate():
    engine, mon = AlertEngine(), FakeMonitor()
    calm(engine, mon, 200)
    for step in range(200, 230):  # the loss level doubles and stays: divergence
        engine.on_pulse(pulse(step, loss=2.0 + 0.01 * (step % 3), norm=1.0), mon)
    engine.on_pulse(pulse(230, loss=2.0, norm=1e6), mon)  # then the gradients explode
    engine.on_pulse(pulse(231, loss=math.nan, norm=math.nan), mon)
    engine.on_snapshot(snapshot(231, pulses=[pulse(231, loss=math.nan, norm=math.nan)]), mon)
    alerts = fired(engine)
    divergence, explosion = alerts["LossDivergence"], alerts["GradientExplosion"]
    nonfinite = alerts["NonFiniteValues"]
    assert divergence.step < explosion.step < nonfinite.step
    assert divergence.remedy == spec("LossDivergence").remedy  # nothing came before it
    for consequence in (explosion, nonfinite):
        assert consequence.remedy.startswith("Lower the learning rate")
        assert f"LossDivergence at step {divergence.step}" in consequence.remedy
        assert consequence.remedy.endswith(spec(consequence.name).remedy)
    assert f"GradientExplosion at step {explosion.step}" in nonfinite.remedy
    assert "not bad data" in nonfinite.remedy


def test_a_bad_batch_nan_keeps_the_tables_remedy():
    engine, mon = AlertEngine(), FakeMonitor()
    calm(engine, mon, 50)
    engine.on_pulse(pulse(50, loss=math.inf, norm=math.inf), mon)
    engine.on_snapshot(snapshot(50, pulses=[pulse(50, loss=math.inf, norm=math.inf)]), mon)
    assert fired(engine)["NonFiniteValues"].remedy == spec("NonFiniteValues").remedy


def test_clipping_already_on_is_named_not_suggested():
    engine, mon = AlertEngine(), FakeMonitor()
    calm(engine, mon, 50, clipped_grad_norm=0.5)
    engine.on_pulse(pulse(50, norm=6e8, clipped_grad_norm=1.0), mon)
    remedy = fired(engine)["GradientExplosion"].remedy
    assert remedy.startswith("Gradient clipping is on (norm clipped to 1)")
    assert "gradients are still 6e+08" in remedy
    assert "Clip gradients" not in remedy and "clip_grad_norm_" not in remedy
    without = AlertEngine()
    calm(without, mon, 50)
    without.on_pulse(pulse(50, norm=6e8), mon)
    assert fired(without)["GradientExplosion"].remedy == spec("GradientExplosion").remedy


def test_a_step_the_grad_scaler_skipped_is_not_clipping_that_failed():
    """Under fp16 the scaler skips overflowed steps: their clipped norm is below the pre-clip
    norm, yet nothing was clipped and applied (records.derived.clip_engaged decides it), so
    an overflow storm keeps "clip gradients" and says nothing of clipping being on."""
    engine, mon = AlertEngine(), FakeMonitor()
    calm(engine, mon, 50, clipped_grad_norm=0.5, loss_scale=1024.0)
    for step in range(50, 60):  # overflowed, skipped by the scaler, the loss still finite
        engine.on_pulse(pulse(step, norm=math.inf, clipped_grad_norm=1.0, loss_scale=1024.0,
                              optimizer_stepped=False), mon)
    storm = fired(engine)["AmpOverflowStorm"]
    assert storm.remedy == spec("AmpOverflowStorm").remedy
    assert "Gradient clipping is on" not in storm.remedy
