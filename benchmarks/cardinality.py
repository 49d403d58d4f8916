"""Cardinality at fleet scale: the series each rank exports, counted, not estimated.

A real ``gradwatch.Monitor`` trains a deep model (``layers`` x Linear(16)+Tanh) for two sampled
steps in a plain loop; its Pulses and last Snapshot go to one ``PrometheusSink`` per rank of a
world of W ranks (rank 0 also gets the world view, as under DDP), and every sample each sink
renders is counted: a histogram bucket is a series, as it is in Prometheus.

Target (issue 16): series at W ranks <= 1.2 x the single-rank count + 40 per extra rank.

    python -m benchmarks.cardinality [--output docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gradwatch.monitor import Monitor, PrometheusSink, Snapshot

from .scale import deep_model, train_steps

SECTION = "## Cardinality at fleet scale"
LAYERS = 200
WORLDS = (1, 2, 64)
#: Deep models against the layer cap (max_exported_layers): depth, cap.
BUDGETS = ((1000, 512), (1000, 64))


@dataclass(frozen=True)
class WorldCount:
    world: int
    rank0: int
    other_rank: int  # each rank above 0 (all the same)
    total: int
    nonfinite_total: int  # the same world after a NaN in every layer

    def target(self, single: int) -> float:
        return 1.2 * single + 40 * (self.world - 1)


def model_snapshot(layers: int, nonfinite: bool = False) -> Snapshot:
    """The last Snapshot of two sampled steps of a real training (NaN input if asked)."""
    torch.manual_seed(0)
    model = deep_model(layers)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    monitor = Monitor(model, every_n_steps=1, optimizers=[optimizer])
    x = torch.randn(32, 16)
    if nonfinite:
        x[0, 0] = math.nan
    for _ in train_steps(model, optimizer, monitor, range(2), x):
        pass
    monitor.flush()
    snapshot = monitor.last_snapshot
    monitor.close()
    return snapshot


def series(sink: PrometheusSink) -> int:
    text = generate_latest(sink.registry).decode()
    return sum(len(family.samples) for family in text_string_to_metric_families(text))


def per_rank(snapshot: Snapshot, world: int, **options) -> list[int]:
    """Series each rank of a world of ``world`` exports after ``snapshot``."""
    counts = []
    for rank in range(world):
        sink = PrometheusSink("bench", rank if world > 1 else None, **options)
        for pulse in snapshot.pulses:
            sink.on_pulse(pulse)
        sink.on_snapshot(replace(snapshot, rank=rank, world=snapshot if world > 1 else None))
        counts.append(series(sink))
    return counts


def count_worlds(layers: int = LAYERS, worlds: tuple[int, ...] = WORLDS) -> list[WorldCount]:
    healthy, nan = model_snapshot(layers), model_snapshot(layers, nonfinite=True)
    result = []
    for world in worlds:
        counts = per_rank(healthy, world)
        result.append(WorldCount(world, counts[0], counts[-1] if world > 1 else 0, sum(counts),
                                 sum(per_rank(nan, world))))
    return result


def render(layers: int, counts: list[WorldCount], budgets: list[tuple[int, int, int]]) -> str:
    single = counts[0].total
    lines = [
        SECTION, "",
        f"Series each rank exports for a {layers}-layer model (Linear(16)+Tanh each), counted "
        "from the rendered /metrics of real Snapshots (`python -m benchmarks.cardinality`). "
        "Under DDP rank 0 exports the synchronised figures once (`rank=\"all\"`); every rank "
        "exports only what differs. Target: <= 1.2 x the single-rank count + 40 per extra "
        "rank. \"after a NaN\": the same world once every layer holds NaN (non-finite counts "
        "per layer: gradients once, by rank 0; each rank's own activations for its first 8 "
        "layers and the rest summed). Before (issue 16, the same model on 2 ranks): 1,833 + "
        "2,832 series, and 601 more per rank after a NaN.", "",
        "| ranks | rank 0 | each other rank | total | target | met | total after a NaN |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in counts:
        target = c.target(single)
        lines.append(f"| {c.world} | {c.rank0} | {c.other_rank or '-'} | {c.total} | "
                     f"{target:.0f} | {'yes' if c.total <= target else 'NO'} | "
                     f"{c.nonfinite_total} |")
    lines += ["", "Deep models past `max_exported_layers` (one rank): the most offending "
              "layers keep their series, 16 depth groups are summarised (min, median, max, "
              "argmax); TensorBoard keeps every layer.", "",
              "| layers | max_exported_layers | series |", "| --- | --- | --- |"]
    lines += [f"| {n} | {cap} | {total} |" for n, cap, total in budgets]
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str, before: str | None = None) -> None:
    """Replace the section of ``path`` headed by ``section``'s first line, leaving the rest
    alone; a new one goes in front of the section headed ``before`` (if there), else last."""
    text = path.read_text() if path.exists() else ""
    heading = section.split("\n", 1)[0]
    start = text.find(heading)
    if start < 0:
        end = text.find(before) if before else -1
        if not text:
            text = section
        elif end < 0:
            text = text.rstrip("\n") + "\n\n" + section
        else:
            text = text[:end] + section.rstrip("\n") + "\n\n" + text[end:]
    else:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + section + (text[end + 1:] if end >= 0 else "")
    path.write_text(text)


def section_main(argv: list[str] | None, doc: str, measured_section, smoke_help: str,
                 before: str) -> str:
    """The command line of a benchmark that measures one section of docs/benchmarks.md:
    ``--smoke`` and ``--output`` (the section goes in front of ``before`` if new)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help=smoke_help)
    parser.add_argument("--output", type=Path, help="write the section into this Markdown file")
    options = parser.parse_args(argv)
    torch.set_num_threads(1)
    section = measured_section(smoke=options.smoke)
    if options.output:
        write_section(options.output, section, before=before)
    print(section)
    return section


def measured_section() -> str:
    """Count the series; the section (also part of benchmarks/overhead.py's report)."""
    budgets = [(n, cap, per_rank(model_snapshot(n), 1, max_layers=cap)[0])
               for n, cap in BUDGETS]
    return render(LAYERS, count_worlds(), budgets)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="write the section into this Markdown file")
    options = parser.parse_args(argv)
    torch.set_num_threads(1)
    section = measured_section()
    if options.output:
        write_section(options.output, section)
    print(section)
    return section


if __name__ == "__main__":
    main()
