"""Real 2-process DDP training on CPU (gloo): correct, rank-labelled figures; NaN origin rank."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .helpers import OutputRecorder, close, layer_grad_norm, sample, samples, tanh_mlp

pytestmark = pytest.mark.training

ROOT = Path(__file__).resolve().parents[1]


def run_job(out: Path, *args: str) -> dict[int, dict]:
    out.mkdir()
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "distributed_job.py"),
                             "--out", str(out), *args], capture_output=True, text=True,
                            timeout=180, cwd=out)  # the timeout guards against a hang
    assert result.returncode == 0, result.stderr[-4000:]
    return {r: json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)}


def single_process_reference(steps: int):
    """The same model trained in one process on the union of both ranks' batches."""
    from .helpers import regression_data

    torch.manual_seed(0)
    net = tanh_mlp()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    data = torch.utils.data.DataLoader(regression_data(), batch_size=64)
    recorder = OutputRecorder({"net.0": net[1], "net.2": net[3], "net.4": net[4]})
    for _, (x, y) in zip(range(steps), data):
        recorder.clear()
        loss = ((net(x) - y) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        grads = {f"net.{i}": layer_grad_norm(net[i]) for i in (0, 2, 4)}
        optimizer.step()
    return grads, {name: recorder.moments(name)[1] for name in recorder.outputs}


@pytest.fixture(scope="module")
def healthy_run(tmp_path_factory):
    return run_job(tmp_path_factory.mktemp("ddp") / "healthy")


def test_gradient_figures_are_the_synchronized_ones(healthy_run):
    grads, _ = single_process_reference(steps=3)
    for rank in (0, 1):
        result = healthy_run[rank]
        assert result["step"] == 2
        for layer, value in zip(result["layers"], result["grad_norm"]):
            assert close(value, grads[layer], 1e-4), (rank, layer)


def test_activations_are_local_per_rank_and_global_in_the_world_view(healthy_run):
    _, variances = single_process_reference(steps=3)
    for rank in (0, 1):
        world = healthy_run[rank]["world_activation_variance"]
        for layer, value in zip(healthy_run[rank]["layers"], world):
            assert close(value, variances[layer], 1e-4), (rank, layer)
    local = [healthy_run[r]["activation_variance"][0] for r in (0, 1)]
    assert local[0] != local[1]  # each rank saw its own half of the batch


def test_each_rank_exports_only_what_differs(healthy_run):
    _, variances = single_process_reference(steps=3)
    grads, _ = single_process_reference(steps=3)
    parsed = [samples(healthy_run[r]["metrics"]) for r in (0, 1)]
    for rank in (0, 1):
        assert sample(parsed[rank], "gradwatch_step", run="ddp", rank=str(rank)) == 2
        assert sample(parsed[rank], "gradwatch_step_seconds", rank=str(rank)) > 0
        loss = next(p["loss"] for p in healthy_run[rank]["pulses"] if p["step"] == 2)
        assert close(sample(parsed[rank], "gradwatch_loss", rank=str(rank)), loss)
    # rank 1 exports no per-layer series and nothing that rank 0 already exports
    assert [name for name, labels in parsed[1] if "layer" in dict(labels)] == []
    assert {dict(labels).get("rank") for _, labels in parsed[1]} == {"1"}
    # rank 0 exports the synchronised figures once, for the job: rank="all"
    for layer, grad in grads.items():
        assert close(sample(parsed[0], "gradwatch_grad_norm", rank="all", layer=layer), grad,
                     1e-4)
    assert close(sample(parsed[0], "gradwatch_activation_variance", rank="all", layer="net.0"),
                 variances["net.0"], 1e-4)
    assert not any(n == "gradwatch_grad_norm" and ("rank", "0") in labels
                   for n, labels in parsed[0])


def test_a_nan_from_one_rank_is_traced_to_that_rank(tmp_path):
    result = run_job(tmp_path / "poisoned", "--poison-rank", "1", "--poison-step", "1")
    at_step_1 = {rank: next(p for p in result[rank]["pulses"] if p["step"] == 1)
                 for rank in (0, 1)}
    # after the all-reduce every rank's gradients are NaN...
    assert all(math.isnan(at_step_1[r]["grad"]) for r in (0, 1))
    # ...but only rank 1's own gradients were, before it
    assert at_step_1[1]["local_finite"] is False
    assert at_step_1[0]["local_finite"] is True
    assert [p["local_finite"] for p in result[0]["pulses"] if p["step"] == 0] == [True]
    # the alerts say where it came from: rank 1 itself, and "another rank" on rank 0
    nonfinite = {rank: [a for a in result[rank]["alerts"] if a["name"] == "NonFiniteValues"
                        and a["status"] == "firing"] for rank in (0, 1)}
    assert [(a["rank"], a["step"]) for a in nonfinite[1]] == [(1, 1)]
    assert "the NaN came from this rank" in nonfinite[1][0]["description"]
    assert [(a["rank"], a["step"]) for a in nonfinite[0]] == [(0, 1)]
    assert "the NaN came from another rank" in nonfinite[0][0]["description"]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fsdp2_sharded_norms_equal_the_unsharded_model(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "fsdp_job.py"), str(tmp_path),
                             str(free_port())], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-4000:]
    runs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]

    from .helpers import layer_weight_norm, regression_data

    torch.manual_seed(0)
    net = tanh_mlp()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    x_all, y_all = regression_data().tensors
    expected, global_norms = {}, {}
    for step in range(3):
        loss = ((net(x_all[64 * step: 64 * step + 64]) - y_all[64 * step: 64 * step + 64]) ** 2).mean()
        loss.backward()
        global_norms[step] = torch.linalg.vector_norm(
            torch.stack([p.grad.norm() for p in net.parameters()])).item()
        before = {i: layer_weight_norm(net[i]) for i in (0, 2, 4)}
        old = [p.detach().clone() for p in net.parameters()]
        expected[step] = {"grad": [layer_grad_norm(net[i]) for i in (0, 2, 4)],
                          "weight": [before[i] for i in (0, 2, 4)]}
        optimizer.step()
        optimizer.zero_grad()
        deltas = [(p.detach() - o).square().sum().item() for p, o in zip(net.parameters(), old)]
        expected[step]["update"] = [math.sqrt(deltas[2 * k] + deltas[2 * k + 1]) / before[i]
                                    for k, i in enumerate((0, 2, 4))]
    for run in runs:
        assert sorted(run["snapshots"]) == ["0", "2"]  # the regular samples
        for step, snapshot in run["snapshots"].items():
            assert snapshot["layers"] == ["0", "2", "4"]
            for key in ("grad", "weight", "update"):
                for got, want in zip(snapshot[key], expected[int(step)][key]):
                    assert close(got, want, 1e-4), (step, key)
        for step, value in run["global"].items():
            assert close(value, global_norms[int(step)], 1e-4)
    # the sharded per-layer figures are exported once, by rank 0, as rank="all"
    parsed = [samples(run["metrics"]) for run in runs]
    assert [name for name, labels in parsed[1] if "layer" in dict(labels)] == []
    for layer, want in zip(("0", "2", "4"), expected[2]["grad"]):
        assert close(sample(parsed[0], "gradwatch_grad_norm", rank="all", layer=layer), want,
                     1e-4)
