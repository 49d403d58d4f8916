"""The named columns of the Monitor's device tables: every field is read by its name.

No torch here: the host-side packing reads the same layouts as the device side writes.
"""

from __future__ import annotations

from enum import Enum, IntEnum


class RingColumn(IntEnum):
    """Columns of one row of the per-step ring (one row per optimizer step)."""

    LOSS = 0
    GRAD_SQ = 1  # squared global gradient norm of the replicated parameters
    SHARDED_SQ = 2  # of the sharded (FSDP2) parameters' local shards
    CLIP_SQ = 3  # squared global norm after clipping
    SCALE = 4  # the AMP GradScaler's scale
    LOCAL_NONFINITE = 5  # local gradient buckets non-finite before the DDP all-reduce
    SKIPPED = 6  # 1 where skip-on-spike undid the step's update


RING_COLUMNS = len(RingColumn)


class ActivationField(IntEnum):
    """Fields of an activation record: the statistics of the outputs of one module."""

    COUNT = 0
    MEAN = 1
    M2 = 2  # sum of squared deviations from the mean
    MIN = 3
    MAX = 4
    ZEROS = 5  # values exactly 0
    SATURATED = 6  # values in the flat region of a sigmoid/tanh-like activation
    NAN = 7
    POSINF = 8
    NEGINF = 9


ACTIVATION_FIELD_COUNT = len(ActivationField)
#: The non-finite counts of a record (NaN, +Inf, -Inf: the order of NONFINITE_KINDS).
ACTIVATION_NONFINITE = slice(ActivationField.NAN, ActivationField.NEGINF + 1)
#: Fields that combine by summing.
ACTIVATION_SUMMED = slice(ActivationField.ZEROS, ACTIVATION_FIELD_COUNT)


class RawActivationField(IntEnum):
    """Fields of a raw activation record, made per output tensor during the forward: no
    count yet, and the NON-zero values counted (both are completed once per step)."""

    MEAN = 0
    M2 = 1
    MIN = 2
    MAX = 3
    NONZERO = 4
    SATURATED = 5
    NAN = 6
    POSINF = 7
    NEGINF = 8


class ParamRow(IntEnum):
    """Rows of the per-parameter table of a sampled step (one column per parameter)."""

    GRAD_SQ = 0  # squared norm of the gradient (before clipping)
    WEIGHT_SQ = 1  # of the weight before the optimizer step
    UPDATE_SQ = 2  # of the update W_before - W_after
    UPDATED_WEIGHT_SQ = 3  # of the weight before the step, of updated parameters only
    GRAD_NAN = 4
    GRAD_POSINF = 5
    GRAD_NEGINF = 6
    WEIGHT_NAN = 7
    WEIGHT_POSINF = 8
    WEIGHT_NEGINF = 9


PARAM_ROWS = len(ParamRow)
PARAM_SQUARED_NORMS = slice(ParamRow.GRAD_SQ, ParamRow.UPDATED_WEIGHT_SQ + 1)
PARAM_GRAD_NONFINITE = slice(ParamRow.GRAD_NAN, ParamRow.GRAD_NEGINF + 1)
PARAM_WEIGHT_NONFINITE = slice(ParamRow.WEIGHT_NAN, ParamRow.WEIGHT_NEGINF + 1)



class TransferPart(str, Enum):
    """The named parts of a sampled step's ONE device-to-host copy
    (``probes.transfer.TransferLayout``): the sampled step and the parameter table add them,
    the packing reads them; all per layer (index order) unless said."""

    RING_ROWS = "ring_rows"  # the ring's unread rows [rows, RingColumn]
    LAYER_OUTPUT = "layer_output"  # the record of the layer's own outputs [.., ActivationField]
    ACTIVATION = "activation"  # the record of its activation's outputs
    WORLD_LAYER_OUTPUT = "world_layer_output"  # the two above combined over the ranks
    WORLD_ACTIVATION = "world_activation"
    RECORD_NONFINITE = "record_nonfinite"  # per recorded module: its outputs' NaN/Inf
    ATTENTION = "attention"  # the attention probe's figures (its own layout)
    LAYER_GRAD_NORM = "layer_grad_norm"
    LAYER_WEIGHT_NORM = "layer_weight_norm"
    LAYER_UPDATE_NORM = "layer_update_norm"
    LAYER_UPDATED_WEIGHT_NORM = "layer_updated_weight_norm"
    LAYER_GRAD_NONFINITE = "layer_grad_nonfinite"  # [n_layers, NaN/+Inf/-Inf]
    LAYER_WEIGHT_NONFINITE = "layer_weight_nonfinite"
    LAYER_UPDATE_GRAD_COSINE = "layer_update_grad_cosine"
    LAYER_ADAM_EPS_DOMINATED_RATIO = "layer_adam_eps_dominated_ratio"


#: The activation records of each view (by Snapshot: this rank's, the world's): own outputs,
#: activation outputs.
VIEW_RECORDS = {
    "rank": (TransferPart.LAYER_OUTPUT, TransferPart.ACTIVATION),
    "world": (TransferPart.WORLD_LAYER_OUTPUT, TransferPart.WORLD_ACTIVATION),
}
#: The update statistics (``probes.update_stats.per_layer``), by their Snapshot field.
UPDATE_STATISTICS = {
    "update_grad_cosine": TransferPart.LAYER_UPDATE_GRAD_COSINE,
    "adam_eps_dominated_ratio": TransferPart.LAYER_ADAM_EPS_DOMINATED_RATIO,
}
