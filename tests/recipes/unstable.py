"""Trainings that fail without help, each by one mechanism of training gone wrong."""

from __future__ import annotations

import torch
from torch import nn

from ..detect_fixtures import mlp
from ..realistic import Setup
from . import schedules
from .data import (classification, images, regression, sequence_sums, shuffled_labels,
                   tokens)
from .models import PlainDeepCNN, RecurrentRegressor, TinyLM
from .recipe import (IN_PROCESS, RULES_1S, RULES_5S, Recipe, diverges, fails_to_learn, goes_nonfinite, rises_to_chance,
                     stays_at_chance, stops_learning_after, unstable)

FAMILY = "unstable"
JUDGE_NAMES = (IN_PROCESS, RULES_1S, RULES_5S)
_cross_entropy = nn.functional.cross_entropy
EXPLODING = {"LossDivergence", "GradientExplosion", "LossSpike"}


def mlp_lr_too_high() -> Setup:
    torch.manual_seed(500)
    model = mlp([16, 64, 64, 1], nn.ReLU)
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.08, momentum=0.9),
                 regression(scale=3.0))


def lm_overshooting_warmup() -> Setup:
    """A warm-up to a peak lr ~300x what the model takes (AdamW at 1.0): fine while the lr
    is low, then the loss climbs back as it grows."""
    torch.manual_seed(501)
    model = TinyLM()
    return Setup(model, torch.optim.AdamW(model.parameters(), lr=1.0), tokens(),
                 loss_fn=_cross_entropy, schedule=schedules.linear_warmup(400))


def rnn_exploding() -> Setup:
    """A ReLU RNN whose recurrent matrix starts with spectral radius 1.3, no clipping: the
    gradient through 20 steps grows as 1.3^20; its bursts throw the weights away before the
    model learns anything (the LSTM beside it reaches 2% of the targets' variance)."""
    torch.manual_seed(502)
    model = RecurrentRegressor(nn.RNN, nonlinearity="relu")
    nn.init.orthogonal_(model.rnn.weight_hh_l0, gain=1.3)
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.03), sequence_sums())


def sigmoid_cnn(weight_decay: float) -> Setup:
    """20 sigmoid convolutions without BatchNorm: each sigmoid passes at most a quarter of
    the gradient, so the input-side layers get ~0.25^18 of the output side's."""
    torch.manual_seed(503)
    model = PlainDeepCNN(depth=20, activation=nn.Sigmoid)
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9,
                                        weight_decay=weight_decay),
                 images(seed=10), loss_fn=_cross_entropy)


def dead_relus_after_lr_spike() -> Setup:
    """A healthy ReLU MLP hit by 5 steps at 20x the lr (a schedule bug): the jump drives
    the biases so negative that most units never fire again."""
    torch.manual_seed(504)
    model = mlp([16, 64, 64, 64, 1], nn.ReLU)
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.01), regression(seed=11),
                 schedule=lambda step: 20.0 if 200 <= step < 205 else 1.0)


def poisoned_batch() -> Setup:
    """One batch whose inputs are 1000x the rest (a unit bug in one shard) at step 300:
    SGD's momentum carries its huge gradient into the next ~1/(1 - momentum) steps."""
    torch.manual_seed(505)
    model = mlp([16, 64, 64, 4], nn.ReLU)
    clean = classification(seed=12)

    def batches(step: int):
        x, y = clean(step)
        return (x * 1e3, y) if step == 300 else (x, y)
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), batches,
                 loss_fn=_cross_entropy)


def labels_shuffled_mid_run() -> Setup:
    """A data-pipeline bug at step 300 pairs every input with a random label."""
    torch.manual_seed(506)
    model = mlp([16, 64, 64, 4], nn.ReLU)
    clean = classification(seed=13, spread=1.0)
    shuffled = shuffled_labels(clean, 4)
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                 lambda step: clean(step) if step < 300 else shuffled(step),
                 loss_fn=_cross_entropy)


def fp16_overflow_drifting_inputs() -> Setup:
    """fp16 with a GradScaler; from step 300 the inputs grow 5% a step (a sensor's drifting
    gain) until the layers' outputs pass 65504."""
    torch.manual_seed(507)
    model = mlp([16, 64, 64, 4], nn.ReLU)
    clean = classification(seed=14)

    def batches(step: int):
        x, y = clean(step)
        return x * 1.05 ** max(0, step - 300), y
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.01), batches,
                 loss_fn=_cross_entropy, precision="fp16")


def attention_logit_growth() -> Setup:
    """The reproduction of benchmarks/instability.py: a 2-layer decoder without
    qk-layernorm at AdamW lr 0.1; its attention logits grow until the loss diverges."""
    from benchmarks.instability import TinyDecoder, token_batches

    torch.manual_seed(0)
    model = TinyDecoder()
    sequences = token_batches(200)

    def batches(step: int):
        tokens = sequences[step]
        return tokens[:, :-1], tokens[:, 1:].flatten()
    return Setup(model, torch.optim.AdamW(model.parameters(), lr=0.1),
                 batches, loss_fn=lambda logits, y: _cross_entropy(logits.flatten(0, 1), y))


RECIPES: tuple[Recipe, ...] = (
    unstable("mlp_sgd_lr_too_high", "MLP", mlp_lr_too_high, goes_nonfinite, EXPLODING,
             ci=True),
    unstable("lm_overshooting_warmup", "transformer LM", lm_overshooting_warmup, diverges(1.5),
             EXPLODING, ci=True),
    unstable("rnn_exploding", "LSTM/GRU", rnn_exploding, fails_to_learn(1.0), EXPLODING,
             ci=True),
    unstable("cnn_sigmoid_20_vanishing", "CNN", lambda: sigmoid_cnn(0.0), stays_at_chance(4),
             {"GradientVanishing"}, steps=300, ci=True),
    unstable("cnn_sigmoid_20_vanishing_wd", "CNN", lambda: sigmoid_cnn(5e-4),
             stays_at_chance(4), {"GradientVanishing"}, steps=300, ci=True),
    unstable("mlp_dead_relus_after_lr_spike", "MLP", dead_relus_after_lr_spike,
             stops_learning_after(200),
             {"DeadUnits"}, ci=True),
    unstable("mlp_poisoned_batch", "MLP", poisoned_batch, diverges(2), EXPLODING, ci=True),
    unstable("mlp_labels_shuffled_mid_run", "MLP", labels_shuffled_mid_run,
             rises_to_chance(4, learned_by=300), {"LossDivergence"}, ci=True),
    unstable("mlp_fp16_overflow_drifting_inputs", "MLP", fp16_overflow_drifting_inputs,
             goes_nonfinite, {"AmpOverflowStorm", "Fp16HeadroomLow"},
             rule_catches=frozenset({"AmpOverflowStorm"}), ci=True),
    unstable("lm_attention_logit_growth", "transformer LM", attention_logit_growth,
             stays_at_chance(64), {"AttentionLogitGrowth"}, steps=200, ci=True),
)
