"""The corpus judged: each recipe trained once, its alerts read in-process (the AlertEngine)
and through the shipped rules (its exported series replayed into ``promtool test rules`` at
each trainer pace of ``realistic.CADENCES``), and the table of docs/detection.md."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ..realistic import (Recording, Setup, first_firing_in_promtool, scrape_step, scrapes,
                         steps_per_scrape, train)
from .recipe import IN_PROCESS, RULE_JUDGES, Recipe

#: judge name -> steps per scrape, for the rule replays
RULE_STRIDES = {name: steps_per_scrape(seconds) for name, seconds in RULE_JUDGES.items()}
JUDGES = (IN_PROCESS, *RULE_JUDGES)


@dataclass(frozen=True)
class Trained:
    recipe: Recipe
    record: Recording
    setup: Setup
    #: wall-clock seconds of its training (with the monitor), for choosing the CI subset
    seconds: float


@dataclass(frozen=True)
class Verdict:
    """What fired on one recipe: judge -> alert -> the first step it was firing at (for a
    rule, the last step its scrape had seen). Warning and critical alerts only."""

    trained: Trained
    fired: Mapping[str, Mapping[str, int]]

    @property
    def recipe(self) -> Recipe:
        return self.trained.recipe

    @property
    def steps(self) -> int:
        return len(self.trained.record.pulses)

    def caught_at(self, judge: str) -> int | None:
        catches = self.recipe.catches if judge == IN_PROCESS else self.recipe.caught_by_rules
        return min((step for alert, step in self.fired[judge].items() if alert in catches),
                   default=None)

    def lead(self, judge: str) -> int | None:
        """Steps between the catch and the first NaN/Inf (None: no NaN, or not caught)."""
        first_nan, caught = self.trained.record.first_nonfinite, self.caught_at(judge)
        return None if first_nan is None or caught is None else first_nan - caught


def train_recipes(recipes: Mapping[str, Recipe]) -> dict[str, Trained]:
    """Each recipe trained once on one thread (small models run many times faster so on
    shared cores: intra-op threads oversubscribe them)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {}
        for name, recipe in recipes.items():
            started = time.perf_counter()
            setup = recipe.make()
            record = train(name, setup, steps=recipe.steps)
            out[name] = Trained(recipe, record, setup, time.perf_counter() - started)
        return out
    finally:
        torch.set_num_threads(before)


def in_process_firings(record: Recording) -> dict[str, int]:
    fired: dict[str, int] = {}
    for alert in record.fired():
        fired.setdefault(alert.name, alert.step)
    return fired


def judge(trained: Mapping[str, Trained], promtool: str, rules_file: str,
          tmp: Path) -> dict[str, Verdict]:
    by_judge: dict[str, dict[str, dict[str, int]]] = {
        IN_PROCESS: {name: in_process_firings(t.record) for name, t in trained.items()}}
    for name, stride in RULE_STRIDES.items():
        replays = {n: scrapes(t.record, stride) for n, t in trained.items()}
        folder = tmp / name.replace(" ", "_").replace("/", "_")
        folder.mkdir()
        firings = first_firing_in_promtool(promtool, rules_file, replays, folder)
        by_judge[name] = {
            n: {alert: scrape_step(trained[n].record, stride, index)
                for alert, index in f.items()}
            for n, f in firings.items()}
    return {n: Verdict(t, {j: by_judge[j][n] for j in JUDGES}) for n, t in trained.items()}


# ------------------------------------------------------------------ the table

def _alerts(fired: Mapping[str, int]) -> str:
    return ", ".join(f"{alert}@{step}" for alert, step in sorted(fired.items(),
                                                                  key=lambda kv: kv[1])) or "-"


def _caught(verdict: Verdict, judge_name: str) -> str:
    step = verdict.caught_at(judge_name)
    if step is None:
        return "**missed**"
    lead = verdict.lead(judge_name)
    return f"step {step}" + ("" if lead is None else f" (lead {lead})")


def false_alarms_per_1000(verdicts: Mapping[str, Verdict], judge_name: str) -> float:
    """Distinct warning/critical alerts fired on the healthy recipes per 1,000 steps."""
    healthy = [v for v in verdicts.values() if v.recipe.healthy]
    return 1000 * sum(len(v.fired[judge_name]) for v in healthy) / sum(v.steps for v in healthy)


def markdown(verdicts: Mapping[str, Verdict]) -> str:
    columns = " | ".join(JUDGES)
    rows = [f"| recipe | family | kind | steps | train s | first NaN | {columns} | caught "
            "(lead to NaN, steps) |", "|---" * (7 + len(JUDGES)) + "|"]
    for v in verdicts.values():
        r = v.recipe
        caught = ("" if r.healthy else
                  "; ".join(f"{j}: {_caught(v, j)}" for j in JUDGES))
        first_nan = v.trained.record.first_nonfinite
        kind = ("healthy" if r.healthy else "unstable") + (", CI" if r.ci else "")
        rows.append(f"| {r.name} | {r.family} | {kind} "
                    f"| {v.steps} | {v.trained.seconds:.1f} "
                    f"| {'-' if first_nan is None else first_nan} | "
                    + " | ".join(_alerts(v.fired[j]) for j in JUDGES) + f" | {caught} |")
    rates = ", ".join(f"{j}: {false_alarms_per_1000(verdicts, j):.2f}" for j in JUDGES)
    return ("\n".join(rows) + f"\n\nFalse alarms per 1,000 healthy steps: {rates}.\n\n"
            + known_misses(verdicts))


def known_misses(verdicts: Mapping[str, Verdict]) -> str:
    """The recipes' xfails: where the current detectors are wrong, and by what mechanism."""
    lines = ["### Known false alarms and misses (the xfails)", ""]
    for v in verdicts.values():
        by_reason: dict[str, list[str]] = {}
        for judge_name, reason in v.recipe.misses.items():
            by_reason.setdefault(reason, []).append(judge_name)
        for reason, judges in by_reason.items():
            what = "false alarm" if v.recipe.healthy else "miss"
            lines.append(f"- **{v.recipe.name}** ({what}; {', '.join(judges)}): {reason}.")
    if len(lines) == 2:
        lines.append("None: every healthy recipe is quiet and every unstable one caught, by "
                     "every judge.")
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- detect-bench table: begin -->", "<!-- detect-bench table: end -->"


def write_table(verdicts: Mapping[str, Verdict], path: Path) -> None:
    """Replace the generated table between the markers of ``path``."""
    text = path.read_text()
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    path.write_text(f"{head}{BEGIN}\n{markdown(verdicts)}{END}{tail}")
