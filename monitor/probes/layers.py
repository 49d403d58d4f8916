"""Which modules are "layers", which parameters belong to them, and their depth order.

A layer is a module that directly owns at least one parameter, named by its qualified name
(``model.named_modules()``, without the ``_orig_mod`` of ``torch.compile`` wrappers, so
names do not change when compilation is switched on). Layers are indexed in registration
order internally; the depth (forward) order is learned from the first forward pass that runs
with hooks and is applied when a Snapshot is packed, so every array a user sees is ordered
input -> output. Parameters of lazy modules (``nn.LazyLinear``) are left out until they are
materialised by the first forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.parameter import is_lazy

#: Parameter-free activation modules whose output is attributed to the layer that ran just
#: before them (their input, in a sequential model). Their kind selects the saturation test.
SATURATING_SIGMOID = (nn.Sigmoid, nn.Hardsigmoid)
SATURATING_TANH = (nn.Tanh, nn.Hardtanh, nn.Softsign)
ACTIVATION_MODULES = SATURATING_SIGMOID + SATURATING_TANH + (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Softplus,
    nn.Hardswish,
)

SATURATION_NONE, SATURATION_SIGMOID, SATURATION_TANH = 0, 1, 2

#: Where libraries define their activation modules (``transformers.activations``: SiLU,
#: GELU, NewGELU, FastGELU, QuickGELU, ReLU-squared...; timm's activation layers): a
#: parameter-free module whose class is defined there is an activation like torch's (told
#: by the defining module's name: neither library is imported for it).
LIBRARY_ACTIVATION_MODULES = ("transformers.activations", "timm.layers.activations",
                              "timm.models.layers.activations")
#: Their identity "activation" is none, and their saturating ones by class name.
LIBRARY_IDENTITIES = ("LinearActivation", "Identity")
LIBRARY_SATURATION = {"Sigmoid": SATURATION_SIGMOID, "HardSigmoid": SATURATION_SIGMOID,
                      "HardSigmoidMe": SATURATION_SIGMOID, "HardSigmoidJit": SATURATION_SIGMOID,
                      "Tanh": SATURATION_TANH}

#: Recurrent modules that return (output, states): an LSTM/GRU/RNN its output sequence and
#: final states, an LSTM cell (h, c). Only the output is their activation.
RECURRENT_MODULES = (nn.RNNBase, nn.LSTMCell)


#: The attribute under which ``torch.compile`` wrappers hold the module they compile.
COMPILED_ATTRIBUTE = "_orig_mod"


def uncompiled_name(name: str) -> str:
    """A qualified module name as it is without ``torch.compile`` wrappers."""
    return ".".join(part for part in name.split(".") if part != COMPILED_ATTRIBUTE)


def is_compile_wrapper(module: nn.Module) -> bool:
    """A ``torch.compile`` wrapper (OptimizedModule): its compiled module is traced instead."""
    return isinstance(getattr(module, COMPILED_ATTRIBUTE, None), nn.Module)


def has_compiled_code(model: nn.Module) -> bool:
    """Whether ``torch.compile`` runs any part of ``model``: a compiled submodule (wrapped
    or ``module.compile()``d) or a compiled ``forward`` (Lightning's ``fit`` of a compiled
    module)."""
    return any(is_compile_wrapper(m) or m._compiled_call_impl is not None
               or hasattr(m.forward, "_torchdynamo_orig_callable") for m in model.modules())


def recomputing() -> bool:
    """Whether module calls now are a checkpointed forward recomputed by backward
    (``torch.utils.checkpoint``, reentrant or not; Hugging Face's gradient checkpointing):
    they run inside an autograd graph task, a training forward never does. Their outputs
    were recorded when the forward first ran; counted again, NaN counts would double and a
    recompute that differs (dropout without the saved RNG state) would bias the figures."""
    return torch._C._current_graph_task_id() != -1


def is_activation(module: nn.Module) -> bool:
    """A parameter-free activation module: torch's (``ACTIVATION_MODULES``) or one of a
    library's (``LIBRARY_ACTIVATION_MODULES``)."""
    if isinstance(module, ACTIVATION_MODULES):
        return True
    kind = type(module)
    return (kind.__module__.startswith(LIBRARY_ACTIVATION_MODULES)
            and kind.__name__ not in LIBRARY_IDENTITIES
            and not any(p is not None for p in module._parameters.values()))


def saturation_kind(module: nn.Module) -> int:
    """The saturation test that applies to ``module``'s output."""
    if isinstance(module, SATURATING_SIGMOID):
        return SATURATION_SIGMOID
    if isinstance(module, SATURATING_TANH):
        return SATURATION_TANH
    if type(module).__module__.startswith(LIBRARY_ACTIVATION_MODULES):
        return LIBRARY_SATURATION.get(type(module).__name__, SATURATION_NONE)
    return SATURATION_NONE


@dataclass
class LayerIndex:
    """Layers of a model and the mapping from its unique parameters to them.

    A parameter shared by several modules is counted once in global norms and belongs to
    every layer that owns it, so each layer's norm is the norm of its own weights.
    """

    names: list[str]
    modules: list[nn.Module]
    params: list[nn.Parameter]
    #: (param position, layer position) pairs, one per ownership.
    pair_param: torch.Tensor
    pair_layer: torch.Tensor
    #: registration positions in forward order; layers never called keep registration order.
    depth_order: list[int] = field(default_factory=list)
    param_position: dict[int, int] = field(default_factory=dict)
    #: parameters of lazy modules not materialised yet (not indexed).
    lazy: list[torch.Tensor] = field(default_factory=list)

    @classmethod
    def from_model(cls, model: nn.Module) -> LayerIndex:
        names: list[str] = []
        modules: list[nn.Module] = []
        params: list[nn.Parameter] = []
        param_position: dict[int, int] = {}
        pairs: list[tuple[int, int]] = []
        lazy: list[torch.Tensor] = []
        for name, module in model.named_modules():
            own = [p for p in module._parameters.values() if p is not None]
            lazy += [p for p in own if is_lazy(p)]
            own = [p for p in own if not is_lazy(p)]
            if not own:
                continue
            layer = len(names)
            names.append(uncompiled_name(name) or type(module).__name__)
            modules.append(module)
            for p in own:
                if id(p) not in param_position:
                    param_position[id(p)] = len(params)
                    params.append(p)
                pairs.append((param_position[id(p)], layer))
        pair_param = torch.tensor([p for p, _ in pairs], dtype=torch.long)
        pair_layer = torch.tensor([layer for _, layer in pairs], dtype=torch.long)
        return cls(
            names=names,
            modules=modules,
            params=params,
            pair_param=pair_param,
            pair_layer=pair_layer,
            depth_order=list(range(len(names))),
            param_position=param_position,
            lazy=lazy,
        )

    def materialised(self) -> bool:
        """Whether a lazy parameter left out has been materialised since (index again)."""
        return any(not is_lazy(p) for p in self.lazy)

    def __len__(self) -> int:
        return len(self.names)

    def set_forward_order(self, called: list[int]) -> None:
        """Order layers by first call in a forward pass; uncalled ones go last."""
        seen = set(called)
        self.depth_order = list(dict.fromkeys(called)) + [
            i for i in range(len(self.names)) if i not in seen
        ]

    def ordered_names(self) -> list[str]:
        return [self.names[i] for i in self.depth_order]
