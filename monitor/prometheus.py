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
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from .snapshot import NONFINITE_KINDS, NONFINITE_SOURCES, Pulse, Snapshot
from .thresholds import Thresholds

#: Per-layer gauges: metric name suffix -> (Snapshot attribute, help text).
LAYER_GAUGES = {
    "grad_norm": ("grad_norm", "L2 norm of the layer's gradients before clipping."),
    "weight_norm": ("weight_norm", "L2 norm of the layer's parameters."),
    "update_ratio": ("update_ratio", "||W_after - W_before|| / ||W_before|| of the last "
                     "optimizer step."),
    "activation_mean": ("activation_mean", "Mean of the layer's activation."),
    "activation_variance": ("activation_variance", "Variance of the layer's activation."),
    "activation_saturation_ratio": ("activation_saturation_ratio", "Fraction of sigmoid/tanh "
                                    "outputs in the flat region."),
    "activation_dead_ratio": ("activation_dead_ratio", "Fraction of exact-zero activation "
                              "values (dead ReLU units)."),
    "activation_max_abs": ("activation_max_abs", "Max |x| of the layer's activation."),
}
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
        self._snapshot: Snapshot | None = None
        self._layers: tuple[str, ...] = ()
        self._layer_values: dict[str, np.ndarray] = {}
        self._nonfinite: Counter[tuple[str, str, str]] = Counter()
        self._nonfinite_steps: Counter[str] = Counter({"loss": 0, "gradient": 0})
        self._alerts: Counter[str] = Counter()
        self._active_regimes: dict[str, str] = {}
        self._clip_engaged = 0
        self._skipped = 0
        self._snapshots = 0
        self._server = None
        self.registry.register(self)

    # ------------------------------------------------------------------ serving

    def serve(self, port: int, addr: str = "127.0.0.1") -> int:
        """Serve /metrics on ``addr:port`` (0: any free port) from a daemon thread.

        Returns the bound port. Raises OSError when the port cannot be bound.
        """
        self._server, _ = start_http_server(port, addr=addr, registry=self.registry)
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
            if norm is not None and math.isfinite(norm):
                self._bucket_counts[int(np.searchsorted(self._bounds, norm))] += 1
                self._norm_sum += norm
            elif norm is not None:
                self._nonfinite_steps["gradient"] += 1
            if loss is not None and not math.isfinite(loss):
                self._nonfinite_steps["loss"] += 1
                self._nonfinite[("loss", "", _kind(loss))] += 1
            clipped = pulse.clipped_grad_norm
            if clipped is not None and norm is not None and clipped < norm * (1 - 1e-6):
                self._clip_engaged += 1
            if not pulse.optimizer_stepped and pulse.loss_scale is not None:
                self._skipped += 1

    def on_snapshot(self, snapshot: Snapshot) -> None:
        layers, values = self._grouped(snapshot)
        with self._lock:
            self._snapshot = snapshot
            self._layers, self._layer_values = layers, values
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

    def _family(self, cls, name: str, doc: str, extra: tuple[str, ...] = (), **kwargs):
        return cls(f"gradwatch_{name}", doc, labels=[*self._base, *extra], **kwargs)

    def _run_metrics(self) -> Iterator[Metric]:
        base = list(self._base.values())
        pulse = self._pulse
        if pulse is not None:
            for name, value, doc in (
                ("step", pulse.step, "Global step of the latest finished step."),
                ("last_step_timestamp_seconds", pulse.time, "Unix time the latest step ended."),
                ("loss", pulse.loss, "Loss of the latest step."),
                ("global_grad_norm", pulse.global_grad_norm,
                 "L2 norm over all gradients of the latest step, before clipping."),
                ("clipped_grad_norm", pulse.clipped_grad_norm,
                 "L2 norm over all gradients after clipping (when clipping is configured)."),
                ("amp_loss_scale", pulse.loss_scale, "AMP GradScaler scale (mixed precision)."),
            ):
                family = self._family(GaugeMetricFamily, name, doc)
                if value is not None:
                    family.add_metric(base, value)
                yield family
            lr = self._family(GaugeMetricFamily, "learning_rate",
                              "Learning rate of each optimizer param group.",
                              ("optimizer", "group"))
            for optimizer, groups in enumerate(pulse.learning_rates):
                for group, value in enumerate(groups):
                    lr.add_metric([*base, str(optimizer), str(group)], value)
            yield lr
        buckets, cumulative = [], 0
        for bound, count in zip([*self._bounds, math.inf], self._bucket_counts):
            cumulative += count
            buckets.append((_le(bound), cumulative))
        histogram = self._family(
            HistogramMetricFamily, "step_global_grad_norm",
            "Every step's global gradient norm (finite values), so that a one-step spike "
            "between two scrapes is still seen.")
        histogram.add_metric(base, buckets, self._norm_sum)
        yield histogram
        regime = self._family(GaugeMetricFamily, "regime",
                              "1 for the run's current regime (worst firing alert).", ("regime",))
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
        count = self._family(GaugeMetricFamily, "layers", "Number of exported layers.")
        count.add_metric(base, len(layers))
        yield count
        if not layers:
            return
        depth = self._family(GaugeMetricFamily, "layer_depth",
                             "Position of the layer in forward order, 0 = input side.",
                             ("layer",))
        for position, layer in enumerate(layers):
            depth.add_metric([*base, layer], position)
        yield depth
        for suffix, (_, doc) in LAYER_GAUGES.items():
            family = self._family(GaugeMetricFamily, suffix, doc, ("layer",))
            values = self._layer_values[suffix]
            for layer, value in zip(layers, values):
                if not math.isnan(value):
                    family.add_metric([*base, layer], value)
            yield family

    def _counters(self) -> Iterator[Metric]:
        base = list(self._base.values())
        nonfinite = self._family(CounterMetricFamily, "nonfinite",
                                 "Non-finite values seen (NaN, +Inf, -Inf), per source and "
                                 "layer; per-layer sources are counted on sampled steps.",
                                 ("source", "layer", "kind"))
        for (source, layer, kind), value in sorted(self._nonfinite.items()):
            nonfinite.add_metric([*base, source, layer, kind], value)
        yield nonfinite
        steps = self._family(CounterMetricFamily, "nonfinite_steps",
                             "Steps whose loss or global gradient norm was not finite "
                             "(checked every step).", ("source",))
        for source, value in sorted(self._nonfinite_steps.items()):
            steps.add_metric([*base, source], value)
        yield steps
        alerts = self._family(CounterMetricFamily, "alerts", "Alerts fired by the trainer.",
                              ("alertname",))
        for name, value in sorted(self._alerts.items()):
            alerts.add_metric([*base, name], value)
        yield alerts
        overhead = self._snapshot.overhead_seconds if self._snapshot else 0.0
        for name, value, doc in (
            ("grad_clip_engaged", self._clip_engaged, "Steps on which gradient clipping "
             "reduced the norm."),
            ("amp_skipped_steps", self._skipped, "Steps the AMP GradScaler skipped because "
             "gradients overflowed."),
            ("overhead_seconds", overhead, "Time the monitor spent on the training thread."),
            ("snapshots", self._snapshots, "Sampled steps with full per-layer statistics."),
            ("export_dropped", self.count_dropped(), "Export items dropped because the "
             "export queue was full."),
        ):
            family = self._family(CounterMetricFamily, name, doc)
            family.add_metric(base, value)
            yield family

    # ------------------------------------------------------------------ cardinality

    def _grouped(self, snapshot: Snapshot) -> tuple[tuple[str, ...], dict[str, np.ndarray]]:
        values = {k: getattr(snapshot, attr) for k, (attr, _) in LAYER_GAUGES.items()}
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


def _kind(value: float) -> str:
    return "nan" if math.isnan(value) else "posinf" if value > 0 else "neginf"


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))
