"""Field lists: which figures gradwatch exports, and under which metric and TensorBoard names.

Every sink reads its lists here, so the Prometheus exposition, the TensorBoard scalars and
the run record read back from them cannot disagree. A per-layer figure is named like the
Snapshot attribute that holds it: metric ``gradwatch_<name>{layer}``, TensorBoard tag
``gradwatch/<name>/<layer>``. No torch, no numpy: anything may import it.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Prefix of every TensorBoard tag gradwatch writes.
TAG_PREFIX = "gradwatch/"
#: Prefix of every Prometheus metric gradwatch exports.
METRIC_PREFIX = "gradwatch_"


@dataclass(frozen=True)
class LayerField:
    """One per-layer figure of a Snapshot.

    Attributes:
        name: the Snapshot attribute, and the name of its metric and TensorBoard statistic.
        sources: the non-finite sources (``NONFINITE_SOURCES``) whose values make a NaN of
            this figure a real NaN rather than "not measured".
        synchronised: the same on every rank (parameters, gradients, updates), rather than
            each rank's own batch (activations).
    """

    name: str
    sources: tuple[str, ...]
    synchronised: bool

    @property
    def metric(self) -> str:
        return METRIC_PREFIX + self.name

    def tag(self, layer: str) -> str:
        return f"{TAG_PREFIX}{self.name}/{layer}"


_PARAMETER, _GRADIENT, _ACTIVATION = ("parameter",), ("gradient",), ("activation",)
#: Every per-layer figure, parameters' first, then the activations'.
LAYER_FIELDS = (
    LayerField("grad_norm", _GRADIENT, True),
    LayerField("weight_norm", _PARAMETER, True),
    LayerField("update_ratio", _GRADIENT + _PARAMETER, True),
    LayerField("update_grad_cosine", _GRADIENT + _PARAMETER, True),
    LayerField("adam_eps_dominated_ratio", _GRADIENT, True),
    LayerField("activation_mean", _ACTIVATION, False),
    LayerField("activation_variance", _ACTIVATION, False),
    LayerField("activation_saturation_ratio", _ACTIVATION, False),
    LayerField("activation_dead_ratio", _ACTIVATION, False),
    LayerField("activation_max_abs", _ACTIVATION, False),
)
#: Names of the per-layer figures, and of those the same on every rank / each rank's own.
LAYER_GAUGES = tuple(f.name for f in LAYER_FIELDS)
SYNCHRONISED_LAYER_GAUGES = tuple(f.name for f in LAYER_FIELDS if f.synchronised)
ACTIVATION_GAUGES = tuple(f.name for f in LAYER_FIELDS if not f.synchronised)
#: Per-layer figure name -> its LayerField.
BY_NAME = {f.name: f for f in LAYER_FIELDS}
#: Per-attention-module figures (label ``layer``: the module that computed attention).
ATTENTION_GAUGES = ("attention_logit_max", "attention_entropy")
#: Figures of the output logits.
OUTPUT_GAUGES = ("output_logit_logsumexp", "output_logit_max", "output_logit_mean")
#: Pulse figures written as TensorBoard scalars ``gradwatch/<name>`` every step.
PULSE_SCALARS = ("loss", "global_grad_norm", "clipped_grad_norm", "loss_scale")


def tag(name: str) -> str:
    """The TensorBoard tag of a figure without a layer, e.g. ``gradwatch/loss``."""
    return TAG_PREFIX + name
