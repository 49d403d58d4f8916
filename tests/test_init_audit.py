"""The init audit against the inits people use: quiet on all of them, loud (and short) on
real outliers; lazy modules, Hugging Face's transposed Conv1D and tied output heads."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from torch import nn

from gradwatch.monitor.judging.init_audit import INIT_SCALE, MESSAGE_CHARS, audit_initialization
from gradwatch.monitor.probes.weight_audit import audit_weights

pytestmark = pytest.mark.unit


def mlp(init=None) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.Tanh(),
                          nn.Linear(256, 10))
    for layer in model:
        if init is not None and isinstance(layer, nn.Linear):
            init(layer.weight)
    return model


INITS = {
    "pytorch default": None,
    "xavier uniform": nn.init.xavier_uniform_,
    "xavier normal": nn.init.xavier_normal_,
    "he normal": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
    "std 0.02": lambda w: nn.init.normal_(w, std=0.02),
    "1/sqrt(d)": lambda w: nn.init.normal_(w, std=1 / math.sqrt(w.shape[1])),
}


@pytest.mark.parametrize("name", sorted(INITS))
def test_common_inits_are_quiet(name):
    assert audit_initialization(audit_weights(mlp(INITS[name]))) == []


def test_default_init_variance_is_one_third_of_lecun():
    """PyTorch's kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)), Var = 1/(3 fan_in)."""
    audits = {a.name: a for a in audit_weights(mlp())}
    first = audits["0.weight"]
    assert first.nearest == "PyTorch default"
    assert first.variance == pytest.approx(1 / (3 * 64), rel=0.05)
    assert first.ratio == pytest.approx(first.variance * 3 * 64)


@pytest.mark.parametrize("scale", [30.0, 1 / 300])
def test_real_outliers_warn_in_a_short_message_with_details_at_debug(scale, caplog):
    model = mlp()
    with torch.no_grad():
        model[2].weight.mul_(scale)
    with caplog.at_level(logging.DEBUG, logger="gradwatch.init_audit"):
        (finding,) = audit_initialization(audit_weights(model))
    assert finding.name == INIT_SCALE and finding.severity == "warning"
    assert finding.layers == ("2",)
    assert len(finding.summary) + len(finding.description) < MESSAGE_CHARS
    variance = float(model[2].weight.detach().var(unbiased=False))
    nearest = min([1 / (3 * 256), 1 / 256, 2 / 512, 2 / 256, 4e-4, 4e-4 / 96],
                  key=lambda v: abs(math.log(variance / v)))
    assert finding.value == pytest.approx(variance / nearest, rel=1e-6)
    assert ("grow" if scale > 1 else "shrink") in finding.description
    debug = [r.getMessage() for r in caplog.records]
    assert len(debug) == 3 and any("2.weight" in line and "fan_in 256" in line for line in debug)


def test_lazy_modules_are_skipped_before_their_first_forward():
    model = nn.Sequential(nn.LazyLinear(32), nn.ReLU(), nn.Linear(32, 4))
    assert [a.name for a in audit_weights(model)] == ["2.weight"]
    assert audit_initialization(audit_weights(model)) == []
    model(torch.randn(2, 7))  # materialised: audited like any Linear
    assert [a.name for a in audit_weights(model)] == ["0.weight", "2.weight"]
    assert audit_weights(model)[0].fan_in == 7


def test_gpt2_conv1d_is_audited_like_linear_and_the_tied_head_as_the_embedding():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64,
                                     n_positions=16, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    assert model.lm_head.weight is model.transformer.wte.weight  # tied
    audits = {a.name: a for a in audit_weights(model)}
    assert "lm_head.weight" not in audits
    c_fc = audits["transformer.h.0.mlp.c_fc.weight"]
    weight = model.transformer.h[0].mlp.c_fc.weight  # Conv1D: [in, out]
    assert (c_fc.fan_in, c_fc.fan_out) == (weight.shape[0], weight.shape[1]) == (32, 128)
    assert c_fc.variance == pytest.approx(float(weight.detach().var(unbiased=False)))
    assert len(audits) == 8  # c_attn, attn.c_proj, c_fc, mlp.c_proj per block
    assert audit_initialization(audit_weights(model)) == []


def test_bert_std_002_init_is_quiet():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
                                     intermediate_size=64, vocab_size=64)
    torch.manual_seed(0)
    model = transformers.BertModel(config)
    assert len(audit_weights(model)) == 13 and audit_initialization(audit_weights(model)) == []
