"""The exposition itself: grouping for cardinality, odd label values, one-step spikes."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import time

import numpy as np
import pytest
from prometheus_client import generate_latest

from gradwatch.monitor import PrometheusSink, Pulse, Snapshot

from .helpers import close, sample, samples


def snapshot(layers, grad, step=0) -> Snapshot:
    n = len(layers)
    ones = np.ones(n)
    return Snapshot(run="r", rank=0, step=step, time=0.0, layers=tuple(layers),
                    grad_norm=np.asarray(grad, float), weight_norm=2 * ones,
                    update_ratio=1e-3 * ones, activation_mean=np.arange(n, dtype=float),
                    activation_variance=ones, activation_saturation_ratio=np.full(n, np.nan),
                    activation_dead_ratio=0.5 * ones, activation_max_abs=np.arange(n, dtype=float),
                    layer_output_max_abs=ones, nonfinite=np.zeros((3, n, 3), int),
                    nonfinite_origin="", pulses=(), overhead_seconds=0.0)


def lint(text: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: the test set-up installs Debian's prometheus")
        pytest.skip("promtool not installed")
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def exposition(sink: PrometheusSink) -> dict:
    return samples(generate_latest(sink.registry).decode())


def layer_series(parsed: dict) -> set[tuple[str, str]]:
    return {(name, dict(labels)["layer"]) for name, labels in parsed
            if "layer" in dict(labels) and dict(labels)["layer"]}


@pytest.mark.unit
def test_deep_models_export_depth_group_summaries_and_the_worst_layers():
    n, keep, groups = 40, 4, 4
    layers = [f"block.{i}" for i in range(n)]
    rng = np.random.default_rng(0)
    grad = rng.uniform(0.5, 2.0, n)
    grad[7], grad[33] = 1e-7, 1e5  # the two offenders, far from the median
    sink = PrometheusSink("r", max_layers=keep, depth_groups=groups)
    sink.on_snapshot(snapshot(layers, grad))
    parsed = exposition(sink)
    assert sample(parsed, "gradwatch_layers") == n  # the model's depth, not what is kept
    kept = {layer for name, layer in layer_series(parsed) if name == "gradwatch_grad_norm"}
    assert len(kept) == keep and {"block.7", "block.33"} <= kept
    for layer in kept:  # the true depth, so the depth order and the input side still hold
        assert sample(parsed, "gradwatch_layer_depth", layer=layer) == layers.index(layer)
    for first, last in ((0, 9), (10, 19), (20, 29), (30, 39)):
        part = grad[first:last + 1]
        where = {"metric": "grad_norm", "depth_group": f"{first}-{last}"}
        assert close(sample(parsed, "gradwatch_layer_group", stat="min", **where), part.min())
        assert close(sample(parsed, "gradwatch_layer_group", stat="median", **where),
                     float(np.median(part)))
        assert close(sample(parsed, "gradwatch_layer_group", stat="max", **where), part.max())
        assert sample(parsed, "gradwatch_layer_group", stat="argmax", **where) == \
            first + int(np.argmax(part))
    # saturation is not defined for these layers: no sample rather than a fake 0
    assert not any(k[0] == "gradwatch_activation_saturation_ratio" for k in parsed)
    per_layer = sum(1 for _, labels in parsed if "layer" in dict(labels))
    summaries = sum(1 for name, _ in parsed if name == "gradwatch_layer_group")
    assert per_layer == keep * 8  # 7 defined gauges + the depth, per kept layer
    assert summaries == 7 * groups * 4


@pytest.mark.servers
def test_nonfinite_layer_values_are_exported_not_dropped():
    layers = ["a", "b", "c"]
    snap = snapshot(layers, [1.0, math.nan, math.inf])
    snap.nonfinite[0, 1, 0] = 5  # gradient NaNs in layer b: its NaN norm is a real value
    snap.nonfinite[0, 2, 1] = 1
    sink = PrometheusSink("r")
    sink.on_snapshot(snap)
    text = generate_latest(sink.registry).decode()
    lint(text)
    parsed = samples(text)
    assert math.isnan(sample(parsed, "gradwatch_grad_norm", layer="b"))
    assert sample(parsed, "gradwatch_grad_norm", layer="c") == math.inf
    assert sample(parsed, "gradwatch_nonfinite_total", source="gradient", layer="b",
                  kind="nan") == 5
    # a NaN that only means "not measured" (no non-finite count) stays absent
    plain = snapshot(layers, [1.0, math.nan, 2.0])
    sink.on_snapshot(plain)
    assert ("gradwatch_grad_norm", "b") not in layer_series(exposition(sink))


@pytest.mark.unit
def test_a_step_without_backward_keeps_the_last_loss_and_norm():
    sink = PrometheusSink("r")
    sink.on_pulse(Pulse(step=0, time=10.0, loss=2.5, global_grad_norm=3.0))
    sink.on_pulse(Pulse(step=1, time=10.4, loss=None, global_grad_norm=None))
    parsed = exposition(sink)
    assert sample(parsed, "gradwatch_loss") == 2.5
    assert sample(parsed, "gradwatch_global_grad_norm") == 3.0
    assert sample(parsed, "gradwatch_step") == 1
    assert close(sample(parsed, "gradwatch_step_seconds"), 0.4)


def ranked_snapshot(rank: int, layers, variance) -> Snapshot:
    local = snapshot(layers, [1.0, 2.0])
    world = snapshot(layers, [1.0, 2.0])
    from dataclasses import replace

    return replace(local, rank=rank, activation_variance=np.asarray(variance[rank], float),
                   world=replace(world, activation_variance=np.asarray(variance["all"], float)))


@pytest.mark.unit
def test_ranks_export_once_what_is_the_same_everywhere():
    layers = ["a", "b"]
    variance = {0: [1.0, 2.0], 1: [3.0, 4.0], "all": [2.0, 3.0]}
    sinks = {rank: PrometheusSink("r", rank=rank) for rank in (0, 1)}
    asked = PrometheusSink("r", rank=1, rank_activations=True)
    for rank, sink in [*sinks.items(), (1, asked)]:
        # step 1: a NaN from rank 1's batch; step 2: every rank's own gradients come from
        # the NaN weights by now, which says nothing about the origin
        for step, norm, local_finite in ((0, 5.0, True), (1, math.nan, rank == 0),
                                         (2, math.nan, False)):
            sink.on_pulse(Pulse(step=step, time=float(step), loss=float(rank),
                                global_grad_norm=norm, local_gradients_finite=local_finite))
        sink.on_pulse(Pulse(step=3, time=3.0, loss=float(rank), global_grad_norm=5.0))
        sink.on_snapshot(ranked_snapshot(rank, layers, variance))
    parsed = {rank: exposition(sink) for rank, sink in sinks.items()}
    assert layer_series(parsed[1]) == set()  # rank 1: no per-layer duplicate
    ranks = {dict(labels).get("rank") for labels in (labels for _, labels in parsed[1])}
    assert ranks == {"1"}
    for rank in (0, 1):  # what differs: each rank's own
        assert sample(parsed[rank], "gradwatch_loss", rank=str(rank)) == rank
        assert sample(parsed[rank], "gradwatch_nonfinite_steps_total", rank=str(rank),
                      source="local_gradient") == (rank == 1)
    assert sample(parsed[0], "gradwatch_global_grad_norm", rank="all") == 5.0
    assert sample(parsed[0], "gradwatch_grad_norm", rank="all", layer="b") == 2.0
    assert sample(parsed[0], "gradwatch_activation_variance", rank="all", layer="b") == 3.0
    assert not any(k[0] == "gradwatch_global_grad_norm" for k in parsed[1])
    # asked for: rank 1's own activations, and still no synchronised duplicate
    own = exposition(asked)
    assert sample(own, "gradwatch_activation_variance", rank="1", layer="b") == 4.0
    assert {name for name, _ in layer_series(own)} == {
        f"gradwatch_activation_{k}" for k in ("mean", "variance", "dead_ratio", "max_abs")}


@pytest.mark.unit
def test_a_clean_end_is_served_to_the_next_scrape():
    import threading
    import urllib.request

    from .ops_servers import wait_until

    sink = PrometheusSink("r")
    port = sink.serve(0)
    url = f"http://127.0.0.1:{port}/metrics"
    read = lambda: samples(urllib.request.urlopen(url, timeout=5).read().decode())  # noqa: E731
    assert sample(read(), "gradwatch_run_finished") == 0
    read()  # two scrapes: the sink knows the scrape interval (about 0 s here)
    seen = []
    closed = threading.Event()

    def scraper():  # the next scrape, once close() has returned (if it ever blocked: at 30 s)
        closed.wait(30)
        seen.append(sample(read(), "gradwatch_run_finished"))

    thread = threading.Thread(target=scraper)
    thread.start()
    sink.finish()
    sink.close()  # returns at once: the endpoint lingers for the scrape that reads it
    assert seen == []
    closed.set()
    thread.join()
    assert seen == [1.0]

    def stopped() -> bool:
        try:
            read()
        except OSError:
            return True
        return False

    wait_until(stopped, 5, "the endpoint to stop right after its last scrape")


@pytest.mark.unit
def test_a_new_endpoint_takes_over_the_port_of_a_lingering_one():
    import time
    import urllib.request

    finished = PrometheusSink("finished")
    port = finished.serve(0)
    url = f"http://127.0.0.1:{port}/metrics"
    read = lambda: samples(urllib.request.urlopen(url, timeout=5).read().decode())  # noqa: E731
    read()
    time.sleep(1.0)  # not a wait: the scrape interval the sink measures (the scenario's input)
    read()  # a scrape interval of 1 s: the endpoint lingers for up to 3 s
    finished.finish()
    finished.close()  # lingers: nobody scraped since
    resumed = PrometheusSink("resumed")
    assert resumed.serve(port) == port  # the same process's next fit: no "port in use"
    assert sample(read(), "gradwatch_run_finished", run="resumed") == 0
    resumed.close()


@pytest.mark.servers
def test_odd_layer_names_give_valid_exposition():
    names = ['quote"d', "back\\slash", "new\nline", "ünïcødé.层", "x" * 2000]
    sink = PrometheusSink('run "odd"\n', rank=0)
    sink.on_snapshot(snapshot(names, [1.0] * len(names)))
    text = generate_latest(sink.registry).decode()
    lint(text)
    parsed = samples(text)
    for depth, name in enumerate(names):
        assert sample(parsed, "gradwatch_layer_depth", layer=name, rank="all") == depth


@pytest.mark.unit
def test_a_one_step_spike_between_scrapes_stays_visible():
    sink = PrometheusSink("r")
    norms = [1.0] * 50 + [5e4] + [1.0] * 49  # one exploding step among 100
    for step, norm in enumerate(norms):
        sink.on_pulse(Pulse(step=step, time=float(step), loss=1.0, global_grad_norm=norm))
    parsed = samples(generate_latest(sink.registry).decode())
    assert sample(parsed, "gradwatch_global_grad_norm") == 1.0  # the latest value hides it...
    count = sample(parsed, "gradwatch_step_global_grad_norm_count")
    below = sample(parsed, "gradwatch_step_global_grad_norm_bucket", le="10000.0")
    assert count - below == 1  # ...the histogram does not
    assert count == 100


@pytest.mark.unit
def test_nonfinite_steps_and_loss_counted_every_step():
    sink = PrometheusSink("r")
    values = [(1.0, 1.0), (math.nan, 2.0), (math.inf, math.inf), (1.0, None), (None, 1.0)]
    for step, (loss, norm) in enumerate(values):
        sink.on_pulse(Pulse(step=step, time=0.0, loss=loss, global_grad_norm=norm))
    parsed = samples(generate_latest(sink.registry).decode())
    assert sample(parsed, "gradwatch_nonfinite_steps_total", source="loss") == 2
    assert sample(parsed, "gradwatch_nonfinite_steps_total", source="gradient") == 1
    assert sample(parsed, "gradwatch_nonfinite_total", source="loss", kind="nan") == 1
    assert sample(parsed, "gradwatch_nonfinite_total", source="loss", kind="posinf") == 1


@pytest.mark.unit
def test_a_ranks_own_nonfinite_counts_name_its_first_layers_only():
    from gradwatch.monitor.sinks.prometheus import DEEPER_LAYERS, RANK_NONFINITE_LAYERS

    layers = [f"l{i}" for i in range(RANK_NONFINITE_LAYERS + 4)]
    snap = snapshot(layers, [1.0] * len(layers))
    snap.nonfinite[1, :, 0] = np.arange(1, len(layers) + 1)  # NaN activations in every layer
    snap.nonfinite[0, :, 0] = 1  # and gradients (synchronised: rank 0 exports them)
    sink = PrometheusSink("r", rank=1)
    sink.on_snapshot(snap)
    parsed = exposition(sink)
    named = {dict(labels)["layer"]: v for (name, labels), v in parsed.items()
             if name == "gradwatch_nonfinite_total"}
    first = layers[:RANK_NONFINITE_LAYERS]
    assert set(named) == {*first, DEEPER_LAYERS}  # no gradient duplicate on rank 1
    assert [named[layer] for layer in first] == list(range(1, RANK_NONFINITE_LAYERS + 1))
    assert named[DEEPER_LAYERS] == sum(range(RANK_NONFINITE_LAYERS + 1, len(layers) + 1))


@pytest.mark.unit
def test_a_nan_layer_of_a_deep_model_is_kept_and_shows_in_its_group():
    layers = [f"block.{i}" for i in range(40)]
    grad = np.linspace(1.0, 2.0, 40)
    grad[25] = math.nan
    snap = snapshot(layers, grad)
    snap.nonfinite[0, 25, 0] = 3  # a real NaN, counted
    sink = PrometheusSink("r", max_layers=2, depth_groups=4)
    sink.on_snapshot(snap)
    parsed = exposition(sink)
    assert math.isnan(sample(parsed, "gradwatch_grad_norm", layer="block.25"))
    where = {"metric": "grad_norm", "depth_group": "20-29"}
    assert math.isnan(sample(parsed, "gradwatch_layer_group", stat="max", **where))
    assert sample(parsed, "gradwatch_layer_group", stat="argmax", **where) == 25
    assert sample(parsed, "gradwatch_layer_group", stat="max", metric="grad_norm",
                  depth_group="30-39") == grad[39]


@pytest.mark.unit
def test_an_overdue_scrape_is_still_waited_for():
    """The wait at a clean end: until one interval (as the last two scrapes measured it)
    after the last scrape, plus slack; a scrape already overdue (a loaded machine delays
    Prometheus) is still coming, so up to another interval and a second; nothing to wait
    for without two scrapes."""
    from gradwatch.monitor.sinks.prometheus import next_scrape_in

    now = time.monotonic()
    assert next_scrape_in([]) == next_scrape_in([now]) == 0.0
    assert next_scrape_in([now - 10.2, now - 0.2]) == pytest.approx(10 * 1.5 + 1 - 0.2, abs=0.1)
    assert next_scrape_in([now - 6.0, now - 5.0]) == pytest.approx(1.0 + 1.0, abs=0.1)
