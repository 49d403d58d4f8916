"""Which module produces the model's output logits: only a real logit head has them.

A head is known by its role (Hugging Face's output embeddings: ``lm_head``, a masked LM's
decoder; or a module named ``lm_head``), else by what the model returns: the ``nn.Linear``
(2 or more outputs) whose output tensor IS the model's output, or its ``logits`` (a
classifier's). A regression model's hidden layer is never taken for one: a model without a
logit head has no output logits.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .tensor_stats import floating_tensors

#: The name a language model's head goes by outside Hugging Face too (nanoGPT and the like).
LM_HEAD = "lm_head"


def named_head(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The logit head known by its role, or None (then ``returned_head`` finds it)."""
    names = {id(m): name for name, m in model.named_modules()}
    for module in model.modules():
        output_embeddings = getattr(module, "get_output_embeddings", None)
        if callable(output_embeddings):
            try:
                head = output_embeddings()
            except (NotImplementedError, AttributeError):  # a model without a head
                head = None
            if isinstance(head, nn.Module) and id(head) in names:
                return names[id(head)], head
            break  # the outermost Hugging Face model answers for the whole
    for name, module in model.named_modules():
        if name.split(".")[-1] == LM_HEAD:
            return name, module
    return None


def is_candidate(module: nn.Module) -> bool:
    """A module whose output may be the model's logits: a Linear with 2 or more outputs."""
    return isinstance(module, nn.Linear) and module.out_features >= 2


def returned_logits(output: object) -> list[torch.Tensor]:
    """The tensors of a model's output that may be its logits: a ``logits`` entry (Hugging
    Face's outputs) if it has one, else every floating-point tensor in it."""
    if isinstance(output, Mapping) and output.get("logits") is not None:
        output = output["logits"]
    return floating_tensors(output)
