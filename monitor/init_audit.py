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
the same thing and receives the same update, so the symmetry is never broken.

Parameters not materialised yet (``nn.LazyLinear`` before its first forward) are skipped:
the audit runs before the first step, when a lazy module has no weights to judge.

This one reads tensors (it runs once, outside the training loop); the result is plain
Findings that the AlertEngine publishes as warnings.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from .detectors import Finding, table_fields
from .layers import ACTIVATION_MODULES, SATURATION_NONE, saturation_kind
from .thresholds import Thresholds

NORMALIZATION_MODULES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm,
                         nn.RMSNorm)
INIT_SCALE, INIT_SYMMETRY = "InitializationSuspect", "SymmetricInitialization"
log = logging.getLogger("gradwatch.init_audit")
#: Longest alert text (summary + description) the audit writes; the details go to the debug
#: log and to the WeightAudits.
MESSAGE_CHARS = 300
#: The std of the small-std transformer inits (BERT, GPT-2), whatever the fan.
SMALL_STD = 0.02
#: GPT-2 scales its residual projections' std SMALL_STD by 1/sqrt(2 n_layers); up to 48 layers.
DEEPEST_SCALED_RESIDUAL = 48
#: Floor of a weight variance before a ratio or log: an all-zero weight is infinitely far
#: off every scheme, not a division by zero.
VARIANCE_FLOOR = 1e-300


def schemes(fan_in: int, fan_out: int) -> dict[str, float]:
    """The weight variance of each common initialisation scheme for this fan."""
    return {
        "PyTorch default": 1.0 / (3 * fan_in),
        "LeCun/1/sqrt(d)": 1.0 / fan_in,
        "Xavier": 2.0 / (fan_in + fan_out),
        "He": 2.0 / fan_in,
        "std 0.02": SMALL_STD ** 2,
        "GPT-2 scaled residual": SMALL_STD ** 2 / (2 * DEEPEST_SCALED_RESIDUAL),
    }


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
    known: dict[str, float] = field(default_factory=dict)  # scheme -> its variance

    @property
    def nearest(self) -> str:
        """The common scheme whose variance is closest (in ratio) to this weight's; the
        small-std range between std 0.02 and its scaled residual form counts as one."""
        return min(self.known, key=lambda k: abs(math.log(self._ratio_to(self.known[k]))))

    @property
    def ratio(self) -> float:
        """Variance over the nearest scheme's (1.0 anywhere in the small-std range)."""
        if not self.known or self.variance <= 0:
            return math.nan
        low, high = self.known["GPT-2 scaled residual"], self.known["std 0.02"]
        if low <= self.variance <= high:
            return 1.0
        return self._ratio_to(self.known[self.nearest])

    def _ratio_to(self, variance: float) -> float:
        return max(self.variance, VARIANCE_FLOOR) / variance

    def detail(self) -> str:
        return (f"{self.name}: Var(W)={self.variance:.3g}, {self.ratio:.3g}x {self.nearest} "
                f"(fan_in {self.fan_in}, fan_out {self.fan_out}, then {self.activation})")


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
#: Modules with a Linear's role but a [in, out] weight (Hugging Face GPT-2's Conv1D), by
#: class name so that transformers need not be imported.
TRANSPOSED_UNIT_LAYERS = ("Conv1D",)


def audit_weights(model: nn.Module) -> list[WeightAudit]:
    """Audit every weight of ``model``'s unit layers (registration order)."""
    following = following_activations(model)
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    audits = []
    for module_name, module in model.named_modules():
        transposed = type(module).__name__ in TRANSPOSED_UNIT_LAYERS
        if not (isinstance(module, UNIT_LAYERS) or transposed):
            continue
        for param_name, param in module._parameters.items():
            if (param is None or isinstance(param, nn.parameter.UninitializedParameter)
                    or param.dim() < 2 or param.numel() == 0 or id(param) in embeddings):
                continue
            weight = param.detach()
            audits.append(_audit_one(
                f"{module_name}.{param_name}" if module_name else param_name,
                weight.T if transposed else weight, following.get(module_name)))
    return audits


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


def audit_initialization(model: nn.Module, thresholds: Thresholds | None = None,
                         step: int = 0) -> list[Finding]:
    """Warnings about ``model``'s initial weights: at most one per kind, each under
    ``MESSAGE_CHARS`` characters; every weight's figures go to the debug log.

    InitializationSuspect: variance more than ``init_variance_factor`` away from every
    common scheme. SymmetricInitialization: identical rows.
    """
    t = thresholds or Thresholds()
    audits = audit_weights(model)
    for audit in audits:
        log.debug("gradwatch init audit: %s", audit.detail())
    now = time.time()
    findings = []
    symmetric = [a for a in audits if a.symmetric]
    if symmetric:
        findings.append(_finding(
            INIT_SYMMETRY, symmetric, step, now, value=float(len(symmetric)), threshold=0.0,
            summary=f"{len(symmetric)} weight(s) with identical units, first {symmetric[0].name}",
            description="Identical rows (e.g. all zero): the symmetry is never broken and the "
                        "layer acts as one unit. Zero-initialised residual outputs are the "
                        "exception."))
    factor = t.init_variance_factor
    off = [a for a in audits if not a.symmetric and math.isfinite(a.ratio)
           and not 1 / factor <= a.ratio <= factor]
    if off:
        worst = max(off, key=lambda a: abs(math.log(max(a.ratio, VARIANCE_FLOOR))))
        side = "above" if worst.ratio > 1 else "below"
        findings.append(_finding(
            INIT_SCALE, off, step, now, value=worst.ratio, threshold=factor,
            summary=(f"{len(off)} weight(s) far off every common init, worst {worst.name} at "
                     f"{worst.ratio:.2g}x {worst.nearest}"),
            description=(f"Var(W) more than {factor:g}x {side} PyTorch default, Xavier, He and "
                         "std-0.02 inits: activations will "
                         + ("grow" if worst.ratio > 1 else "shrink") + " with depth.")))
    return findings


def _finding(name: str, audits: list[WeightAudit], step: int, now: float, *, value: float,
             threshold: float, summary: str, description: str) -> Finding:
    spare = MESSAGE_CHARS - len(description) - 2
    return Finding(
        name=name, step=step, time=now, layers=tuple(dict.fromkeys(_layer_of(a.name)
                                                                    for a in audits)),
        value=value, threshold=threshold, summary=summary[:spare], description=description,
        **table_fields(name))


def _layer_of(param_name: str) -> str:
    """The layer (module qualified name) owning a parameter name."""
    module, _, _ = param_name.rpartition(".")
    return module or param_name
