"""Large outputs recorded from a bounded random sample of whole rows (``activation_sample``):
max |x| and NaN/Inf counts exact, moments and ratios within a stated statistical tolerance
of torch over the full outputs, deterministic, the global RNG untouched; outputs at or
below the bound, and ``activation_sample=None``, exact."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from gradwatch import TrainingDiagnostics
from gradwatch.monitor import Monitor, Thresholds
from gradwatch.monitor.probes import tensor_stats as probes
from gradwatch.monitor.records.columns import RawActivationField

from .helpers import close
from .test_record_batches import mixed_model, sampled_step

pytestmark = pytest.mark.unit

ROWS = 9000  # 9000 x 64 = 576,000 values per output, 2 forwards: above every bound below
BOUND = 1 << 14  # 256 rows of 64 drawn per output


def wide_model() -> nn.Sequential:
    """Tanh (saturating) and ReLU (dead units) outputs of 64 values per row."""
    torch.manual_seed(5)
    return nn.Sequential(nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 64), nn.ReLU())


def row_tolerance(outputs: list[torch.Tensor], statistic, take: int) -> float:
    """5 standard errors of the mean over ``take`` rows drawn (with replacement) of a
    per-row ``statistic``: the spread of the statistic over ALL rows, computed here."""
    per_row = torch.cat([statistic(o.double().reshape(-1, o.shape[-1])) for o in outputs])
    return 5 * per_row.std().item() / math.sqrt(take) + 1e-12


def test_a_large_output_is_estimated_within_its_tolerance_and_extremes_stay_exact():
    snapshot, recorder = sampled_step(wide_model(), ROWS, activation_sample=BOUND)
    take = 2 * (BOUND // 64)  # rows drawn in all, over the two forwards
    for layer, name in enumerate(("1", "3")):
        outputs = recorder.outputs[name]
        values = torch.cat([o.flatten() for o in outputs]).double()
        assert values.numel() > 2 * BOUND
        mean = values.mean().item()
        assert abs(snapshot.activation_mean[layer] - mean) <= row_tolerance(
            outputs, lambda r: r.mean(dim=1), take)
        variance = values.var(unbiased=False).item()
        assert abs(snapshot.activation_variance[layer] - variance) <= row_tolerance(
            outputs, lambda r, m=mean: (r - m).square().mean(dim=1), take)
        dead = (values == 0).double().mean().item()
        assert abs(snapshot.activation_dead_ratio[layer] - dead) <= row_tolerance(
            outputs, lambda r: (r == 0).double().mean(dim=1), take)
        # exact: read over every value
        assert snapshot.activation_max_abs[layer] == pytest.approx(values.abs().max().item(),
                                                                   rel=1e-7)
    tanh = torch.cat([o.flatten() for o in recorder.outputs["1"]]).double()
    flat = Thresholds().tanh_flat
    saturated = (tanh.abs() > flat).double().mean().item()
    assert saturated > 0.05
    assert abs(snapshot.activation_saturation_ratio[0] - saturated) <= row_tolerance(
        recorder.outputs["1"], lambda r: (r.abs() > flat).double().mean(dim=1), take)
    relu = torch.cat([o.flatten() for o in recorder.outputs["3"]])
    assert 0.2 < (relu == 0).double().mean().item() < 0.8  # a ratio worth estimating
    assert not snapshot.nonfinite.any()


def test_the_estimate_is_not_the_exact_value_but_the_same_on_every_run():
    """Two runs draw the same rows (a seeded generator of the monitor's own); the exact
    record differs from it (the sample is a sample)."""
    first, _ = sampled_step(wide_model(), ROWS, activation_sample=BOUND)
    second, _ = sampled_step(wide_model(), ROWS, activation_sample=BOUND)
    exact, _ = sampled_step(wide_model(), ROWS, activation_sample=None)
    for field in ("activation_mean", "activation_variance", "activation_dead_ratio",
                  "activation_saturation_ratio", "activation_max_abs"):
        assert np.array_equal(getattr(first, field), getattr(second, field),
                              equal_nan=True), field
    assert first.activation_variance[0] != exact.activation_variance[0]
    assert first.activation_max_abs.tolist() == exact.activation_max_abs.tolist()


@pytest.mark.parametrize("bound", [None, 0, 2 * ROWS * 64, 1 << 20])
def test_outputs_at_or_below_the_bound_and_no_bound_are_exact(bound):
    snapshot, recorder = sampled_step(wide_model(), ROWS, activation_sample=bound)
    for layer, name in enumerate(("1", "3")):
        values = torch.cat([o.flatten() for o in recorder.outputs[name]]).double()
        assert close(snapshot.activation_mean[layer], values.mean().item(), 1e-4)
        # float32 sums over 1.15M values: ~3e-4 relative
        assert close(snapshot.activation_variance[layer], values.var(unbiased=False).item(),
                     1e-3)
        assert close(snapshot.activation_dead_ratio[layer],
                     (values == 0).double().mean().item())


def test_nan_and_inf_in_a_sampled_output_are_counted_exactly_and_named():
    """A NaN and a -Inf planted in 2 of 9000 rows: the sample (64 rows) would miss them;
    the counts are read over the whole output."""
    snapshot, recorder = sampled_step(mixed_model(poisoned=True), ROWS,
                                      activation_sample=1 << 10)
    own = recorder.outputs["4"]
    assert own[0].numel() > 1 << 17  # recorded on its own, sampled
    flat = torch.cat([o.flatten() for o in own])
    counts = [int(torch.isnan(flat).sum()), int(torch.isposinf(flat).sum()),
              int(torch.isneginf(flat).sum())]
    assert counts == [2, 0, 2]
    assert snapshot.nonfinite[1, 2].tolist() == counts
    assert snapshot.nonfinite_origin == "4"


def train(monitored: bool, steps: int = 3) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Weights after a few steps with dropout (which draws from the global RNG), and the
    global RNG's state after them."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.Tanh(), nn.Dropout(0.3), nn.Linear(64, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = Monitor(model, every_n_steps=1, optimizers=[opt],
                      activation_sample=BOUND) if monitored else None
    for step in range(steps):
        x = torch.randn(ROWS, 8)
        if monitor is not None:
            monitor.begin_step(step)
        loss = model(x).square().mean()
        loss.backward()
        if monitor is not None:
            monitor.observe_gradients(opt)
        opt.step()
        opt.zero_grad()
        if monitor is not None:
            monitor.end_step()
    if monitor is not None:
        assert monitor.last_snapshot is not None
        monitor.close()
    return [p.detach().clone() for p in model.parameters()], torch.random.get_rng_state()


def test_sampling_leaves_the_global_rng_and_the_training_bit_identical():
    bare, bare_rng = train(monitored=False)
    watched, watched_rng = train(monitored=True)
    assert torch.equal(bare_rng, watched_rng)
    assert all(torch.equal(a, b) for a, b in zip(bare, watched))


@pytest.mark.parametrize("value", [-1, 1.5, True, "64"])
def test_a_wrong_bound_fails_at_construction_naming_it(value):
    with pytest.raises(ValueError, match="activation_sample"):
        Monitor(nn.Linear(2, 2), activation_sample=value)
    with pytest.raises(ValueError, match="activation_sample"):
        TrainingDiagnostics(activation_sample=value)


@pytest.mark.parametrize("layout", ["contiguous", "2-d transposed", "3-d permuted"])
def test_rows_are_drawn_from_outputs_in_any_strides(layout):
    """The record of a non-contiguous output equals that of its contiguous copy (the same
    rows drawn), and its max |x| is exact."""
    torch.manual_seed(1)
    base = torch.randn(64, 4096) if layout != "3-d permuted" else torch.randn(64, 32, 128)
    output = {"contiguous": lambda: base, "2-d transposed": lambda: base.t().contiguous().t(),
              "3-d permuted": lambda: base.permute(1, 0, 2).contiguous().permute(1, 0, 2),
              }[layout]()
    assert output.is_contiguous() == (layout == "contiguous")
    assert torch.equal(output, base)

    def record(t: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator().manual_seed(3)
        sample = probes.draw_rows(t, 1 << 14, generator)
        assert sample is not None
        return probes.sampled_records([sample], 0, 0.01, 0.99)[0]

    got, expected = record(output), record(base.contiguous())
    assert torch.allclose(got, expected, rtol=1e-6)
    assert got[RawActivationField.MAX].item() == base.max().item()
    assert got[RawActivationField.MIN].item() == base.min().item()


def test_samples_batched_together_keep_each_outputs_own_record():
    """The rows drawn from several outputs are recorded in one batch: each record equals the
    one its sample makes alone, the extremes are each output's own (a bfloat16 one's too:
    its draw once failed on numpy, which has no bfloat16), and the exact NaN/Inf counts of
    the one poisoned output stay with it (the others count none)."""
    torch.manual_seed(2)
    outputs = [torch.randn(2048, 64), torch.randn(4096, 64).bfloat16(), torch.randn(1024, 64)]
    outputs[2][7, 3], outputs[2][900, 0] = math.nan, -math.inf
    generator = torch.Generator().manual_seed(3)
    samples = [probes.draw_rows(o, 1 << 12, generator) for o in outputs]
    assert all(s is not None and s.values.numel() == 1 << 12 for s in samples)
    batched = probes.sampled_records(samples, 0, 0.01, 0.99)
    for output, sample, record in zip(outputs, samples, batched):
        alone = probes.sampled_records([sample], 0, 0.01, 0.99)[0]
        assert torch.allclose(record, alone, rtol=1e-6, equal_nan=True)
        assert np.array_equal(record[RawActivationField.MIN:RawActivationField.MAX + 1],
                              torch.stack([output.min(), output.max()]).float(),
                              equal_nan=True)
        scale = output.numel() / sample.values.numel()
        drawn = sample.values.double()
        assert record[RawActivationField.NONZERO].item() == pytest.approx(
            (drawn != 0).sum().item() * scale)
    nonfinite = slice(RawActivationField.NAN, RawActivationField.NEGINF + 1)
    assert batched[2, nonfinite].tolist() == [1.0, 0.0, 1.0]
    assert batched[:2, nonfinite].abs().sum().item() == 0


def test_a_bfloat16_model_gets_its_large_outputs_sampled():
    """A bfloat16 model's large outputs (a CPU bfloat16 run): sampled, max |x| exact."""
    snapshot, recorder = sampled_step(wide_model().bfloat16(), ROWS, dtype=torch.bfloat16,
                                      activation_sample=BOUND)
    for layer, name in enumerate(("1", "3")):
        values = torch.cat([o.flatten() for o in recorder.outputs[name]]).float()
        assert values.numel() > 2 * BOUND
        assert snapshot.activation_max_abs[layer] == values.abs().max().item()
        assert abs(snapshot.activation_mean[layer] - values.mean().item()) < 0.05
