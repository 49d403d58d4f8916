"""Snapshot packing: the host copy of a sampled step's figures -> a Snapshot.

Pure numpy (no torch): it reads the arrays of the step's one transfer by name (see
``transfer.TransferLayout``) and the host-side facts of the step (``SampleFacts``), and is
tested without training. The arrays, per layer in registration order:

- ``layer_grad_norm``, ``layer_weight_norm`` [n_layers]: L2 norms of each layer's gradients
  and of its parameters before the optimizer step; ``layer_update_norm`` of its update
  W_before - W_after, ``layer_updated_weight_norm`` of its updated parameters before it;
- ``layer_grad_nonfinite``, ``layer_weight_nonfinite`` [n_layers, NONFINITE_KINDS];
- ``layer_output``, ``activation`` [n_layers, ActivationField]: the records of the layer's
  own outputs and of the activation module after it; ``world_layer_output`` and
  ``world_activation`` (optional): the same over every rank;
- ``record_nonfinite`` [records]: non-finite values of each output, in call order;
- ``layer_update_grad_cosine``, ``layer_adam_eps_dominated_ratio`` [n_layers].
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .columns import (
    ACTIVATION_NONFINITE,
    UPDATE_STATISTICS,
    VIEW_RECORDS,
    ActivationField,
    TransferPart,
)
from .snapshot import NONFINITE_SOURCES, Pulse, Snapshot


@dataclass(frozen=True)
class SampleFacts:
    """What the host knows of a sampled step (per layer: registration order).

    Attributes:
        run, rank, step, time: where and when.
        layers: the layer names in depth order; ``depth_order`` the registration position
            of each.
        has_grad, updated: per layer, whether a gradient was seen, an optimizer stepped it.
        has_activation, saturates: per layer, whether an activation module followed it,
            and one whose output saturates (sigmoid- or tanh-like).
        record_modules: the module of each activation record, in call order.
        pulses, overhead_seconds: as in the Snapshot.
    """

    run: str
    rank: int
    step: int
    time: float
    layers: tuple[str, ...]
    depth_order: tuple[int, ...]
    has_grad: np.ndarray
    updated: np.ndarray
    has_activation: np.ndarray
    saturates: np.ndarray
    record_modules: tuple[str, ...]
    pulses: tuple[Pulse, ...]
    overhead_seconds: float


def pack_snapshot(host: Mapping[TransferPart, np.ndarray], facts: SampleFacts,
                  extra: Mapping[str, Any] | None = None) -> Snapshot:
    """The Snapshot of a sampled step (with the world's view when ``host`` has one);
    ``extra``: further Snapshot fields, as they are."""
    world = None
    if TransferPart.WORLD_ACTIVATION in host:
        world = Snapshot(**_layer_fields(host, facts, view="world"), rank=-1)
    updates: dict[str, Any] = {
        name: _ordered(np.where(facts.updated, host[part], np.nan), facts)
        for name, part in UPDATE_STATISTICS.items()}
    return Snapshot(**_layer_fields(host, facts, view="rank"), rank=facts.rank, world=world,
                    **updates, **(extra or {}))


def _layer_fields(host: Mapping[TransferPart, np.ndarray], facts: SampleFacts,
                  view: str) -> dict[str, Any]:
    """The Snapshot fields of one view of the activations (``VIEW_RECORDS``: this rank's,
    or the world's)."""
    own_part, activation_part = VIEW_RECORDS[view]
    own = host[own_part]
    weights = host[TransferPart.LAYER_UPDATED_WEIGHT_NORM]
    with np.errstate(divide="ignore", invalid="ignore"):
        # a ratio to a zero weight (LoRA's lora_B at its first step) is undefined, not +Inf
        update_ratio = np.where(facts.updated & (weights != 0),
                                host[TransferPart.LAYER_UPDATE_NORM] / weights, np.nan)
    nonfinite = np.stack([host[TransferPart.LAYER_GRAD_NONFINITE], own[:, ACTIVATION_NONFINITE],
                          host[TransferPart.LAYER_WEIGHT_NONFINITE]])
    assert nonfinite.shape[0] == len(NONFINITE_SOURCES)
    order = list(facts.depth_order)
    return dict(
        run=facts.run,
        step=facts.step,
        time=facts.time,
        layers=facts.layers,
        grad_norm=_ordered(np.where(facts.has_grad, host[TransferPart.LAYER_GRAD_NORM], np.nan), facts),
        weight_norm=_ordered(host[TransferPart.LAYER_WEIGHT_NORM], facts),
        update_ratio=_ordered(update_ratio, facts),
        update_norm=_ordered(np.where(facts.updated, host[TransferPart.LAYER_UPDATE_NORM], np.nan), facts),
        updated_weight_norm=_ordered(
            np.where(facts.updated, host[TransferPart.LAYER_UPDATED_WEIGHT_NORM], np.nan), facts),
        **_activation_fields(own, host[activation_part], facts),
        layer_output_max_abs=_ordered(_max_abs(own), facts),
        nonfinite=np.nan_to_num(nonfinite[:, order] if order else nonfinite).astype(np.int64),
        nonfinite_origin=_nonfinite_origin(host[TransferPart.RECORD_NONFINITE], facts.record_modules),
        pulses=facts.pulses,
        overhead_seconds=facts.overhead_seconds,
    )


def _activation_fields(own: np.ndarray, act: np.ndarray,
                       facts: SampleFacts) -> dict[str, Any]:
    """A layer's activation: that of the activation module after it, else its own output."""
    chosen = np.where(facts.has_activation[:, None], act, own)
    field = ActivationField
    count = chosen[:, field.COUNT]
    with np.errstate(divide="ignore", invalid="ignore"):
        variance = chosen[:, field.M2] / count
        dead = chosen[:, field.ZEROS] / count
        saturation = np.where(facts.saturates, chosen[:, field.SATURATED] / count, np.nan)
    return {
        "activation_mean": _ordered(chosen[:, field.MEAN], facts),
        "activation_variance": _ordered(variance, facts),
        "activation_saturation_ratio": _ordered(saturation, facts),
        "activation_dead_ratio": _ordered(dead, facts),
        "activation_max_abs": _ordered(_max_abs(chosen), facts),
    }


def _max_abs(records: np.ndarray) -> np.ndarray:
    largest: np.ndarray = np.maximum(np.abs(records[:, ActivationField.MIN]),
                                     np.abs(records[:, ActivationField.MAX]))
    return largest


def _nonfinite_origin(record_nonfinite: np.ndarray, record_modules: tuple[str, ...]) -> str:
    """The module of the first record, in call order, that held a non-finite value."""
    for count, module in zip(record_nonfinite, record_modules):
        if count > 0:
            return module
    return ""


def _ordered(values: np.ndarray, facts: SampleFacts) -> np.ndarray:
    """Per-layer values in depth order, as float64."""
    order = list(facts.depth_order)
    return np.asarray(values, dtype=np.float64)[order] if order else np.zeros(0)
