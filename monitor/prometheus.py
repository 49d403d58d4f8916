"""Prometheus exposition: the latest figures, rendered at scrape time.

The training thread never touches this module: Pulses, Snapshots and Alerts arrive on the
export thread, which only updates a few numbers under a lock; the text is rendered by the
scrape itself (``collect``). A spike that lasts one step between two scrapes stays visible
in the ``gradwatch_step_global_grad_norm`` histogram, which observes every step's norm.
"""

from __future__ import annotations

import math
import threading
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

from .endpoint import EndpointSecurity, serve
from .metrics import spec
from .snapshot import NONFINITE_KINDS, NONFINITE_SOURCES, Pulse, Snapshot
from .thresholds import Thresholds

#: Per-layer gauges, named like the Snapshot attribute they export.
LAYER_GAUGES = (
    "grad_norm",
    "weight_norm",
    "update_ratio",
    "activation_mean",
    "activation_variance",
    "activation_saturation_ratio",
    "activation_dead_ratio",
    "activation_max_abs",
    # issue 17: update statistics
    "update_grad_cosine",
    "adam_eps_dominated_ratio",
)
#: Per-attention-module gauges (label ``layer``: the module that computed attention).
ATTENTION_GAUGES = ("attention_logit_max", "attention_entropy")
#: Gauges of the output logits.
OUTPUT_GAUGES = ("output_logit_logsumexp", "output_logit_max")
_FAMILIES = {"gauge": GaugeMetricFamily, "counter": CounterMetricFamily,
             "histogram": HistogramMetricFamily}
#: The ``rank`` label value of figures over all ranks.
WORLD_RANK = "all"
REGIMES = ("healthy", "vanishing", "exploding", "nonfinite")


def histogram_buckets(thresholds: Thresholds) -> list[float]:
    """Upper bounds of the global-norm histogram: decades 1e-6..1e6 plus the explosion norm."""
    return sorted({10.0 ** e for e in range(-6, 7)} | {float(thresholds.explosion_norm)})


class PrometheusSink:
    """Sink and collector of the ``gradwatch_*`` metrics, in its own registry.

    Args:
        run: the ``run`` label.
        rank: the ``rank`` label, or None to leave it out (world size 1).
        max_layers: at most this many ``layer`` label values; deeper models are exported as
            this many contiguous depth groups named ``first..last`` (norms combined exactly,
            activation statistics averaged, max |x| maxed).
        thresholds: for the histogram's bucket at ``explosion_norm``.
    """

    def __init__(self, run: str, rank: int | None = None, max_layers: int = 512,
                 thresholds: Thresholds | None = None) -> None:
        self._base = {"run": run} | ({"rank": str(rank)} if rank is not None else {})
        self.max_layers = max_layers
        self.registry = CollectorRegistry(auto_describe=False)
        self.count_dropped: Callable[[], int] = lambda: 0
        self._lock = threading.Lock()
        self._bounds = histogram_buckets(thresholds or Thresholds())
        self._bucket_counts = [0] * (len(self._bounds) + 1)
        self._norm_sum = 0.0
        self._pulse: Pulse | None = None
        self._latest: dict[str, float] = {}
        self._snapshot: Snapshot | None = None
        self._layers: tuple[str, ...] = ()
        self._layer_values: dict[str, np.ndarray] = {}
        self._world_values: dict[str, np.ndarray] = {}
        self._nonfinite: Counter[tuple[str, str, str]] = Counter()
        self._nonfinite_steps: Counter[str] = Counter({"loss": 0, "gradient": 0})
        self._alerts: Counter[str] = Counter()
        self._active_regimes: dict[str, str] = {}
        self._clip_engaged = 0
        self._skipped = 0
        self._skipped_updates = 0
        self._snapshots = 0
        self._server = None
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

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # ------------------------------------------------------------------ sink

    def on_pulse(self, pulse: Pulse) -> None:
        norm, loss = pulse.global_grad_norm, pulse.loss
        with self._lock:
            self._pulse = pulse
            # a step without a loss or gradients (no backward) keeps the last values shown
            self._latest.update({name: value for name, value in _pulse_gauges(pulse)
                                 if value is not None})
            if norm is not None and math.isfinite(norm):
                self._bucket_counts[int(np.searchsorted(self._bounds, norm))] += 1
                self._norm_sum += norm
            elif norm is not None:
                # above every bound (only the +Inf bucket), kept out of the sum
                self._bucket_counts[-1] += 1
                self._nonfinite_steps["gradient"] += 1
            if loss is not None and not math.isfinite(loss):
                self._nonfinite_steps["loss"] += 1
                self._nonfinite[("loss", "", _kind(loss))] += 1
            clipped = pulse.clipped_grad_norm
            if clipped is not None and norm is not None and clipped < norm * (1 - 1e-6):
                self._clip_engaged += 1
            if not pulse.optimizer_stepped and pulse.loss_scale is not None:
                self._skipped += 1
            if pulse.update_skipped:
                self._skipped_updates += 1

    def on_snapshot(self, snapshot: Snapshot) -> None:
        layers, values = self._grouped(snapshot)
        world = {}
        if snapshot.world is not None and self._base.get("rank") == "0":
            world = {k: v for k, v in self._grouped(snapshot.world)[1].items()
                     if k.startswith("activation_")}
        with self._lock:
            self._snapshot = snapshot
            self._layers, self._layer_values, self._world_values = layers, values, world
            self._snapshots += 1
            counts = snapshot.nonfinite  # [source, layer, kind]
            for s, l, k in zip(*np.nonzero(counts)):
                self._nonfinite[(NONFINITE_SOURCES[s], snapshot.layers[l], NONFINITE_KINDS[k])] \
                    += int(counts[s, l, k])

    def on_alert(self, alert) -> None:
        with self._lock:
            if alert.status == "firing":
                self._alerts[alert.name] += 1
                if alert.regime:
                    self._active_regimes[alert.name] = alert.regime
            else:
                self._active_regimes.pop(alert.name, None)

    # ------------------------------------------------------------------ collector

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            yield from self._run_metrics()
            yield from self._layer_metrics()
            yield from self._counters()

    def _family(self, name: str):
        metric = spec(name)
        return _FAMILIES[metric.kind](metric.name, metric.help,
                                      labels=[*self._base, *metric.labels])

    def _run_metrics(self) -> Iterator[Metric]:
        base = list(self._base.values())
        pulse = self._pulse
        if pulse is not None:
            for name, _ in _pulse_gauges(pulse):
                family = self._family(name)
                if name in self._latest:
                    family.add_metric(base, self._latest[name])
                yield family
            lr = self._family("learning_rate")
            for optimizer, groups in enumerate(pulse.learning_rates):
                for group, value in enumerate(groups):
                    lr.add_metric([*base, str(optimizer), str(group)], value)
            yield lr
        buckets, cumulative = [], 0
        for bound, count in zip([*self._bounds, math.inf], self._bucket_counts):
            cumulative += count
            buckets.append((_le(bound), cumulative))
        histogram = self._family("step_global_grad_norm")
        histogram.add_metric(base, buckets, self._norm_sum)
        yield histogram
        regime = self._family("regime")
        current = self._regime()
        for name in REGIMES:
            regime.add_metric([*base, name], float(name == current))
        yield regime

    def _regime(self) -> str:
        active = set(self._active_regimes.values())
        return next((r for r in reversed(REGIMES) if r in active), "healthy")

    def _layer_metrics(self) -> Iterator[Metric]:
        base = list(self._base.values())
        layers = self._layers
        count = self._family("layers")
        count.add_metric(base, len(layers))
        yield count
        if not layers:
            return
        depth = self._family("layer_depth")
        for position, layer in enumerate(layers):
            depth.add_metric([*base, layer], position)
        yield depth
        # with several ranks, rank 0 also exports the activations over every rank's batch
        world_base = [*base[:-1], WORLD_RANK]
        for name in LAYER_GAUGES:
            family = self._family(name)
            for labels, values in ((base, self._layer_values[name]),
                                   (world_base, self._world_values.get(name, ()))):
                for layer, value in zip(layers, values):
                    if not math.isnan(value):
                        family.add_metric([*labels, layer], value)
            yield family
        yield from self._leading_metrics(base)

    def _leading_metrics(self, base: list[str]) -> Iterator[Metric]:
        """Attention and output-logit gauges of the latest Snapshot (issue 17)."""
        snapshot = self._snapshot
        for name in ATTENTION_GAUGES:
            family = self._family(name)
            for layer, value in zip(snapshot.attention_layers, getattr(snapshot, name)):
                family.add_metric([*base, layer], value)
            yield family
        for name in OUTPUT_GAUGES:
            family = self._family(name)
            value = getattr(snapshot, name)
            if not math.isnan(value):
                family.add_metric(base, value)
            yield family

    def _counters(self) -> Iterator[Metric]:
        base = list(self._base.values())
        nonfinite = self._family("nonfinite")
        for (source, layer, kind), value in sorted(self._nonfinite.items()):
            nonfinite.add_metric([*base, source, layer, kind], value)
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
        for name, value in (
            ("grad_clip_engaged", self._clip_engaged),
            ("amp_skipped_steps", self._skipped),
            ("skipped_updates", self._skipped_updates),
            ("overhead_seconds", overhead),
            ("snapshots", self._snapshots),
            ("export_dropped", self.count_dropped()),
        ):
            family = self._family(name)
            family.add_metric(base, value)
            yield family

    # ------------------------------------------------------------------ cardinality

    def _grouped(self, snapshot: Snapshot) -> tuple[tuple[str, ...], dict[str, np.ndarray]]:
        values = {name: getattr(snapshot, name) for name in LAYER_GAUGES}
        n = len(snapshot.layers)
        if n <= self.max_layers:
            return snapshot.layers, values
        edges = np.linspace(0, n, self.max_layers + 1).astype(int)
        names = tuple(f"{snapshot.layers[a]}..{snapshot.layers[b - 1]}"
                      for a, b in zip(edges[:-1], edges[1:]))
        starts = edges[:-1]
        delta = values["update_ratio"] * values["weight_norm"]

        def root_sum_sq(x: np.ndarray) -> np.ndarray:
            return np.sqrt(np.add.reduceat(np.nan_to_num(x) ** 2, starts))

        def mean(x: np.ndarray) -> np.ndarray:
            return np.array([np.nan if np.isnan(x[a:b]).all() else np.nanmean(x[a:b])
                             for a, b in zip(edges[:-1], edges[1:])])

        grouped = {k: mean(v) for k, v in values.items()}
        grouped["grad_norm"] = root_sum_sq(values["grad_norm"])
        grouped["weight_norm"] = root_sum_sq(values["weight_norm"])
        with np.errstate(divide="ignore", invalid="ignore"):
            grouped["update_ratio"] = root_sum_sq(delta) / grouped["weight_norm"]
        grouped["activation_max_abs"] = np.fmax.reduceat(values["activation_max_abs"], starts)
        return names, grouped


def _pulse_gauges(pulse: Pulse) -> tuple[tuple[str, float | None], ...]:
    """The gauges a Pulse sets, by metric name (None: not measured on that step)."""
    return (
        ("step", pulse.step),
        ("last_step_timestamp_seconds", pulse.time),
        ("loss", pulse.loss),
        ("global_grad_norm", pulse.global_grad_norm),
        ("clipped_grad_norm", pulse.clipped_grad_norm),
        ("amp_loss_scale", pulse.loss_scale),
    )


def _kind(value: float) -> str:
    return "nan" if math.isnan(value) else "posinf" if value > 0 else "neginf"


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))
