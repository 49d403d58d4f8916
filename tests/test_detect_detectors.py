"""Detectors on synthetic Pulse/Snapshot sequences: fire, stay quiet, resolve."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from .detect_fixtures import pulse, snapshot
from gradwatch.monitor.judging.amp import AmpOverflowStorm, fp16_headroom_bits
from gradwatch.monitor.records.findings import Finding, Verdict
from gradwatch.monitor.judging.explosion import GradientExplosion
from gradwatch.monitor.judging.vanishing import GradientVanishing
from gradwatch.monitor.judging.loss import LossDivergence, LossSpike
from gradwatch.monitor.judging.nonfinite import NonFiniteValues
from gradwatch.monitor.judging.base import History, Sustained
from gradwatch.monitor.judging.layer_conditions import (
    activation_saturation,
    dead_units,
    fp16_headroom,
)
from gradwatch.monitor.judging.catalog import default_detectors
from gradwatch.monitor.records.thresholds import Thresholds

pytestmark = pytest.mark.unit

T = Thresholds()


def feed_pulses(detector, pulses):
    return [detector.on_pulse(p) for p in pulses]


def findings(results):
    return [r for r in results if isinstance(r, Finding)]


# ---------------------------------------------------------------- Sustained

def test_sustained_needs_runs_both_ways():
    s = Sustained(on_after=3, off_after=2)
    assert [s.update(c) for c in (True, True, False, True, True, True, False, True, False,
                                  False)] == [False, False, False, False, False, True, True,
                                              True, True, False]


# ---------------------------------------------------------------- explosion

def test_explosion_spike_is_judged_against_recent_max():
    norms = [1.0 + 0.1 * (i % 5) for i in range(30)]  # max 1.4
    history = [pulse(i, norm=n) for i, n in enumerate(norms)]
    d = GradientExplosion(T)
    assert not findings(feed_pulses(d, history))
    assert d.on_pulse(pulse(30, norm=13.9)) is Verdict.CLEAR  # 9.9x the max: not a spike
    d = GradientExplosion(T)
    feed_pulses(d, history)
    f = d.on_pulse(pulse(30, norm=14.5))  # 10.4x the max of 1.4
    assert isinstance(f, Finding) and f.step == 30 and f.value == 14.5
    assert f.threshold == pytest.approx(10 * 1.4) and f.regime == "exploding"
    assert "10.4x the max" in f.description


def test_explosion_no_spike_without_history():
    d = GradientExplosion(T)
    results = feed_pulses(d, [pulse(0, norm=1.0), pulse(1, norm=50.0)])
    assert not findings(results)  # 50x, but one step is no baseline


def test_explosion_absolute_limit_from_first_step():
    f = GradientExplosion(T).on_pulse(pulse(0, norm=2e4))
    assert isinstance(f, Finding) and f.threshold == T.explosion_norm


def test_explosion_exponential_growth_before_any_absolute_or_spike():
    d = GradientExplosion(T)
    results = feed_pulses(d, [pulse(i, norm=1.0) for i in range(20)])
    # x2.5 per step: 2.5, 6.25 (below the 10x spike bar of 10.0)... fires on the 4th growth
    grown = [pulse(20 + i, norm=2.5 ** (i + 1)) for i in range(4)]
    results = feed_pulses(d, grown)
    assert results[:3] == [Verdict.CLEAR] * 3
    f = results[3]
    assert isinstance(f, Finding) and f.step == 23
    assert "growing 2.5x per step" in f.description


def test_explosion_resolves_after_calm_steps_and_ignores_nonfinite():
    d = GradientExplosion(T)
    feed_pulses(d, [pulse(i, norm=1.0) for i in range(20)])
    assert isinstance(d.on_pulse(pulse(20, norm=100.0)), Finding)
    assert d.on_pulse(pulse(21, norm=math.nan)) is None
    calm = feed_pulses(d, [pulse(22 + i, norm=1.0) for i in range(int(T.history_min_steps))])
    assert calm[:-1] == [None] * (len(calm) - 1) and calm[-1] is Verdict.CLEAR
    # the spike never entered the baseline: the same spike fires again
    assert isinstance(d.on_pulse(pulse(40, norm=100.0)), Finding)


# ---------------------------------------------------------------- loss

def robust_z(history: list[float], value: float) -> tuple[float, float]:
    """(value / median, robust z of log(value)) against ``history``: numpy's percentiles
    (linear interpolation), the IQR's sigma (IQR / 1.349)."""
    q25, median, q75 = np.percentile(np.log(history), (25, 50, 75))
    return math.exp(math.log(value) - median), (math.log(value) - median) / ((q75 - q25) / 1.349)


def test_loss_spike_is_a_warning_judged_against_the_median():
    """A lone spike with a steady gradient norm (one hard batch) warns nothing; a repeat
    within loss_spike_repeat_steps steps warns, and so does a spike whose step's global
    gradient norm spiked too."""
    rng = np.random.default_rng(0)
    losses = list(1.0 + 0.05 * rng.standard_normal(150))
    norms = list(2.0 + 0.1 * rng.standard_normal(150))
    d = LossSpike(T)
    calm = [pulse(i, loss=v, norm=n) for i, (v, n) in enumerate(zip(losses, norms))]
    assert not findings(feed_pulses(d, calm))
    assert d.on_pulse(pulse(150, loss=2.5, norm=2.0)) is Verdict.CLEAR  # 2.5x: no spike
    history = [*losses, 2.5][-int(T.history_steps):]  # the history it judges against
    ratio, z = robust_z(history, 5.0)
    assert ratio > T.loss_spike_factor and z > T.loss_noise_sigmas  # a spike, by both bars
    assert robust_z(norms[-int(T.history_steps) + 1:] + [2.0], 2.2)[0] < T.loss_spike_factor
    # one hard batch: a lone spike, its gradient norm steady, the next steps at the median
    assert d.on_pulse(pulse(151, loss=5.0, norm=2.2)) is Verdict.CLEAR
    assert feed_pulses(d, [pulse(152 + i, loss=1.0, norm=2.0) for i in range(3)]) \
        == [Verdict.CLEAR] * 3
    # it repeats within loss_spike_repeat_steps (151 -> 151 + repeat): an instability
    again = 151 + int(T.loss_spike_repeat_steps)
    feed_pulses(d, [pulse(i, loss=1.0, norm=2.0) for i in range(155, again)])
    f = d.on_pulse(pulse(again, loss=5.0, norm=2.2))
    assert isinstance(f, Finding) and (f.severity, f.value, f.step) == ("warning", 5.0, again)
    history = (history + [1.0] * (again - 152))[-int(T.history_steps):]  # no spike in it
    assert f"{robust_z(history, 5.0)[0]:.3g}x the median" in f.summary
    assert f"another spike {T.loss_spike_repeat_steps} steps before" in f.description
    after = feed_pulses(d, [pulse(again + 1 + i, loss=1.0, norm=2.0)
                            for i in range(int(T.history_min_steps))])
    assert after[-1] is Verdict.CLEAR
    # a spike more than loss_spike_repeat_steps after the last one is lone again
    lone = again + int(T.history_min_steps) + int(T.loss_spike_repeat_steps) + 1
    resumed = again + 1 + int(T.history_min_steps)
    feed_pulses(d, [pulse(i, loss=1.0, norm=2.0) for i in range(resumed, lone)])
    assert d.on_pulse(pulse(lone, loss=5.0, norm=2.2)) is Verdict.CLEAR
    # a lone spike whose gradient norm spiked too (by both bars against its own median)
    d = LossSpike(T)
    feed_pulses(d, calm)
    norm_ratio, norm_z = robust_z(norms[-int(T.history_steps):], 8.0)
    assert norm_ratio > T.loss_spike_factor and norm_z > T.loss_noise_sigmas
    f = d.on_pulse(pulse(150, loss=5.0, norm=8.0))
    assert isinstance(f, Finding) and f.step == 150
    assert f"the global gradient norm is {norm_ratio:.3g}x its median" in f.description


def test_loss_spike_waits_for_the_warm_up():
    d = LossSpike(T)
    early = [pulse(i, loss=1.0) for i in range(50)] + [pulse(50, loss=100.0)]
    assert not findings(feed_pulses(d, early))


def divergence_step(losses: list[float], t: Thresholds = T) -> int | None:
    """Independently: the first step whose last-20 median is 1.5x and 2 sigma above the
    median of the (up to 100) steps before them, after the warm-up."""
    n, h = int(t.loss_divergence_steps), int(t.history_steps)
    logs = np.log(losses)
    for i in range(int(t.loss_warmup_steps), len(losses)):
        before = logs[max(0, i + 1 - n - h): i + 1 - n]
        if len(before) < t.history_min_steps:
            continue
        q25, ref, q75 = np.percentile(before, (25, 50, 75))
        rise = np.median(logs[i + 1 - n: i + 1]) - ref
        if rise > math.log(t.loss_divergence_factor) and rise > 2 * (q75 - q25) / 1.349:
            return i
    return None


@pytest.mark.parametrize("low, high", [(1.1, 1.9), (0.01, 0.1)])
def test_loss_divergence_is_a_sustained_rise_relative_to_the_level(low, high):
    rng = np.random.default_rng(1)
    losses = list(low * np.exp(0.03 * rng.standard_normal(200))) + list(
        high * np.exp(0.03 * rng.standard_normal(60)))
    d, spikes = LossDivergence(T), LossSpike(T)
    results = feed_pulses(d, [pulse(i, loss=v) for i, v in enumerate(losses)])
    first = findings(results)[0]
    assert first.severity == "critical" and first.step == divergence_step(losses)
    assert 200 + T.loss_divergence_steps // 2 - 1 <= first.step < 200 + T.loss_divergence_steps
    spiked = findings(feed_pulses(spikes, [pulse(i, loss=v) for i, v in enumerate(losses)]))
    # the new level's first step is a lone spike (its gradient norm steady), its second a
    # repeat: the warning
    assert [f.step for f in spiked[:1]] == ([201] if high / low > T.loss_spike_factor else [])
    back = feed_pulses(d, [pulse(260 + i, loss=low) for i in range(40)])
    assert Verdict.CLEAR in back  # the reference stayed where the loss stood


def test_loss_noise_of_small_batches_and_negative_losses_do_not_fire():
    rng = np.random.default_rng(0)
    trend = np.exp(-np.arange(1000) / 300)  # falling, with batch-size-4 noise: x/÷ e
    noisy = trend * np.exp(rng.standard_normal(1000))
    for make in (LossDivergence, LossSpike):
        d = make(T)
        assert not findings(feed_pulses(d, [pulse(i, loss=v) for i, v in enumerate(noisy)]))
        negative = [-5.0 + 0.01 * i for i in range(200)] + [-0.1, 3.0]
        d = make(T)
        assert not findings(feed_pulses(d, [pulse(i, loss=v) for i, v in enumerate(negative)]))


def test_a_loss_creeping_up_near_zero_is_no_divergence():
    # a memorised batch: 2e-9 rising to 1e-8 (float32 rounding) is at the floor, not diverging
    rng = np.random.default_rng(2)
    losses = list(2e-9 * np.exp(0.03 * rng.standard_normal(200))) + list(
        1e-8 * np.exp(0.03 * rng.standard_normal(60)))
    assert divergence_step(losses) is not None  # by ratios alone it would be one
    for make in (LossDivergence, LossSpike):
        d = make(T)
        assert not findings(feed_pulses(d, [pulse(i, loss=v) for i, v in enumerate(losses)]))
    # from just above the floor, the same rise is judged
    lifted = [v * 1e3 for v in losses]
    assert findings(feed_pulses(LossDivergence(T), [pulse(i, loss=v)
                                                     for i, v in enumerate(lifted)]))


# ---------------------------------------------------------------- non-finite

def test_nonfinite_on_sampled_step_is_exact():
    d = NonFiniteValues(T)
    assert d.on_pulse(pulse(6)) is Verdict.CLEAR
    assert d.on_pulse(pulse(7, loss=math.nan, norm=math.nan)) is Verdict.NEEDS_SAMPLING
    counts = np.zeros((3, 4, 3), np.int64)
    counts[1, 1, 0] = 5  # activation NaN in l1
    counts[0, 0, 0] = counts[0, 2, 0] = 3  # gradient NaN in l0 and l2
    f = d.on_snapshot(snapshot(7, nonfinite=counts, origin="l1",
                               pulses=[pulse(7, loss=math.nan, norm=math.nan)]))
    assert isinstance(f, Finding) and f.step == 7 and f.origin_exact is True
    assert f.layers == ("l1", "l2")  # forward origin, then deepest non-finite gradient
    assert f.regime == "nonfinite" and f.value == 11.0


def test_nonfinite_on_unsampled_step_is_inferred_from_the_next_sample():
    d = NonFiniteValues(T)
    d.on_pulse(pulse(2))
    assert d.on_pulse(pulse(3, loss=math.inf)) is Verdict.NEEDS_SAMPLING
    assert d.on_pulse(pulse(4, loss=math.nan, norm=math.nan)) is Verdict.NEEDS_SAMPLING
    counts = np.zeros((3, 4, 3), np.int64)
    counts[2, 0, 0] = 1  # parameters of l0 are NaN by now
    f = d.on_snapshot(snapshot(5, nonfinite=counts, origin="l0"))
    assert f.step == 3 and f.origin_exact is False and f.layers == ("l0",)
    assert "inferred from step 5" in f.description and "already non-finite" in f.description
    # active: further bad steps do not ask again; finite steps clear after escalation_steps
    assert d.on_pulse(pulse(6, loss=math.nan)) is None
    clear = feed_pulses(d, [pulse(7 + i) for i in range(int(T.escalation_steps))])
    assert clear[-1] is Verdict.CLEAR and clear[:-1] == [None] * (len(clear) - 1)


def test_unmeasured_series_are_no_alarm_but_a_measured_nan_is():
    d = NonFiniteValues(T)
    unobserved = [pulse(i, loss=None, norm=None) for i in range(5)]  # nothing passed
    assert feed_pulses(d, unobserved) == [Verdict.CLEAR] * 5
    assert d.on_snapshot(snapshot(5, pulses=unobserved[-1:])) is None
    assert d.on_pulse(pulse(6, loss=math.inf, norm=None)) is Verdict.NEEDS_SAMPLING
    d = NonFiniteValues(T)
    assert d.on_pulse(pulse(0, loss=math.nan, norm=1.0)) is Verdict.NEEDS_SAMPLING


def test_nonfinite_flush_without_snapshot():
    d = NonFiniteValues(T)
    d.on_pulse(pulse(8))
    d.on_pulse(pulse(9, loss=math.nan))
    f = d.flush()
    assert f.step == 9 and f.origin_exact is None and f.layers == ()
    assert d.flush() is None


def test_amp_skipped_step_is_not_nonfinite():
    d = NonFiniteValues(T)
    skip = pulse(2, loss=0.5, norm=math.inf, loss_scale=32768.0, optimizer_stepped=False)
    assert d.on_pulse(skip) is Verdict.CLEAR
    counts = np.zeros((3, 4, 3), np.int64)
    counts[0, :, 1] = 10  # overflowed gradients of the skipped step
    assert d.on_snapshot(snapshot(2, nonfinite=counts, pulses=[skip])) is None
    nan_loss = pulse(3, loss=math.nan, norm=math.nan, loss_scale=16384.0,
                     optimizer_stepped=False)
    assert d.on_pulse(nan_loss) is Verdict.NEEDS_SAMPLING


# ---------------------------------------------------------------- AMP

def test_amp_occasional_skips_are_no_storm():
    d = AmpOverflowStorm(T)
    assert d.on_pulse(pulse(0)) is None  # no scaler: not its business
    # one skip every 25 steps: at most 4 in any 100-step window
    results = [d.on_pulse(pulse(i, loss_scale=1024.0, optimizer_stepped=i % 25 != 0))
               for i in range(1, 300)]
    assert not findings(results)


def test_amp_calibration_skips_are_no_storm():
    d = AmpOverflowStorm(T)
    calibration = [pulse(i, loss_scale=65536.0 / 2 ** (i + 1), optimizer_stepped=False,
                         scaler_calibrating=True)
                   for i in range(12)]  # the scaler halving from 2^16 until gradients fit
    assert feed_pulses(d, calibration) == [Verdict.CLEAR] * 12
    assert d.on_pulse(pulse(12, loss_scale=8.0)) is Verdict.CLEAR
    later = [pulse(13 + i, loss_scale=4.0 / 2 ** i, optimizer_stepped=False) for i in range(5)]
    assert isinstance(feed_pulses(d, later)[-1], Finding)  # after calibration, 5 skips count


def test_amp_storm_fires_on_the_fifth_skip_naming_low_headroom_layers():
    d = AmpOverflowStorm(T)
    d.on_snapshot(snapshot(0, output_max_abs=[10.0, 30000.0, 100.0, 20000.0],
                           pulses=[pulse(0, loss_scale=65536.0)]))
    scale, results = 65536.0, []
    for i in range(1, 11):
        skipped = i % 2 == 0
        scale = scale / 2 if skipped else scale
        results.append(d.on_pulse(pulse(i, loss_scale=scale, optimizer_stepped=not skipped)))
    f = findings(results)[0]
    assert f.step == 10 and f.value == 5.0 and f.threshold == T.amp_skipped_steps
    assert f.layers == ("l1", "l3")  # log2(65504/30000)=1.1, log2(65504/20000)=1.7 bits
    assert "from 65536 to 2048" in f.description


def test_fp16_headroom_values():
    bits = fp16_headroom_bits(np.array([65504.0, 16376.0, 0.0, np.nan]))
    assert bits[0] == 0.0 and bits[1] == pytest.approx(2.0, abs=1e-3)
    assert bits[2] == math.inf and math.isnan(bits[3])


# ---------------------------------------------------------------- per-layer warnings

@pytest.mark.parametrize("make, field, bad, good", [
    (dead_units, "dead", [0.1, 0.95, 0.2, 0.99], [0.1, 0.5, 0.2, 0.3]),
    (activation_saturation, "saturation", [0.6, np.nan, 0.9, 0.1], [0.2, np.nan, 0.3, 0.1]),
])
def test_layer_warnings_sustained_and_resolved(make, field, bad, good):
    d = make(T)
    n = int(T.unit_warning_samples)
    results = [d.on_snapshot(snapshot(i, **{field: bad})) for i in range(n)]
    assert results[:-1] == [Verdict.CLEAR] * (n - 1)
    f = results[-1]
    bad_idx = [i for i, v in enumerate(bad) if v > f.threshold]
    assert f.layers == tuple(f"l{i}" for i in bad_idx)
    assert f.value == max(bad[i] for i in bad_idx) and f.severity == "warning"
    after = [d.on_snapshot(snapshot(n + i, **{field: good})) for i in range(n)]
    assert after[-1] is Verdict.CLEAR and after[:-1] == [None] * (n - 1)


def test_fp16_headroom_only_under_a_scaler():
    d = fp16_headroom(T)
    near = [100.0, 40000.0, 1.0, 1.0]
    assert d.on_snapshot(snapshot(0, output_max_abs=near)) is None  # no loss scale
    results = [d.on_snapshot(snapshot(i, output_max_abs=near,
                                      pulses=[pulse(i, loss_scale=1024.0)]))
               for i in range(int(T.unit_warning_samples))]
    assert results[-1].layers == ("l1",)
    assert results[-1].value == pytest.approx(math.log2(65504 / 40000))


# ---------------------------------------------------------------- vanishing

def vanishing_snapshot(step, **overrides):
    layers = tuple(f"l{i}" for i in range(8))
    defaults = dict(grad_norm=[1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0],
                    update_ratio=[1e-9, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2],
                    saturation=[0.7, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, np.nan],
                    variance=[1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005])
    defaults.update(overrides)
    return snapshot(step, layers, **defaults)


def test_vanishing_fires_after_sustained_samples_naming_lower_layers():
    d = GradientVanishing(T)
    n = int(T.vanishing_samples)
    results = [d.on_snapshot(vanishing_snapshot(i)) for i in range(n)]
    assert results[:-1] == [Verdict.CLEAR] * (n - 1)
    f = results[-1]
    # quarters of 8 layers = 2: gmean(1e-7, 1e-6) / gmean(1e-1, 1) = 10^-6.5 / 10^-0.5
    assert f.value == pytest.approx(1e-6)
    # reference 10^-0.5; layers below 1e-3 * reference = 3.2e-4: l0..l3
    assert f.layers == ("l0", "l1", "l2", "l3")
    assert "sigmoid/tanh" in f.description and "saturated: l0 (0.7)" in f.description
    assert "activation variance shrinks" in f.description
    assert "ReLU" in f.remedy and f.regime == "vanishing"


def test_vanishing_needs_tiny_updates_when_measured():
    d = GradientVanishing(T)
    adam_like = [1e-3] * 8  # the optimizer still moves the lower layers
    results = [d.on_snapshot(vanishing_snapshot(i, update_ratio=adam_like)) for i in range(5)]
    assert not findings(results)
    unmeasured = [np.nan] * 8
    results = [d.on_snapshot(vanishing_snapshot(i, update_ratio=unmeasured)) for i in range(3)]
    assert isinstance(results[-1], Finding)


def test_vanishing_profile_leaves_out_layers_whose_forward_never_ran():
    layers = tuple(f"l{i}" for i in range(8)) + ("attn.out_proj",)  # depth unknown: last
    grads = [1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 1e-8]
    means = [0.0] * 8 + [np.nan]

    def snap(i):
        return snapshot(i, layers, grad_norm=grads, activation_mean=means,
                        update_ratio=[1e-9] * 9)

    d = GradientVanishing(T)
    f = [d.on_snapshot(snap(i)) for i in range(3)][-1]
    assert isinstance(f, Finding) and "attn.out_proj" not in f.layers
    assert f.value == pytest.approx(1e-6)  # gmean(1e-7, 1e-6) / gmean(0.1, 1)


def test_vanishing_needs_three_called_layers_as_its_rule_does():
    """Two called layers and one used through its weight: a profile of two layers, too
    shallow on both sides (deploy/prometheus/tests' r3 is the rule's copy of this case)."""
    layers, grads = ("embed", "head", "out_proj"), [1e-5, 0.5, 1.0]
    d = GradientVanishing(T)
    results = [d.on_snapshot(snapshot(i, layers, grad_norm=grads, update_ratio=[1e-9] * 3,
                                      activation_mean=[0.1, 0.1, np.nan]))
               for i in range(5)]
    assert not findings(results)
    called = [d.on_snapshot(snapshot(i, layers, grad_norm=grads, update_ratio=[1e-9] * 3))
              for i in range(3)]
    assert isinstance(called[-1], Finding) and called[-1].layers == ("embed",)


def test_vanishing_healthy_profile_and_resolution():
    d = GradientVanishing(T)
    for i in range(3):
        d.on_snapshot(vanishing_snapshot(i))
    healthy = dict(grad_norm=[0.5, 0.8, 1.0, 0.7, 1.2, 0.9, 1.1, 2.0])
    after = [d.on_snapshot(vanishing_snapshot(3 + i, **healthy)) for i in range(3)]
    assert after == [None, None, Verdict.CLEAR]


# ---------------------------------------------------------------- odd input

ODD_SNAPSHOTS = [
    snapshot(0, layers=()),
    snapshot(0, layers=("a",)),
    snapshot(0, grad_norm=[np.nan] * 4, update_ratio=[np.inf] * 4, dead=[np.nan] * 4,
             saturation=[np.inf] * 4, variance=[0.0] * 4, output_max_abs=[np.nan] * 4),
    snapshot(0, grad_norm=[0.0] * 4, variance=[-1.0] * 4, output_max_abs=[0.0] * 4),
    snapshot(0, pulses=()),
    snapshot(0, nonfinite=np.zeros((3, 2, 3)), grad_norm=[1.0, 1.0, 1.0, 1.0]),
]
ODD_PULSES = [pulse(0, loss=math.inf, norm=-math.inf, loss_scale=math.nan),
              pulse(1, loss=0.0, norm=0.0, loss_scale=0.0, optimizer_stepped=False),
              pulse(2, loss=-1e308, norm=1e308), pulse(3, loss=math.nan, norm=0.0)]


def test_detectors_never_raise_on_odd_input():
    for detector in default_detectors(T):
        for _ in range(6):  # repeated, so sustained states get exercised too
            for p in ODD_PULSES:
                if hasattr(detector, "on_pulse"):
                    detector.on_pulse(p)
            for s in ODD_SNAPSHOTS:
                if hasattr(detector, "on_snapshot"):
                    result = detector.on_snapshot(s)
                    assert result is None or isinstance(result, (Finding, Verdict))


# ---------------------------------------------------------------- fuzzed input

odd_floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                       st.sampled_from([0.0, -0.0, 1e-320, 65504.0, 1e308]))


@st.composite
def odd_snapshots(draw):
    n = draw(st.integers(0, 6))
    layers = tuple(f"l{i}" for i in range(n))
    arrays = {key: draw(st.lists(odd_floats, min_size=n, max_size=n)) for key in (
        "grad_norm", "update_ratio", "saturation", "dead", "variance", "output_max_abs",
        "activation_mean")}
    counts = np.asarray(draw(st.lists(st.integers(0, 3), min_size=9 * n, max_size=9 * n)),
                        dtype=np.int64).reshape(3, n, 3)
    pulses = [pulse(0, loss=draw(odd_floats), norm=draw(odd_floats),
                    loss_scale=draw(odd_floats), optimizer_stepped=draw(st.booleans()))]
    return snapshot(draw(st.integers(0, 10)), layers, nonfinite=counts,
                    origin=draw(st.sampled_from(["", "l0"])),
                    pulses=draw(st.sampled_from([pulses, []])), **arrays)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(
    odd_snapshots(),
    st.builds(pulse, st.integers(0, 10), odd_floats, odd_floats, loss_scale=odd_floats,
              optimizer_stepped=st.booleans())), max_size=25))
def test_detectors_never_raise_on_fuzzed_input(items):
    for detector in default_detectors(T):
        for item in items:
            method = "on_snapshot" if hasattr(item, "layers") else "on_pulse"
            if hasattr(detector, method):
                result = getattr(detector, method)(item)
                assert result is None or isinstance(result, (Finding, Verdict))
                if isinstance(result, Finding):
                    assert isinstance(result.summary, str) and result.remedy


def test_explosion_names_the_largest_gradients_of_the_latest_sample():
    d = GradientExplosion(T)
    feed_pulses(d, [pulse(i) for i in range(20)])
    layers = ("emb", "h0", "h1", "h2", "head")
    norms = [2.0, 900.0, math.nan, 40.0, 7.0]
    d.on_snapshot(snapshot(20, layers=layers, grad_norm=norms))
    f = d.on_pulse(pulse(21, norm=5e4))
    order = sorted((n, name) for name, n in zip(layers, norms) if math.isfinite(n))[::-1]
    assert f.layers == tuple(name for _, name in order[:GradientExplosion.CULPRITS])
    assert "Largest gradient norms at step 20: h0 (900), h2 (40), head (7)" in f.description


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 10), st.booleans()), min_size=1, max_size=300),
       st.integers(1, 20))
def test_history_peak_is_the_max_of_its_baseline_window(values, size):
    history, baseline = History(size), []
    for value, anomalous in values:
        history.add(value, anomalous)
        if not anomalous:
            baseline = (baseline + [value])[-size:]
        if baseline:
            assert history.peak == max(baseline)
