"""Shared test helpers: tiny models and data, independent reference statistics, readers."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request

import numpy as np
import torch
from prometheus_client.parser import text_string_to_metric_families
from torch import nn

from gradwatch.monitor.records.findings import Alert, Finding

#: A tiny LightningModule as script source (``pl``, ``torch`` and ``nn`` imported before it),
#: for the tests that train in a fresh process.
TINY_MODULE_SOURCE = """
class Model(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))

    def training_step(self, batch, batch_idx):
        return self.net(batch).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.randn(32, 4), batch_size=8)
"""


def regression_data(n: int = 256, features: int = 8, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=generator)
    y = x[:, :1] * 0.5 + 0.1 * torch.randn(n, 1, generator=generator)
    return torch.utils.data.TensorDataset(x, y)


def loader(n: int = 256, batch_size: int = 32, features: int = 8):
    return torch.utils.data.DataLoader(regression_data(n, features), batch_size=batch_size)


def tanh_mlp(features: int = 8, hidden: int = 16) -> nn.Sequential:
    return nn.Sequential(nn.Linear(features, hidden), nn.Tanh(), nn.Linear(hidden, hidden),
                         nn.ReLU(), nn.Linear(hidden, 1))


class OutputRecorder:
    """Captures module outputs with forward hooks, to check activation statistics."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        self.outputs: dict[str, list[torch.Tensor]] = {name: [] for name in modules}
        self._handles = [m.register_forward_hook(self._hook(name)) for name, m in modules.items()]

    def _hook(self, name):
        def record(module, args, output):
            self.outputs[name].append(output.detach().clone())
        return record

    def clear(self) -> None:
        for outputs in self.outputs.values():
            outputs.clear()

    def moments(self, name: str) -> tuple[float, float]:
        values = torch.cat([o.flatten() for o in self.outputs[name]]).double()
        return values.mean().item(), values.var(unbiased=False).item()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def layer_grad_norm(module: nn.Module) -> float:
    grads = [p.grad for p in module._parameters.values() if p is not None and p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()


def layer_weight_norm(module: nn.Module) -> float:
    params = [p.detach() for p in module._parameters.values() if p is not None]
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p) for p in params])).item()


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Parsed exposition: (sample name, labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def sample(parsed: dict, name: str, **labels) -> float:
    matches = [v for (n, ls), v in parsed.items()
               if n == name and all((k, v2) in ls for k, v2 in labels.items())]
    assert len(matches) == 1, f"{name} {labels}: {len(matches)} matches"
    return matches[0]


def read_scalars(log_dir: str) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in a TensorBoard run directory, read with tensorboard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(log_dir, size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def close(a: float, b: float, rel: float = 1e-4) -> bool:
    return bool(np.isclose(a, b, rtol=rel, atol=1e-7))


def gradwatch_cli(*args: str, cwd=None, timeout: float = 120, code: str | None = None,
                  **env: str) -> subprocess.CompletedProcess:
    """The `gradwatch` command line in a subprocess, as a user runs it; ``code`` runs first in
    that interpreter (e.g. to make an optional package's import fail for real)."""
    prelude = f"{code}\n" if code else ""
    script = (f"import sys\n{prelude}from gradwatch.cli import main\n"
              f"sys.exit(main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout, env={**os.environ, **env})


def alert_of(**fields):
    """An Alert from its flat fields (as its JSON lists them): the Finding's part
    (``starts_at`` is the finding's time) and the run's identity and state."""
    own = {key: fields.pop(key) for key in ("status", "run", "rank", "ends_at", "runbook_url",
                                             "run_regime") if key in fields}
    return Alert(Finding(time=fields.pop("starts_at"), **fields), **own)
