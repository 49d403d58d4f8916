"""Initialisation audit: run once over the model, before the first step (THEORY 3).

Per layer weight (a parameter with 2 or more dimensions: Linear, Conv, attention
projections, recurrent matrices; embeddings are lookups and are skipped), compare the
weight variance with the expectation for its fan and the activation that follows it:
He/Kaiming 2 / fan_in before ReLU-like activations, Xavier/Glorot 2 / (fan_in + fan_out)
before sigmoid/tanh-like ones or none. And flag weights whose output units (rows) are all
identical, zero weights included: every unit then computes the same thing and receives the
same update, so the symmetry is never broken.

This one reads tensors (it runs once, outside the training loop); the result is plain
Findings that the AlertEngine publishes as warnings.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from .detectors import WARNING, Finding, describe_layers
from .layers import ACTIVATION_MODULES, SATURATION_NONE, saturation_kind
from .thresholds import Thresholds

NORMALIZATION_MODULES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm,
                         nn.RMSNorm)
INIT_SCALE, INIT_SYMMETRY = "InitializationSuspect", "SymmetricInitialization"


@dataclass(frozen=True)
class WeightAudit:
    """The audit of one weight tensor."""

    name: str  # qualified parameter name
    fan_in: int
    fan_out: int
    activation: str  # the activation module guessed to follow, or "none"
    variance: float
    xavier: float
    he: float
    expected: float  # the one of xavier/he that matches the activation
    symmetric: bool

    @property
    def ratio(self) -> float:
        return self.variance / self.expected if self.expected > 0 else math.nan


def following_activations(model: nn.Module) -> dict[str, nn.Module | None]:
    """For each module that owns parameters, the activation module registered after it and
    before the next parameter-owning module other than a normalisation layer (a guess that
    holds for sequential models, conv -> BatchNorm -> ReLU included)."""
    following: dict[str, nn.Module | None] = {}
    last: str | None = None
    for name, module in model.named_modules():
        if isinstance(module, NORMALIZATION_MODULES):
            continue  # a norm between a layer and its activation keeps the fan's scale
        if any(p is not None for p in module._parameters.values()):
            following[name] = None
            last = name
        elif isinstance(module, ACTIVATION_MODULES) and last is not None:
            if following[last] is None:
                following[last] = module
    return following


#: Modules whose matrix parameters are layers of units (rows = output units, a fan in/out).
#: A raw parameter of some other module (a positional embedding, a learned query) has no
#: such meaning: a zero start is no broken symmetry there, so it is not judged.
UNIT_LAYERS = (nn.Linear, nn.Bilinear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d,
               nn.ConvTranspose2d, nn.ConvTranspose3d, nn.MultiheadAttention, nn.RNNBase)


def audit_weights(model: nn.Module) -> list[WeightAudit]:
    """Audit every weight of ``model``'s unit layers (registration order)."""
    following = following_activations(model)
    audits = []
    for module_name, module in model.named_modules():
        if not isinstance(module, UNIT_LAYERS):
            continue
        for param_name, param in module._parameters.items():
            if param is None or param.dim() < 2 or param.numel() == 0:
                continue
            activation = following.get(module_name)
            audits.append(_audit_one(
                f"{module_name}.{param_name}" if module_name else param_name, param.detach(),
                activation))
    return audits


@torch.no_grad()
def _audit_one(name: str, weight: torch.Tensor, activation: nn.Module | None) -> WeightAudit:
    receptive = math.prod(weight.shape[2:])
    fan_out, fan_in = weight.shape[0] * receptive, weight.shape[1] * receptive
    values = weight.float()
    variance = float(values.var(correction=0))
    rows = values.reshape(weight.shape[0], -1)
    # identical rows, or a constant (e.g. all-zero) single row: nothing tells units apart
    symmetric = bool((rows == rows[:1]).all()) and (weight.shape[0] > 1 or variance == 0.0)
    xavier, he = 2.0 / (fan_in + fan_out), 2.0 / fan_in
    relu_like = activation is not None and saturation_kind(activation) == SATURATION_NONE
    return WeightAudit(
        name=name, fan_in=fan_in, fan_out=fan_out,
        activation=type(activation).__name__ if activation is not None else "none",
        variance=variance, xavier=xavier, he=he, expected=he if relu_like else xavier,
        symmetric=symmetric)


def audit_initialization(model: nn.Module, thresholds: Thresholds | None = None,
                         step: int = 0) -> list[Finding]:
    """Warnings about ``model``'s initial weights: at most one per kind, naming every weight.

    InitializationSuspect: variance off the matched Xavier/He expectation by more than
    ``init_variance_factor`` either way. SymmetricInitialization: identical rows.
    """
    t = thresholds or Thresholds()
    audits = audit_weights(model)
    now = time.time()
    findings = []
    symmetric = [a for a in audits if a.symmetric]
    if symmetric:
        findings.append(Finding(
            name=INIT_SYMMETRY, severity=WARNING, step=step, time=now,
            layers=tuple(dict.fromkeys(_layer_of(a.name) for a in symmetric)),
            value=float(len(symmetric)), threshold=0.0,
            summary=f"{len(symmetric)} weight(s) with identical units, first {symmetric[0].name}",
            description=(
                "Every output unit (row) of these weights is identical, e.g. all zero or all "
                "equal: " + describe_layers([a.name for a in symmetric]) + ". Such units compute "
                "the same thing and receive the same update, so the symmetry is never broken "
                "and the layer acts as a single unit (THEORY 2). Deliberately zero-initialised "
                "output layers of residual branches are the exception."),
            remedy=("Initialise with random values of variance matched to the fan: "
                    "torch.nn.init.kaiming_uniform_/kaiming_normal_ before ReLU, "
                    "xavier_uniform_/xavier_normal_ before tanh/sigmoid; biases at 0."),
        ))
    factor = t.init_variance_factor
    off = [a for a in audits if not a.symmetric and math.isfinite(a.ratio)
           and not 1 / factor <= a.ratio <= factor]
    if off:
        worst = max(off, key=lambda a: abs(math.log(max(a.ratio, 1e-300))))
        details = [f"{a.name}: Var(W)={a.variance:.3g} vs Xavier {a.xavier:.3g} / He "
                   f"{a.he:.3g} (fan_in {a.fan_in}, fan_out {a.fan_out}, followed by "
                   f"{a.activation}), {a.ratio:.3g}x the expected" for a in off]
        findings.append(Finding(
            name=INIT_SCALE, severity=WARNING, step=step, time=now,
            layers=tuple(dict.fromkeys(_layer_of(a.name) for a in off)), value=worst.ratio,
            threshold=factor,
            summary=(f"{len(off)} weight(s) initialised off the Xavier/He scale, worst "
                     f"{worst.name} at {worst.ratio:.3g}x"),
            description=(
                f"Weight variance more than {factor:g}x away from the expectation for the "
                "layer's fan and following activation (He 2/fan_in before ReLU-like, Xavier "
                "2/(fan_in+fan_out) otherwise): " + "; ".join(details[:8])
                + (f"; and {len(details) - 8} more" if len(details) > 8 else "")
                + ". Too large: activations and gradients grow layer by layer (explosion); "
                "too small: they shrink (vanishing)."),
            remedy=("Re-initialise with torch.nn.init.kaiming_uniform_ (ReLU family) or "
                    "xavier_uniform_ (tanh/sigmoid/linear); or add BatchNorm/LayerNorm, which "
                    "makes training robust to the initial scale."),
        ))
    return findings


def _layer_of(param_name: str) -> str:
    """The layer (module qualified name) owning a parameter name."""
    module, _, _ = param_name.rpartition(".")
    return module or param_name
