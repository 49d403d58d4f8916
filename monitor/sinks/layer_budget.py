"""Aggregate-first export of very deep models: depth-group summaries plus the worst layers.

Past ``max_layers`` layers, per-layer series stop scaling with depth: each statistic is
summarised per contiguous depth group (min, median, max and the depth of the max), and
only the ``max_layers`` most offending layers keep their own series, with their true depth.
The full detail of every layer stays in TensorBoard.
"""

from __future__ import annotations

import numpy as np

from ..records.derived import group_update_ratio

#: Statistics of a depth group, in export order; ``argmax`` is the depth of the max.
GROUP_STATS = ("min", "median", "max", "argmax")
#: The extra statistic of the update ratio's groups: the group's own ratio, its updated
#: parameters taken as one set (``derived.group_update_ratio``).
POOLED = "pooled"
#: What makes a layer offending: how far its value is from the model's median, in decades.
SCORED = ("grad_norm", "update_ratio", "activation_variance")


def offending_layers(values: dict[str, np.ndarray], defined: dict[str, np.ndarray],
                     keep: int) -> np.ndarray:
    """Indices (depth order) of the ``keep`` layers farthest from the median in decades.

    A non-finite defined value (NaN, +-Inf) is the worst offence; undefined values (NaN
    meaning "not measured") do not count.
    """
    score = np.zeros(len(next(iter(values.values()))))
    with np.errstate(divide="ignore", invalid="ignore"):
        for name in SCORED:
            x, mask = values[name], defined[name]
            logs = np.log10(np.abs(x))
            finite = mask & np.isfinite(logs)
            if finite.any():
                distance = np.abs(logs - np.median(logs[finite]))
                score = np.fmax(score, np.where(finite, distance, 0.0))
            score[mask & ~np.isfinite(x)] = np.inf
    worst = np.argsort(-score, kind="stable")[:keep]
    return np.sort(worst)


def group_edges(layers: int, groups: int) -> np.ndarray:
    """Boundaries of ``groups`` contiguous depth groups (fewer when there are fewer layers)."""
    return np.unique(np.linspace(0, layers, min(groups, layers) + 1).astype(int))


def group_summaries(x: np.ndarray, defined: np.ndarray, edges: np.ndarray
                    ) -> list[tuple[int, int, dict[str, float]]]:
    """(first depth, last depth, {stat: value}) of each group holding a defined value.

    NaN among the defined values propagates (a NaN layer makes its group's figures NaN, so
    they are seen, never hidden); ``argmax`` then points at the non-finite layer.
    """
    result = []
    for a, b in zip(edges[:-1], edges[1:]):
        depths = np.flatnonzero(defined[a:b]) + a
        if not len(depths):
            continue
        part = x[depths]
        bad = ~np.isfinite(part)
        top = depths[np.argmax(bad)] if bad.any() else depths[np.argmax(part)]
        figures = (np.min(part), np.median(part), np.max(part), top)
        result.append((int(a), int(b) - 1, dict(zip(GROUP_STATS, map(float, figures)))))
    return result


class LayerExport:
    """What is exported of one set of per-layer figures: the layers kept and group summaries.

    ``values`` and ``defined`` cover every layer; ``kept`` indexes the layers that get their
    own series (all of them up to ``max_layers``), ``groups`` summarise every statistic per
    depth group beyond that.
    """

    def __init__(self, layers: tuple[str, ...], values: dict[str, np.ndarray],
                 defined: dict[str, np.ndarray], max_layers: int, depth_groups: int,
                 update_norms: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        self.layers, self.values, self.defined = layers, values, defined
        n = len(layers)
        self.kept = np.arange(n)
        self.groups: dict[str, list[tuple[int, int, dict[str, float]]]] = {}
        if n > max_layers:
            self.kept = offending_layers(values, defined, max_layers)
            edges = group_edges(n, depth_groups)
            self.groups = {name: group_summaries(values[name], defined[name], edges)
                           for name in values}
            if update_norms is not None and "update_ratio" in self.groups:
                pool_update_ratios(self.groups["update_ratio"], defined["update_ratio"],
                                   *update_norms)


def pool_update_ratios(groups: list[tuple[int, int, dict[str, float]]], updated: np.ndarray,
                       update_norm: np.ndarray, updated_weight_norm: np.ndarray) -> None:
    """Adds each update-ratio group's POOLED ratio, over its ``updated`` layers, in place."""
    for first, last, stats in groups:
        depths = np.flatnonzero(updated[first:last + 1]) + first
        stats[POOLED] = group_update_ratio(update_norm[depths], updated_weight_norm[depths])
