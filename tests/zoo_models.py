"""Tiny Hugging Face models for the zoo (tests/test_zoo.py): every architecture of
transformers' causal-LM, seq2seq, masked-LM and image-classification auto-mappings, built
from its default config shrunk to a few thousand parameters (never a download), with a
batch it trains on."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

#: The tiny sizes, applied to whichever of these a config has (and to its sub-configs).
TINY = {
    "vocab_size": 96, "hidden_size": 32, "n_embd": 32, "d_model": 32, "embed_dim": 32,
    "dim": 32, "n_embed": 32, "word_embed_proj_dim": 32, "embedding_size": 32,
    "num_hidden_layers": 2, "n_layer": 2, "num_layers": 2, "n_layers": 2,
    "encoder_layers": 1, "decoder_layers": 1, "num_decoder_layers": 1,
    "num_encoder_layers": 1,
    "num_attention_heads": 2, "n_head": 2, "n_heads": 2, "num_heads": 2,
    "encoder_attention_heads": 2, "decoder_attention_heads": 2, "num_key_value_heads": 1,
    "head_dim": 16, "kv_channels": 16, "d_kv": 16,
    "intermediate_size": 64, "n_inner": 64, "d_ff": 64, "ffn_dim": 64, "hidden_dim": 64,
    "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 32,
    "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4, "num_experts_per_tok": 2,
    "max_position_embeddings": 64, "n_positions": 64, "n_ctx": 64,
    "image_size": 32, "patch_size": 8, "num_channels": 3, "num_labels": 3,
}
SEQ, BATCH = 8, 2
MAPPINGS = ("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES",
            "MODEL_FOR_MASKED_LM_MAPPING_NAMES", "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES")


@dataclass(frozen=True)
class Architecture:
    """One entry of an auto-mapping."""

    model_type: str
    class_name: str
    kind: str  # causal, seq2seq, masked, image

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.class_name}"


def architectures() -> list[Architecture]:
    """Every entry of the four mappings, in their order, each class once."""
    from transformers.models.auto import modeling_auto

    seen, found = set(), []
    for mapping, kind in zip(MAPPINGS, ("causal", "seq2seq", "masked", "image")):
        for model_type, class_name in getattr(modeling_auto, mapping).items():
            if isinstance(class_name, str) and class_name not in seen:
                seen.add(class_name)
                found.append(Architecture(model_type, class_name, kind))
    return found


#: Per-stage sizes of vision models (ResNet, ConvNeXt, PVT...): each stage's, when a config
#: has them as a list.
TINY_STAGES = {"hidden_sizes": 16, "depths": 1, "embed_dims": 16, "num_heads": 1,
               "num_attention_heads": 1, "num_encoder_blocks": 1}
#: Special tokens inside the tiny vocabulary (a default one beyond it, or none at all where
#: a seq2seq model needs its decoder's start token).
TOKEN_IDS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
             "decoder_start_token_id": 0}


def shrink(config) -> None:
    """The tiny sizes on ``config`` and its sub-configs."""
    for name, value in TINY.items():
        if hasattr(config, name) and isinstance(getattr(config, name), int):
            setattr(config, name, value)
    for name, value in TINY_STAGES.items():
        stages = getattr(config, name, None)
        if isinstance(stages, list) and all(isinstance(v, int) for v in stages):
            setattr(config, name, [value] * len(stages))
    for name, value in TOKEN_IDS.items():
        current = getattr(config, name, None)
        if current is None or (isinstance(current, int) and current >= TINY["vocab_size"]):
            setattr(config, name, value)
    for name in list(vars(config)):
        sub = getattr(config, name)
        if hasattr(sub, "to_dict") and hasattr(sub, "model_type") and sub is not config:
            shrink(sub)


def build(arch: Architecture, seed: int = 0, **overrides) -> torch.nn.Module:
    """The architecture from its shrunk default config, eager attention unless overridden,
    no dropout (runs compared step by step must draw the same)."""
    import transformers

    config = transformers.AutoConfig.for_model(arch.model_type)
    shrink(config)
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout",
                 "attention_dropout", "activation_dropout", "resid_pdrop", "embd_pdrop",
                 "attn_pdrop", "hidden_dropout", "classifier_dropout", "dropout_rate",
                 "layerdrop", "encoder_layerdrop", "decoder_layerdrop", "router_jitter_noise",
                 "input_jitter_noise", "drop_path_rate", "residual_dropout"):
        if isinstance(getattr(config, name, None), float):
            setattr(config, name, 0.0)
    for name, value in overrides.items():
        setattr(config, name, value)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(transformers, arch.class_name)(config)


def batches(arch: Architecture, model: torch.nn.Module, steps: int) -> list[dict]:
    """``steps`` batches of the model's kind, with labels (the model computes its loss)."""
    generator = torch.Generator().manual_seed(1)
    config = model.config
    if arch.kind == "image":
        size = getattr(config, "image_size", 32)
        size = size[0] if isinstance(size, (list, tuple)) else size
        channels = getattr(config, "num_channels", 3)
        return [{"pixel_values": torch.randn(BATCH, channels, size, size, generator=generator),
                 "labels": torch.randint(3, (BATCH,), generator=generator)}
                for _ in range(steps)]
    vocab = min(getattr(config, "vocab_size", 96) or 96, 96)
    made = []
    for _ in range(steps):
        ids = torch.randint(4, vocab, (BATCH, SEQ), generator=generator)
        made.append({"input_ids": ids, "labels": ids.clone()})
    return made


def loss_of(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    return model(**batch).loss
