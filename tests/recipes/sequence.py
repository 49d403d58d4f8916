"""Recurrent networks and transformer language models, ours and Hugging Face's."""

from __future__ import annotations

import tempfile

import torch
from torch import nn

from ..realistic import Setup
from . import schedules
from .data import sequence_sums, tokens
from .models import HuggingFaceLM, RecurrentRegressor, TinyLM, tiny_gpt2_config
from .recipe import Recipe, healthy, loss_falls

STEPS = 600
_cross_entropy = nn.functional.cross_entropy


def lstm_adam_clipped() -> Setup:
    torch.manual_seed(300)
    model = RecurrentRegressor(nn.LSTM)
    return Setup(model, torch.optim.Adam(model.parameters(), lr=3e-3), sequence_sums(),
                 clip=1.0)


def gru_sgd_step_decay() -> Setup:
    torch.manual_seed(301)
    model = RecurrentRegressor(nn.GRU)
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                 sequence_sums(), schedule=schedules.step_decay(300, 0.1), clip=5.0)


def tiny_lm_dropout_wsd_bf16() -> Setup:
    torch.manual_seed(302)
    model = TinyLM(dropout=0.1)
    return Setup(model, torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1),
                 tokens(), loss_fn=_cross_entropy,
                 schedule=schedules.warmup_stable_decay(60, STEPS), clip=1.0, precision="bf16")


def gpt2_hugging_face_init() -> Setup:
    """A 2-layer GPT-2 from a tiny transformers config: Hugging Face's own init."""
    from transformers import GPT2LMHeadModel

    torch.manual_seed(303)
    model = HuggingFaceLM(GPT2LMHeadModel(tiny_gpt2_config()))
    return Setup(model, torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01),
                 tokens(), loss_fn=_cross_entropy, schedule=schedules.warmup_cosine(60, STEPS),
                 clip=1.0)


def gpt2_fine_tune_from_pretrained() -> Setup:
    """save_pretrained, then from_pretrained and fine-tuning on a noisier language at a
    lower lr, as a Hugging Face user fine-tunes a checkpoint."""
    from transformers import GPT2LMHeadModel

    torch.manual_seed(304)
    base = GPT2LMHeadModel(tiny_gpt2_config())
    optimizer = torch.optim.AdamW(base.parameters(), lr=3e-3)
    batches = tokens(noise=0.0)
    for step in range(150):
        x, y = batches(step)
        _cross_entropy(base(input_ids=x).logits.flatten(0, 1), y).backward()
        optimizer.step()
        optimizer.zero_grad()
    with tempfile.TemporaryDirectory() as folder:
        base.save_pretrained(folder)
        model = HuggingFaceLM(GPT2LMHeadModel.from_pretrained(folder))
    return Setup(model, torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.01),
                 tokens(noise=0.1, batch=16), loss_fn=_cross_entropy,
                 schedule=schedules.warmup_cosine(30, STEPS))


RECIPES: tuple[Recipe, ...] = (
    healthy("lstm_adam_clipped", "LSTM/GRU", lstm_adam_clipped, loss_falls(3), ci=True),
    healthy("gru_sgd_momentum_step_decay", "LSTM/GRU", gru_sgd_step_decay, loss_falls(3),
            ci=True),
    healthy("tiny_lm_dropout_wsd_bf16", "transformer LM", tiny_lm_dropout_wsd_bf16,
            loss_falls(1.5), ci=True),
    healthy("gpt2_hf_init_adamw_cosine", "transformer LM", gpt2_hugging_face_init,
            loss_falls(1.5)),
    healthy("gpt2_fine_tune_from_pretrained", "fine-tuning", gpt2_fine_tune_from_pretrained,
            loss_falls(1.05)),
)
