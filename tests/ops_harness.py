"""TEST HARNESS, not the product: a stand-in metrics source for the ops tests.

Until the real exporter (monitor/ Prometheus sink) lands, the ops tests scrape this instead:
a real prometheus_client HTTP server exposing the contract metric names (docs/ARCHITECTURE),
fed by a thread that plays a scripted training run. Swap it for a real Lightning training by
changing the ``scrape_target`` fixture in conftest.py; nothing else depends on this module.
"""

from __future__ import annotations

import math
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from monitor.thresholds import Thresholds

#: Layers in depth order; the names sort differently on purpose (dashboards must use depth).
LAYERS = ("stem", "blocks.0", "blocks.1", "head")
REGIMES = ("healthy", "vanishing", "exploding", "nonfinite")
STEP_SECONDS = 0.1
#: Histogram buckets of the contract: decades 1e-6..1e6 plus the explosion threshold.
NORM_BUCKETS = sorted({10.0 ** e for e in range(-6, 7)} | {Thresholds().explosion_norm})


class MetricsSource:
    """Serves the contract metrics of one run and plays a scenario on a background thread.

    Scenarios: ``"healthy"`` (steady, every metric present) and ``"diverging"`` (the global
    gradient norm grows 10x per second, then NaN gradients appear in ``NAN_LAYER``).
    """

    NAN_LAYER = "blocks.1"

    def __init__(self, run: str, scenario: str = "healthy") -> None:
        if scenario not in ("healthy", "diverging"):
            raise ValueError(f"unknown scenario {scenario!r}")
        self.run, self.scenario = run, scenario
        self.registry = CollectorRegistry()
        self._define_metrics()
        self._stop = threading.Event()
        self._server, _ = start_http_server(0, addr="127.0.0.1", registry=self.registry)
        self.target = f"127.0.0.1:{self._server.server_port}"
        self._play(0)  # every series exists before the first scrape
        self._thread = threading.Thread(target=self._loop, name="ops-harness", daemon=True)
        self._thread.start()

    def _define_metrics(self) -> None:
        run, layer = ["run"], ["run", "layer"]

        def g(name: str, labels: list[str] = run) -> Gauge:
            return Gauge(name, name, labels, registry=self.registry)

        def c(name: str, labels: list[str] = run) -> Counter:
            return Counter(name, name, labels, registry=self.registry)

        self.step, self.timestamp, self.loss = (
            g("gradwatch_step"), g("gradwatch_last_step_timestamp_seconds"), g("gradwatch_loss"))
        self.global_norm = g("gradwatch_global_grad_norm")
        self.clipped_norm = g("gradwatch_clipped_grad_norm")
        self.lr = g("gradwatch_learning_rate", ["run", "optimizer", "group"])
        self.loss_scale = g("gradwatch_amp_loss_scale")
        self.per_layer = {name: g(f"gradwatch_{name}", layer) for name in (
            "grad_norm", "weight_norm", "update_ratio", "activation_mean",
            "activation_variance", "activation_saturation_ratio", "activation_dead_ratio",
            "activation_max_abs")}
        self.depth = g("gradwatch_layer_depth", layer)
        self.layers = g("gradwatch_layers")
        self.regime = g("gradwatch_regime", ["run", "regime"])
        self.nonfinite = c("gradwatch_nonfinite_total", ["run", "source", "layer", "kind"])
        self.nonfinite_steps = c("gradwatch_nonfinite_steps_total", ["run", "source"])
        self.counters = {name: c(f"gradwatch_{name}") for name in (
            "grad_clip_engaged", "amp_skipped_steps", "overhead_seconds", "snapshots",
            "export_dropped")}
        self.alerts = c("gradwatch_alerts_total", ["run", "alertname"])
        self.norm_histogram = Histogram("gradwatch_step_global_grad_norm", "global grad norm",
                                        run, buckets=NORM_BUCKETS, registry=self.registry)

    def _loop(self) -> None:
        step = 1
        while not self._stop.wait(STEP_SECONDS):
            self._play(step)
            step += 1

    def _play(self, step: int) -> None:
        run = self.run
        norm = 1.0 if self.scenario == "healthy" else 10.0 ** (step * STEP_SECONDS)
        nonfinite = norm > 1e6
        self.step.labels(run).set(step)
        self.timestamp.labels(run).set(time.time())
        self.loss.labels(run).set(math.nan if nonfinite else 2.0 / (1 + 0.01 * step))
        self.global_norm.labels(run).set(math.nan if nonfinite else norm)
        self.norm_histogram.labels(run).observe(norm)
        self.clipped_norm.labels(run).set(min(norm, 1.0))
        self.lr.labels(run, "Adam", "0").set(1e-3)
        self.loss_scale.labels(run).set(65536.0)
        self.layers.labels(run).set(len(LAYERS))
        for depth, name in enumerate(LAYERS):
            self.depth.labels(run, name).set(depth)
            values = {"grad_norm": norm / 2 ** depth, "weight_norm": 10.0,
                      "update_ratio": 1e-3, "activation_mean": 0.0,
                      "activation_variance": 1.0, "activation_saturation_ratio": 0.05,
                      "activation_dead_ratio": 0.1, "activation_max_abs": 3.0}
            for metric, value in values.items():
                self.per_layer[metric].labels(run, name).set(value)
            for source in ("gradient", "activation", "parameter"):
                for kind in ("nan", "posinf", "neginf"):
                    self.nonfinite.labels(run, source, name, kind)  # exported at zero
        for kind in ("nan", "posinf", "neginf"):
            self.nonfinite.labels(run, "loss", "", kind)
        for source in ("loss", "gradient"):
            self.nonfinite_steps.labels(run, source)
        for counter in self.counters.values():
            counter.labels(run)
        self.counters["overhead_seconds"].labels(run).inc(0.001)
        self.alerts.labels(run, "GradientExplosion")
        regime = "nonfinite" if nonfinite else "exploding" if norm > 1e4 else "healthy"
        for name in REGIMES:
            self.regime.labels(run, name).set(1.0 if name == regime else 0.0)
        if nonfinite:
            self.nonfinite.labels(run, "gradient", self.NAN_LAYER, "nan").inc()
            self.nonfinite_steps.labels(run, "gradient").inc()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._server.shutdown()
        self._server.server_close()
