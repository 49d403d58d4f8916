"""Realistic trainings for the alert suite: healthy runs that must stay quiet, unstable runs
that must be caught, each >= 1,000 optimizer steps of a tiny model on CPU.

``train`` runs one scenario through the plain Monitor loop with the AlertEngine; ``scrapes``
replays its Pulses and Snapshots through the real PrometheusSink, reading its exposition
text the way a scrape would; ``promtool_test`` turns those scrapes into a ``promtool test
rules`` file against the shipped rules.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from torch import nn

from gradwatch.monitor.judging.engine import AlertEngine
from gradwatch.monitor.capture.monitor import Monitor
from gradwatch.monitor.sinks.prometheus import PrometheusSink
from gradwatch.monitor.records.snapshot import Pulse, Snapshot

STEPS = 1000
#: Alerts about the trainer process, not the training: judged elsewhere (a replay has no
#: live trainer, and the sample timestamps are the recording's).
LIVENESS_ALERTS = ("TrainerDown", "TrainingStalled")


AUTOCAST = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Setup:
    """One training: the model, its optimizer, a batch per step and what happens around it."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    batches: Callable[[int], tuple[torch.Tensor, torch.Tensor]]
    loss_fn: Callable = nn.functional.mse_loss
    schedule: Callable[[int], float] | None = None  # step -> lr multiplier
    clip: float | None = None
    #: "fp32"; "bf16" (autocast, no scaler: bf16 has fp32's range); "fp16" (autocast and a
    #: GradScaler, which skips the steps whose gradients overflowed)
    precision: str = "fp32"

    @property
    def fp16(self) -> bool:
        return self.precision == "fp16"


@dataclass
class Recording:
    name: str
    engine: AlertEngine
    pulses: list[Pulse] = field(default_factory=list)
    snapshots: list[Snapshot] = field(default_factory=list)
    first_nonfinite: int | None = None
    losses: list[float] = field(default_factory=list)

    def fired(self, severities=("warning", "critical")) -> list:
        return [a for a in self.engine.history
                if a.status == "firing" and a.severity in severities]

    def first_step(self, names) -> int | None:
        steps = [a.step for a in self.engine.history if a.status == "firing" and a.name in names]
        return min(steps, default=None)

    def on_pulse(self, pulse: Pulse, monitor) -> None:
        self.pulses.append(pulse)

    def on_snapshot(self, snapshot: Snapshot, monitor) -> None:
        self.snapshots.append(snapshot)


def train(name: str, setup: Setup, steps: int = STEPS, every_n_steps: int = 10) -> Recording:
    """Train ``setup`` for ``steps`` optimizer steps (3 more after a first NaN/Inf, then stop)."""
    torch.manual_seed(0)
    engine = AlertEngine()
    record = Recording(name, engine)
    model, opt = setup.model, setup.optimizer
    scaler = torch.amp.GradScaler("cpu") if setup.fp16 else None
    base_lrs = [g["lr"] for g in opt.param_groups]
    monitor = Monitor(model, optimizers=[opt], every_n_steps=every_n_steps,
                      observers=[engine, record], run_name=name, grad_scaler=scaler,
                      track_clipping=setup.clip is not None)
    engine.audit(model, monitor)
    try:
        for step in range(steps):
            if setup.schedule is not None:
                for group, lr in zip(opt.param_groups, base_lrs):
                    group["lr"] = lr * setup.schedule(step)
            x, y = setup.batches(step)
            with monitor.step(step):
                with torch.autocast("cpu", dtype=AUTOCAST[setup.precision],
                                    enabled=setup.precision != "fp32"):
                    loss = setup.loss_fn(model(x), y)
                monitor.observe_loss(loss)
                (scaler.scale(loss) if scaler else loss).backward()
                if scaler:
                    scaler.unscale_(opt)
                monitor.observe_gradients()
                # under fp16 the scaler skips overflowed gradients by design: the loss counts
                finite = bool(torch.isfinite(loss)) and (setup.fp16 or all(
                    bool(torch.isfinite(p.grad).all()) for p in model.parameters()
                    if p.grad is not None))
                if setup.clip is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), setup.clip)
                if scaler:
                    scaler.step(opt)
                    scaler.update()
                else:
                    opt.step()
                opt.zero_grad()
            record.losses.append(float(loss.detach()))
            if record.first_nonfinite is None and not finite:
                record.first_nonfinite = step
            if record.first_nonfinite is not None and step >= record.first_nonfinite + 3:
                break
        engine.flush(monitor)
    finally:
        monitor.close()
    return record


# ------------------------------------------------------------------ Prometheus replay

def scrapes(record: Recording, stride: int) -> list[dict[str, float]]:
    """What Prometheus would scrape every ``stride`` steps: series text -> value."""
    sink = PrometheusSink(record.name)
    by_step = {s.step: s for s in record.snapshots}
    out = []
    for i, pulse in enumerate(record.pulses):
        sink.on_pulse(pulse)
        if pulse.step in by_step:
            sink.on_snapshot(by_step[pulse.step])
        if i % stride == stride - 1 or i == len(record.pulses) - 1:
            out.append(_parse(generate_latest(sink.registry).decode()))
    return out


def _parse(text: str) -> dict[str, float]:
    series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "gradwatch_last_step_timestamp_seconds":
                continue  # the recording's wall clock, not promtool's
            labels = {"job": "gradwatch", "instance": "trainer:9100", **sample.labels}
            body = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
            series[f"{sample.name}{{{body}}}"] = sample.value
    return series


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _value(v: float | None) -> str:
    if v is None:
        return "_"
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Inf" if v > 0 else "-Inf"
    return repr(float(v))


def input_series(samples: list[dict[str, float]]) -> list[dict[str, str]]:
    names = sorted({k for s in samples for k in s})
    return [{"series": name, "values": " ".join(_value(s.get(name)) for s in samples)}
            for name in names]


#: Prometheus' scrape and rule-evaluation interval in the replay (the shipped config's).
INTERVAL_SECONDS = 15
#: A trainer's pace as Prometheus sees it: seconds per optimizer step -> steps per scrape.
#: One step a second is a small model; one every 5 s a large one (the rules' windows, in
#: minutes, then hold 5x fewer steps).
CADENCES = {"1 s/step": 1.0, "5 s/step": 5.0}


def steps_per_scrape(seconds_per_step: float) -> int:
    return max(1, round(INTERVAL_SECONDS / seconds_per_step))


def scrape_step(record: Recording, stride: int, index: int) -> int:
    """The last step scrape ``index`` of ``scrapes(record, stride)`` saw."""
    return record.pulses[min((index + 1) * stride, len(record.pulses)) - 1].step


def first_firing_query() -> str:
    """Per alert name, the first evaluation time (s) it was firing (warning/critical,
    liveness alerts excluded)."""
    skip = "|".join(LIVENESS_ALERTS)
    selector = (f'ALERTS{{alertstate="firing", alertname!~"{skip}", '
                f'severity=~"warning|critical"}}')
    return (f"min by (alertname) (min_over_time(timestamp({selector})"
            f"[1d:{INTERVAL_SECONDS}s]))")


def promtool_file(samples: list[dict[str, float]], rules_file: str) -> dict:
    """A promtool test file expecting no alert at all by the last scrape: promtool then
    reports every alert that did fire, with its first firing time."""
    return {
        "rule_files": [rules_file], "evaluation_interval": f"{INTERVAL_SECONDS}s",
        "tests": [{
            "interval": f"{INTERVAL_SECONDS}s", "input_series": input_series(samples),
            "promql_expr_test": [{"expr": first_firing_query(),
                                  "eval_time": f"{INTERVAL_SECONDS * (len(samples) - 1)}s",
                                  "exp_samples": []}]}],
    }


def first_firing_in_promtool(promtool: str, rules_file: str,
                             replays: dict[str, list[dict[str, float]]], tmp,
                             ) -> dict[str, dict[str, int]]:
    """Per replay, alert name -> index of the first scrape at which it was firing, from the
    real ``promtool test rules`` (the replays run in parallel, one process each)."""
    import subprocess

    import yaml

    running = {}
    for name, samples in replays.items():
        path = tmp / f"{name}.test.yml"
        path.write_text(yaml.safe_dump(promtool_file(samples, rules_file), width=10**9))
        running[name] = subprocess.Popen([promtool, "test", "rules", str(path)],
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         text=True)
    fired = {}
    for name, process in running.items():
        output, _ = process.communicate(timeout=600)
        if process.returncode != 0 and "got:" not in output:
            raise AssertionError(f"{name}: {output}")
        fired[name] = {
            alert: round(float(seconds)) // INTERVAL_SECONDS
            for alert, seconds in re.findall(r'alertname="(\w+)"} ([0-9.E+-]+)', output)}
    return fired


# ------------------------------------------------------------------ a live Prometheus

@dataclass(frozen=True)
class LiveReplay:
    #: (alertname, run) of every warning/critical alert ever firing, liveness alerts aside
    #: (the replayed step times are the recording's)
    alerts: list[tuple[str, str | None]]
    #: runs whose gradwatch_step the live Prometheus holds at the end
    runs_scraped: int


def live_replay(records: dict[str, Recording], prometheus_server,
                steps_per_second: float = 50) -> LiveReplay:
    """As a user runs it: the real Prometheus (``prometheus_server`` fixture, 1 s scrape and
    evaluation) scrapes the real exporter with the shipped rules, while ``records``' figures
    are served live, all at once, about ``steps_per_second``."""
    import time

    from gradwatch.monitor.ops import rules

    sinks = {name: PrometheusSink(name) for name in records}
    ports = [sink.serve(0) for sink in sinks.values()]
    try:
        prometheus = prometheus_server([f"127.0.0.1:{port}" for port in ports],
                                       rule_files=[rules.RULES_PATH.resolve()])
        started = time.time()
        feeds = {name: {s.step: s for s in r.snapshots} for name, r in records.items()}
        steps = min(len(r.pulses) for r in records.values())
        for step in range(steps):
            for name, sink in sinks.items():
                sink.on_pulse(records[name].pulses[step])
                if step in feeds[name]:
                    sink.on_snapshot(feeds[name][step])
            time.sleep(1 / steps_per_second)  # the replay's pace, not a wait
        for name, record in records.items():  # the last figures scraped, then evaluated
            prometheus.wait_for(f'gradwatch_step{{run="{name}"}} == {record.pulses[steps - 1].step}')
        prometheus.wait_evaluations(3)
        ever = prometheus.query_range(
            'ALERTS{severity=~"warning|critical", '
            f'alertname!~"{"|".join(LIVENESS_ALERTS)}"}}', time.time() - started)
        return LiveReplay([(s["metric"]["alertname"], s["metric"].get("run")) for s in ever],
                          len(prometheus.query("gradwatch_step")))
    finally:
        for sink in sinks.values():
            sink.close()
