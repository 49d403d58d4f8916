"""Initialisation audit: run once over the model, before the first step (see
docs/theory.md § Xavier and He initialisation).

Per layer weight (a parameter with 2 or more dimensions: Linear, Conv, Hugging Face's
transposed Conv1D, attention projections, recurrent matrices; embeddings are lookups and are
skipped, and so is an output head tied to an embedding, which IS the embedding matrix),
compare the weight variance with the schemes people actually use (``SCHEMES``): PyTorch's
default (kaiming_uniform with a=sqrt(5): 1 / (3 fan_in)), LeCun / 1/sqrt(d) (1 / fan_in),
Xavier (2 / (fan_in + fan_out)), He (2 / fan_in) and the small-std transformer inits (std
0.02, and GPT-2's 0.02 / sqrt(2 n_layers) for residual projections up to 48 layers). Only a
weight farther than ``init_variance_factor`` from EVERY scheme is suspect. And flag weights
whose output units (rows) are all identical, zero weights included: every unit then computes
the same thing and receives the same update, so the symmetry is never broken; except the zero
second factor of a low-rank product (LoRA's ``lora_B``), whose rows the gradients tell apart.
A mixture of experts' router is not audited: its scores pick experts, no activation flows
through its weight, and libraries start it as they mean to (zero: uniform routing; Switch
Transformers: std 1).

Parameters not materialised yet (``nn.LazyLinear`` before its first forward) are skipped:
the audit runs before the first step, when a lazy module has no weights to judge.

This one reads tensors (it runs once, outside the training loop); the result is plain
Findings that the AlertEngine publishes as warnings.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from ..records.init_schemes import WeightAudit, schemes
from .layers import SATURATION_NONE, is_activation, saturation_kind

NORMALIZATION_MODULES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm,
                         nn.RMSNorm)


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
        elif is_activation(module) and last is not None:
            if following[last] is None:
                following[last] = module
    return following


#: Modules whose matrix parameters are layers of units (rows = output units, a fan in/out).
#: A raw parameter of some other module (a positional embedding, a learned query) has no
#: such meaning: a zero start is no broken symmetry there, so it is not judged.
UNIT_LAYERS = (nn.Linear, nn.Bilinear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d,
               nn.ConvTranspose2d, nn.ConvTranspose3d, nn.MultiheadAttention, nn.RNNBase)
#: Modules with a Linear's role but a [in, out] weight (Hugging Face GPT-2's Conv1D), by
#: class name so that transformers need not be imported.
TRANSPOSED_UNIT_LAYERS = ("Conv1D",)


def audit_weights(model: nn.Module) -> list[WeightAudit]:
    """Audit every weight of ``model``'s unit layers (registration order)."""
    following = following_activations(model)
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    audits: list[WeightAudit] = []
    previous: torch.Tensor | None = None  # the weight audited last, [out, in, *kernel]
    for module_name, module in model.named_modules():
        transposed = type(module).__name__ in TRANSPOSED_UNIT_LAYERS
        if not (isinstance(module, UNIT_LAYERS) or transposed) or is_router(module_name):
            continue
        for param_name, param in module._parameters.items():
            if (param is None or isinstance(param, nn.parameter.UninitializedParameter)
                    or param.dim() < 2 or param.numel() == 0 or id(param) in embeddings):
                continue
            weight = param.detach().T if transposed else param.detach()
            audit = _audit_one(f"{module_name}.{param_name}" if module_name else param_name,
                               weight, following.get(module_name))
            if audit.symmetric and previous is not None and _zero_up_projection(previous,
                                                                                weight):
                audit = dataclasses.replace(audit, symmetric=False)
            audits.append(audit)
            previous = weight
    return audits


#: Names of a mixture of experts' router (Mixtral's ``gate``, Afmoe's ``router.gate``,
#: Switch Transformers' ``router.classifier``): one of the module's last two names.
ROUTER_NAMES = ("router", "gate")


def is_router(module_name: str) -> bool:
    return any(part in ROUTER_NAMES for part in module_name.split(".")[-2:])


@torch.no_grad()
def _zero_up_projection(down: torch.Tensor, up: torch.Tensor) -> bool:
    """``up`` is the zero second factor of a low-rank product ``up @ down`` whose first
    factor has distinct rows (LoRA's B after A): the product starts at zero by design, and
    ``up``'s rows are told apart by the gradients that reach them (each through its own
    output unit), so its symmetry is broken from the first step."""
    rank = down.shape[0]
    return (up.dim() >= 2 and down.dim() >= 2 and up.shape[1] == rank
            and rank < min(up.shape[0], down.shape[1]) and not bool(up.any())
            and not bool((down.reshape(rank, -1) == down.reshape(rank, -1)[:1]).all()))


@torch.no_grad()
def _audit_one(name: str, weight: torch.Tensor, activation: nn.Module | None) -> WeightAudit:
    """``weight`` in [out, in, *kernel] layout."""
    receptive = math.prod(weight.shape[2:])
    fan_out, fan_in = weight.shape[0] * receptive, weight.shape[1] * receptive
    values = weight.float()
    variance = float(values.var(correction=0))
    rows = values.reshape(weight.shape[0], -1)
    # identical rows, or a constant (e.g. all-zero) single row: nothing tells units apart
    symmetric = bool((rows == rows[:1]).all()) and (weight.shape[0] > 1 or variance == 0.0)
    known = schemes(fan_in, fan_out)
    xavier, he = known["Xavier"], known["He"]
    relu_like = activation is not None and saturation_kind(activation) == SATURATION_NONE
    return WeightAudit(
        name=name, fan_in=fan_in, fan_out=fan_out,
        activation=type(activation).__name__ if activation is not None else "none",
        variance=variance, xavier=xavier, he=he, expected=he if relu_like else xavier,
        symmetric=symmetric, known=known)
