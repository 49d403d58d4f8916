"""Prometheus exposition: the latest figures, rendered at scrape time.

The training thread never touches this module: Pulses, Snapshots and Alerts arrive on the
export thread, which only updates a few numbers under a lock; the text is rendered by the
scrape itself (``collect``). A spike that lasts one step between two scrapes stays visible
in the ``gradwatch_step_global_grad_norm`` histogram, which observes every step's norm.

At fleet scale: what is the same on every rank is exported once (rank 0, ``rank="all"``),
deep models are exported aggregate-first within ``max_layers`` (monitor/sinks/layer_budget.py),
and non-finite values are exported as such (NaN, +Inf and -Inf are valid exposition).
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from ..records.fields import (
    ACTIVATION_GAUGES,
    ATTENTION_GAUGES,
    BY_NAME,
    LAYER_GAUGES,
    OUTPUT_GAUGES,
    SYNCHRONISED_LAYER_GAUGES,
)
from ..records.loss_level import LOSS_GAUGES, LossFigures
from ..records.metrics import spec
from ..records.regimes import HEALTHY, REGIMES
from ..records.snapshot import NONFINITE_KINDS, NONFINITE_SOURCES, Pulse, Snapshot
from ..records.thresholds import Thresholds
from ..records.validation import check_int, check_number
from .endpoint import EndpointSecurity, linger, serve, stop
from .layer_budget import LayerExport

#: Non-finite sources that are the same on every rank (after the all-reduce).
SYNCHRONISED_SOURCES = ("gradient", "parameter")
#: Per-step gauges of each rank, and those the same on every rank.
RANK_GAUGES = ("step", "last_step_timestamp_seconds", "step_seconds", "loss")
SYNCHRONISED_GAUGES = ("global_grad_norm", "clipped_grad_norm", "amp_loss_scale")
#: Under DDP, layers named in a rank's own (activation) non-finite counts; the rest are summed
#: under the layer label DEEPER_LAYERS, so a NaN on 64 ranks adds 64 x (this + 1) series.
RANK_NONFINITE_LAYERS = 8
DEEPER_LAYERS = "(deeper layers)"
#: Longest wait at a clean end for the scrape that reads gradwatch_run_finished.
LINGER_SECONDS = 35.0
_FAMILIES = {"gauge": GaugeMetricFamily, "counter": CounterMetricFamily,
             "histogram": HistogramMetricFamily}
#: The ``rank`` label value of what is the same on every rank (or over all ranks' batches),
#: exported by rank 0 alone.
WORLD_RANK = "all"


def histogram_buckets(thresholds: Thresholds) -> list[float]:
    """Upper bounds of the global-norm histogram: decades 1e-6..1e6 plus the explosion norm."""
    return sorted({10.0 ** e for e in range(-6, 7)} | {float(thresholds.explosion_norm)})


class NormHistogram:
    """Every step's global gradient norm in the buckets of ``histogram_buckets``, so that a
    one-step spike between two scrapes is still counted. A non-finite norm is above every
    bound (only in the +Inf bucket) and kept out of the sum."""

    def __init__(self, thresholds: Thresholds) -> None:
        self.bounds = histogram_buckets(thresholds)
        self.sum = 0.0
        self._counts = [0] * (len(self.bounds) + 1)

    def observe(self, norm: float) -> None:
        if math.isfinite(norm):
            self._counts[int(np.searchsorted(self.bounds, norm))] += 1
            self.sum += norm
        else:
            self._counts[-1] += 1

    def buckets(self) -> list[tuple[str, int]]:
        """(le, cumulative count) of every bucket, +Inf last."""
        return [(_le(bound), count) for bound, count in
                zip([*self.bounds, math.inf], itertools.accumulate(self._counts))]


class PrometheusSink:
    """Sink and collector of the ``gradwatch_*`` metrics, in its own registry.

    Under DDP or FSDP (``rank`` given) what is the same on every rank is exported once, by
    rank 0, labelled ``rank="all"``: per-layer gradient, weight and update figures, the
    activations over every rank's batch, the global norm, learning rates and AMP figures.
    Every rank exports what differs: step, step time, loss, its own non-finite activations
    and loss, whether a NaN came from its own gradients, its alerts and regime.

    Args:
        run: the ``run`` label.
        rank: the ``rank`` label, or None to leave it out (world size 1).
        max_layers: at most this many ``layer`` label values; deeper models export the
            ``max_layers`` most offending layers (farthest from the model's median, non-finite
            first) and ``gradwatch_layer_group`` summaries of ``depth_groups`` depth groups.
        thresholds: for the histogram's bucket at ``explosion_norm`` and the loss
            detectors' figures (records.loss_level), judged on every Pulse.
        rank_activations: with several ranks, every rank also exports the activations of
            its own batch (``rank="<rank>"``), for imbalanced data.
        depth_groups: number of depth groups summarised beyond ``max_layers``.
        linger: after a clean end, the most seconds to keep serving for the next scrape,
            the one that reads ``gradwatch_run_finished 1`` (0: stop at once).

    Raises:
        ValueError: for ``max_layers`` or ``depth_groups`` below 1.
    """

    def __init__(self, run: str, rank: int | None = None, max_layers: int = 512,
                 thresholds: Thresholds | None = None, rank_activations: bool = False,
                 depth_groups: int = 16, linger: float = LINGER_SECONDS) -> None:
        check_int("max_exported_layers", max_layers, low=1)
        check_number("prometheus_linger", linger, low=0.0)
        check_int("depth_groups", depth_groups, low=1)
        self._base = {"run": run} | ({"rank": str(rank)} if rank is not None else {})
        self._multi = rank is not None
        # the figures every rank has: exported by rank 0 (or the only process) alone
        self._shared = None if rank not in (None, 0) else \
            {"run": run} | ({"rank": WORLD_RANK} if self._multi else {})
        self.max_layers, self.depth_groups = max_layers, depth_groups
        self.rank_activations = rank_activations and self._multi
        self.registry = CollectorRegistry(auto_describe=False)
        self.count_dropped: Callable[[], int] = lambda: 0
        self._lock = threading.Lock()
        self._scraped = threading.Condition(self._lock)
        self._norms = NormHistogram(thresholds or Thresholds())
        self._loss = LossFigures(thresholds or Thresholds())  # the loss detectors' own
        self._latest: dict[str, float] = {}
        self._learning_rates: tuple[tuple[float, ...], ...] = ()
        self._snapshot: Snapshot | None = None
        self._export: LayerExport | None = None
        self._local_export: LayerExport | None = None
        self._nonfinite: Counter[tuple[bool, str, str, str]] = Counter()
        self._nonfinite_steps: Counter[str] = Counter(
            dict.fromkeys(("loss", "gradient") + (("local_gradient",) if self._multi else ()),
                          0))
        self._alerts: Counter[str] = Counter()
        self._regime = HEALTHY
        # steps counted by what the Pulse says: clipping engaged, AMP skipped, update undone
        self._steps: Counter[str] = Counter()
        self._snapshots = 0
        self._rank_layers: set[str] = set()
        self._streak_free = True  # the latest global norm was finite
        self._finished = False
        self._finish_seen = False
        self._scrape_times: list[float] = []
        self._server = None
        self.linger = linger
        self.registry.register(self)

    # ------------------------------------------------------------------ serving

    def serve(self, port: int, addr: str = "127.0.0.1",
              security: EndpointSecurity | None = None) -> int:
        """Serve /metrics on ``addr:port`` (0: any free port) from a daemon thread, with
        optional TLS and basic auth. Returns the bound port.

        Raises OSError when the port cannot be bound (or a certificate cannot be read).
        """
        self._server = serve(self.registry, port, addr, security)
        return self._server.server_address[1]

    def finish(self) -> None:
        """Mark a clean end: ``gradwatch_run_finished`` is 1 from now on, so that the
        scrape or push that follows tells Prometheus not to page for this run."""
        with self._lock:
            self._finished = True

    def close(self) -> None:
        """Stop serving; after ``finish``, once the next scrape read it (``linger``: the
        interpreter's exit waits for it, and says so), at once when nothing scraped twice."""
        server, self._server = self._server, None
        with self._scraped:
            due = next_scrape_in(self._scrape_times) if self._finished else 0.0
        if server is None:
            return
        if self._finish_seen or min(due, self.linger) <= 0:
            stop(server)
        else:
            linger(server, lambda: self._finish_seen, self._scraped, min(due, self.linger))

    # ------------------------------------------------------------------ sink

    def on_pulse(self, pulse: Pulse) -> None:
        norm, loss = pulse.global_grad_norm, pulse.loss
        if pulse.amp_skipped:
            norm = None  # overflowed gradients the GradScaler skipped: its business, no alarm
        with self._lock:
            previous = self._latest.get("last_step_timestamp_seconds")
            if previous is not None:
                self._latest["step_seconds"] = pulse.time - previous
            # a step without backward (None) keeps the last value rather than a gap
            for name, value in (
                ("step", pulse.step),
                ("last_step_timestamp_seconds", pulse.time),
                ("loss", loss),
                ("global_grad_norm", norm),
                ("clipped_grad_norm", pulse.clipped_grad_norm),
                ("amp_loss_scale", pulse.loss_scale),
            ):
                if value is not None:
                    self._latest[name] = value
            if pulse.learning_rates:
                self._learning_rates = pulse.learning_rates
            self._loss.update(pulse)
            if loss is not None and not math.isfinite(loss):
                self._nonfinite_steps["loss"] += 1
                self._nonfinite[(False, "loss", "", _kind(loss))] += 1
            # where a streak of non-finite steps began (after it, every rank's own gradients
            # come from the same non-finite weights)
            if pulse.local_gradients_finite is False and self._streak_free:
                self._nonfinite_steps["local_gradient"] += 1
            if norm is not None:
                self._norms.observe(norm)
                self._streak_free = math.isfinite(norm)
                self._nonfinite_steps["gradient"] += not self._streak_free
            self._steps.update(grad_clip_engaged=bool(pulse.grad_clip_engaged),
                               amp_skipped_steps=pulse.scaler_skipped,
                               amp_overflow_steps=pulse.scaler_overflowed,
                               skipped_updates=bool(pulse.update_skipped))

    def on_snapshot(self, snapshot: Snapshot) -> None:
        export = local = None
        if self._shared is not None:
            values, defined = _figures(snapshot, SYNCHRONISED_LAYER_GAUGES)
            # activations over every rank's batch: the world view (regular samples only)
            activations = snapshot.world if self._multi else snapshot
            if activations is not None:
                more = _figures(activations, ACTIVATION_GAUGES)
            elif self._export is not None and self._export.layers == snapshot.layers:
                more = ({k: self._export.values[k] for k in ACTIVATION_GAUGES},
                        {k: self._export.defined[k] for k in ACTIVATION_GAUGES})
            else:
                more = ({}, {})
            export = LayerExport(snapshot.layers, values | more[0], defined | more[1],
                                 self.max_layers, self.depth_groups, _update_norms(snapshot))
        if self.rank_activations:
            local = LayerExport(snapshot.layers, *_figures(snapshot, ACTIVATION_GAUGES),
                                self.max_layers, self.depth_groups)
        with self._lock:
            self._snapshot = snapshot
            self._export, self._local_export = export, local
            self._snapshots += 1
            # [source, layer, kind], as NonFiniteValues counts them (an AMP-skipped step's
            # gradients left out)
            counts = snapshot.judged_nonfinite().astype(np.int64)
            for s, depth, k in zip(*np.nonzero(counts)):
                source = NONFINITE_SOURCES[s]
                shared = source in SYNCHRONISED_SOURCES
                if shared and self._shared is None:
                    continue  # rank 0 exports it: the same on every rank
                name = snapshot.layers[depth]
                layer = name if shared or not self._multi else _rank_layer(self._rank_layers,
                                                                           name)
                self._nonfinite[(shared, source, layer, NONFINITE_KINDS[k])] \
                    += int(counts[s, depth, k])

    def on_alert(self, alert) -> None:
        with self._lock:
            if alert.status == "firing":
                self._alerts[alert.name] += 1
            if alert.run_regime is not None:  # the engine's, once this event applied
                self._regime = alert.run_regime

    # ------------------------------------------------------------------ collector

    def collect(self) -> Iterator[Metric]:
        with self._scraped:
            yield from self._run_metrics()
            yield from self._layer_metrics()
            yield from self._counters()
            self._scrape_times = [*self._scrape_times[-1:], time.monotonic()]
            if self._finished:
                self._finish_seen = True
                self._scraped.notify_all()

    def _family(self, name: str):
        metric = spec(name)
        return _FAMILIES[metric.kind](metric.name, metric.help,
                                      labels=[*self._base, *metric.labels])

    def _gauges(self, names: tuple[str, ...], labels: dict[str, str] | None) -> Iterator[Metric]:
        """The latest value of each per-step gauge (those never seen yet have no sample)."""
        for name in names:
            family = self._family(name)
            if labels is not None and name in self._latest:
                family.add_metric(list(labels.values()), self._latest[name])
            yield family

    def _run_metrics(self) -> Iterator[Metric]:
        base, shared = list(self._base.values()), self._shared
        yield from self._gauges(RANK_GAUGES, self._base)
        yield from _loss_metrics(self._loss, self._family, base)
        finished = self._family("run_finished")
        finished.add_metric(base, float(self._finished))
        yield finished
        yield from self._gauges(SYNCHRONISED_GAUGES, shared)
        if shared is None:
            return
        shared = list(shared.values())
        lr = self._family("learning_rate")
        for optimizer, groups in enumerate(self._learning_rates):
            for group, value in enumerate(groups):
                lr.add_metric([*shared, str(optimizer), str(group)], value)
        yield lr
        histogram = self._family("step_global_grad_norm")
        histogram.add_metric(shared, self._norms.buckets(), self._norms.sum)
        yield histogram

    def _layer_metrics(self) -> Iterator[Metric]:
        exports = [(list(labels.values()), export) for labels, export in (
            (self._shared, self._export), (self._base, self._local_export))
            if labels is not None and export is not None]
        count, depth = self._family("layers"), self._family("layer_depth")
        if self._shared is not None:
            # the depth order is the same on every rank: rank 0 says it once
            export = self._export
            count.add_metric(list(self._shared.values()), len(export.layers) if export else 0)
            for position in export.kept if export else ():
                depth.add_metric([*self._shared.values(), export.layers[position]], position)
        yield count
        if not exports:
            return
        yield depth
        group = self._family("layer_group")
        for name in LAYER_GAUGES:
            family = self._family(name)
            for labels, export in exports:
                if name not in export.values:
                    continue
                values, defined = export.values[name], export.defined[name]
                for position in export.kept:
                    if defined[position]:
                        family.add_metric([*labels, export.layers[position]], values[position])
                for first, last, stats in export.groups.get(name, ()):
                    for stat, value in stats.items():
                        group.add_metric([*labels, name, f"{first}-{last}", stat], value)
            yield family
        yield group
        if self._snapshot is not None and (self._shared is not None or self.rank_activations):
            # of this rank's batch: rank 0 exports them (every rank with rank_activations)
            yield from _leading_metrics(self._snapshot, self._family,
                                        list(self._base.values()))

    def _counters(self) -> Iterator[Metric]:
        base = list(self._base.values())
        regime = self._family("regime")
        for name in REGIMES:
            regime.add_metric([*base, name], float(name == self._regime))
        yield regime
        nonfinite = self._family("nonfinite")
        shared = list((self._shared or {}).values())
        for (is_shared, source, layer, kind), value in sorted(self._nonfinite.items()):
            nonfinite.add_metric([*(shared if is_shared else base), source, layer, kind], value)
        yield nonfinite
        steps = self._family("nonfinite_steps")
        for source, value in sorted(self._nonfinite_steps.items()):
            steps.add_metric([*base, source], value)
        yield steps
        alerts = self._family("alerts")
        for name, value in sorted(self._alerts.items()):
            alerts.add_metric([*base, name], value)
        yield alerts
        overhead = self._snapshot.overhead_seconds if self._snapshot else 0.0
        for name, value, labels in (
            *((name, self._steps[name], self._shared) for name in SHARED_STEP_COUNTS),
            ("skipped_updates", self._steps["skipped_updates"], self._base),
            ("overhead_seconds", overhead, self._base),
            ("snapshots", self._snapshots, self._base),
            ("export_dropped", self.count_dropped(), self._base),
        ):
            family = self._family(name)
            if labels is not None:
                family.add_metric(list(labels.values()), value)
            yield family


#: Counters of steps, the same on every rank (rank 0 exports them).
SHARED_STEP_COUNTS = ("grad_clip_engaged", "amp_skipped_steps", "amp_overflow_steps")


def _rank_layer(seen: set[str], layer: str) -> str:
    """The ``layer`` label of a rank's own non-finite count (under several ranks): past the
    first RANK_NONFINITE_LAYERS layers ``seen`` (the first in depth order are where a NaN
    appears; the deeper ones inherit it), the rest of a rank's counts go to DEEPER_LAYERS."""
    if layer in seen:
        return layer
    if len(seen) < RANK_NONFINITE_LAYERS:
        seen.add(layer)
        return layer
    return DEEPER_LAYERS


def _loss_metrics(figures: LossFigures, family_of: Callable[[str], Metric],
                  base: list[str]) -> Iterator[Metric]:
    """The loss detectors' figures (records.loss_level), fed every step: their references,
    exact at the scrape (none while the loss is not judged), and the spikes by kind. The
    rules judge these, so they judge over steps as the trainer does, at any pace."""
    gauges = figures.gauges()
    for name in LOSS_GAUGES:
        family = family_of(name)
        if name in gauges:
            family.add_metric(base, gauges[name])
        yield family
    spikes = family_of("loss_spike_steps")
    for kind, value in figures.spike_steps.items():
        spikes.add_metric([*base, kind], value)
    yield spikes


def _leading_metrics(snapshot: Snapshot, family_of: Callable[[str], Metric],
                     base: list[str]) -> Iterator[Metric]:
    """The attention and output-logit gauges of ``snapshot``."""
    for name in ATTENTION_GAUGES:
        family = family_of(name)
        for layer, value in zip(snapshot.attention_layers, getattr(snapshot, name)):
            family.add_metric([*base, layer], value)
        yield family
    for name in OUTPUT_GAUGES:
        family = family_of(name)
        value = getattr(snapshot, name)
        if not math.isnan(value):
            family.add_metric(base, value)
        yield family


def _figures(snapshot: Snapshot, names: tuple[str, ...]
             ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Values of ``names`` and where each is defined: a NaN is exported only when the
    layer's source held non-finite values (a real NaN), never for "not measured"."""
    bad = dict(zip(NONFINITE_SOURCES, snapshot.nonfinite.sum(axis=2) > 0))
    values, defined = {}, {}
    for name in names:
        x = getattr(snapshot, name)
        if x.shape != (len(snapshot.layers),):  # a statistic the Snapshot does not carry
            x = np.full(len(snapshot.layers), np.nan)
        sourced = np.logical_or.reduce([bad[s] for s in BY_NAME[name].sources])
        values[name], defined[name] = x, ~np.isnan(x) | sourced
    return values, defined


def _update_norms(snapshot: Snapshot) -> tuple[np.ndarray, np.ndarray] | None:
    """Each layer's update norm and updated-weight norm, when the Snapshot carries them."""
    layers = (len(snapshot.layers),)
    if snapshot.update_norm.shape == layers == snapshot.updated_weight_norm.shape:
        return snapshot.update_norm, snapshot.updated_weight_norm
    return None


def _kind(value: float) -> str:
    return "nan" if math.isnan(value) else "posinf" if value > 0 else "neginf"


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def next_scrape_in(scrape_times: list[float]) -> float:
    """Seconds until the next scrape is due: one interval after the last, as the last two
    measured it, plus half an interval of slack for its jitter and a second; 0 without two.
    One already overdue is still coming (a loaded machine delays Prometheus' scrapes, and
    a close that comes late finds the scrape "due" in the past): up to another interval and
    a second then. Either way the wait ends when the scrape comes."""
    if len(scrape_times) < 2:
        return 0.0
    last, interval = scrape_times[-1], scrape_times[-1] - scrape_times[-2]
    return max(last + 1.5 * interval + 1.0 - time.monotonic(), interval + 1.0)
