"""A Pulse's and a Snapshot's figures as named scalars: what TensorBoard and the Trainer's
loggers write, read in one place so that they cannot disagree.

A figure's name is a tuple of parts, e.g. ``("grad_norm", "net.0")``; each writer joins
them with its own separator behind the ``gradwatch`` prefix (TensorBoard:
``gradwatch/grad_norm/net.0``; a Lightning logger: its ``group_separator``).
"""

from __future__ import annotations

import math

from .fields import ATTENTION_GAUGES, LAYER_FIELDS, OUTPUT_GAUGES, PULSE_SCALARS
from .snapshot import NONFINITE_SOURCES, Pulse, Snapshot

#: a figure's name, as its parts
Name = tuple[str, ...]


def pulse_figures(pulse: Pulse) -> dict[Name, float]:
    """Every step's figures that were measured (None is "not measured"; NaN and Inf are
    real values), and each param group's learning rate."""
    figures: dict[Name, float] = {(name,): float(value) for name in PULSE_SCALARS
               if (value := getattr(pulse, name)) is not None}
    for optimizer, groups in enumerate(pulse.learning_rates):
        for group, lr in enumerate(groups):
            if not math.isnan(lr):
                figures[("learning_rate", str(optimizer), str(group))] = lr
    return figures


def snapshot_figures(snapshot: Snapshot) -> dict[Name, float]:
    """A sampled step's figures: per layer (NaN, "not defined at this step", left out),
    non-finite counts per source, the monitor's overhead, attention and output logits."""
    figures: dict[Name, float] = {(field.name, layer): float(value) for field in LAYER_FIELDS
               for layer, value in zip(snapshot.layers, getattr(snapshot, field.name))
               if not math.isnan(value)}
    nonfinite = snapshot.nonfinite.sum(axis=(1, 2))
    for source, count in zip(NONFINITE_SOURCES, nonfinite):
        figures[("nonfinite", source)] = float(count)
    figures[("overhead_seconds",)] = snapshot.overhead_seconds
    for name in ATTENTION_GAUGES:  # per module that computed attention
        figures.update({(name, module): float(value) for module, value in
                        zip(snapshot.attention_layers, getattr(snapshot, name))})
    figures.update({(name,): getattr(snapshot, name) for name in OUTPUT_GAUGES
                    if not math.isnan(getattr(snapshot, name))})
    return figures
