"""CPU reproductions of transformer instability (issue 17) and their healthy twins.

- Attention-logit growth: a tiny decoder-only transformer WITHOUT qk-layernorm trained with
  AdamW at a high learning rate grows its attention logits, then diverges (Wortsman et al.
  2023, arXiv 2309.14322); its twins (a lower learning rate, or qk-layernorm) stay healthy.
- Output-logit drift: the same decoder without a final LayerNorm and with an lm_head bias,
  on a deterministic language, climbs its log Z by confidence (no shift: no alarm); twins
  add z-loss 1e-4 or a final LayerNorm.
- Output-embedding anisotropy (Stollenwerk et al. 2026): a vocabulary mostly never the
  target; the mean output embedding grows, the mean logit does not follow (no divergence);
  twin: mu-centering.
- Adam instability (arXiv 2304.09871) and output-logit divergence: memorising one batch
  drives the loss and the gradients toward 0 until Adam's second moment is eps-sized; the
  logits' shared shift then walks hundreds of nats below 0 and the loss spikes. Twins:
  beta2 0.999 (no collapse), mu-centering (no walk), z-loss 1e-4, label smoothing 0.1.

``python -m benchmarks.instability`` trains each under gradwatch and reports each leading
detector's first alert, the step the loss diverged and the cost of the new statistics per
sampled step.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gradwatch.monitor.probes.attention import AttentionProbe
from gradwatch.monitor.probes.attention_logits import CHUNK_LOGITS, MAX_QUERY_ROWS, MAX_SEQUENCES


class Block(nn.Module):
    """Pre-LayerNorm attention + MLP block; attention through F.scaled_dot_product_attention."""

    def __init__(self, d_model: int, heads: int, qk_norm: bool) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        head_dim = d_model // heads
        self.q_norm = nn.LayerNorm(head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(head_dim) if qk_norm else nn.Identity()
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(),
                                 nn.Linear(4 * d_model, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, s, 3, self.heads, d // self.heads).unbind(2)
        q, k, v = self.q_norm(q).transpose(1, 2), self.k_norm(k).transpose(1, 2), v.transpose(1, 2)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attended.transpose(1, 2).reshape(b, s, d))
        return x + self.mlp(self.norm2(x))


class TinyDecoder(nn.Module):
    """Token + position embeddings, ``layers`` Blocks, a final LayerNorm (unless
    ``final_norm`` is False) and an lm_head (with a bias if ``head_bias``)."""

    def __init__(self, vocab: int = 64, seq: int = 32, d_model: int = 64, heads: int = 4,
                 layers: int = 2, qk_norm: bool = False, final_norm: bool = True,
                 head_bias: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.position = nn.Embedding(seq, d_model)
        self.blocks = nn.Sequential(*(Block(d_model, heads, qk_norm) for _ in range(layers)))
        self.norm = nn.LayerNorm(d_model) if final_norm else nn.Identity()
        self.lm_head = nn.Linear(d_model, vocab, bias=head_bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        return self.lm_head(self.norm(self.blocks(self.embed(tokens) + self.position(positions))))


def token_batches(steps: int, batch: int = 16, seq: int = 33, vocab: int = 64, seed: int = 0,
                  noise: float = 0.1, distinct_starts: bool = False):
    """A learnable synthetic language: each token is a fixed function of the two before it,
    with a share ``noise`` of random tokens. ``distinct_starts``: no two sequences of a batch
    share their first token (a repeated one is replaced by the smallest unused token), so
    that with no noise every target of the batch is determined and its loss can reach 0."""
    generator = torch.Generator().manual_seed(seed)
    table = torch.randint(vocab, (vocab, vocab), generator=generator)
    out = []
    for _ in range(steps):
        tokens = torch.randint(vocab, (batch, seq), generator=generator)
        if distinct_starts:
            _make_distinct(tokens[:, 0], vocab)
        for i in range(2, seq):
            follow = table[tokens[:, i - 2], tokens[:, i - 1]]
            random = torch.rand(batch, generator=generator) < noise
            tokens[:, i] = torch.where(random, tokens[:, i], follow)
        out.append(tokens)
    return out


def _make_distinct(first: torch.Tensor, vocab: int) -> None:
    """Replace, in place, each repeat in ``first`` by the smallest token not in it (no
    random draw, so batches without repeats are unchanged)."""
    free = iter(sorted(set(range(vocab)) - set(first.tolist())))
    seen = set()
    for row, token in enumerate(first.tolist()):
        if token in seen:
            first[row] = token = next(free)
        seen.add(token)


@dataclass(frozen=True)
class Recipe:
    """One run of a reproduction: the model, the language, the optimizer and the loss.

    ``batches``: distinct batches cycled through (None: a fresh batch every step).
    ``data_vocab``: the tokens the language uses (None: all ``vocab``); the others are never
    the target.
    ``mu_centering``: subtract the mean output embedding from the lm_head after each step
    (Stollenwerk et al. 2026).
    ``divergence_window``: the steps whose mean loss judges divergence (divergence_step).
    """

    name: str
    lr: float
    qk_norm: bool = False
    final_norm: bool = True
    head_bias: bool = False
    vocab: int = 64
    data_vocab: int | None = None
    noise: float = 0.1
    batch: int = 16
    batches: int | None = None
    distinct_starts: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    z_loss: float = 0.0
    label_smoothing: float = 0.0
    mu_centering: bool = False
    steps: int = 600
    divergence_window: int = 20


#: Attention-logit growth: the first run diverges.
RUNS = (Recipe("unstable: AdamW lr 0.1, no qk-layernorm", 0.1),
        Recipe("healthy twin: lr 0.03", 0.03),
        Recipe("healthy twin: lr 0.1 with qk-layernorm", 0.1, qk_norm=True))
_DRIFTING = Recipe("unstable: no final LayerNorm, lm_head bias, lr 0.03, deterministic "
                   "16-token language", 0.03, final_norm=False, head_bias=True, vocab=16,
                   noise=0.0, steps=400)
#: Output-logit drift: the first run's log Z climbs ~17 nats (on seed 0 it then diverges),
#: by confidence, not by a shift of its logits.
OUTPUT_RUNS = (_DRIFTING,
               dataclasses.replace(_DRIFTING, name="healthy twin: the same with z-loss 1e-4",
                                   z_loss=1e-4),
               dataclasses.replace(_DRIFTING, name="twin: with a final LayerNorm",
                                   final_norm=True))
_MARCHING = Recipe("attempt: qk-layernorm, AdamW lr 0.1, a 512-token vocabulary of which the "
                   "language uses 64", 0.1, qk_norm=True, vocab=512, data_vocab=64, steps=1000)
#: Output-embedding anisotropy: 448 tokens are never the target, so Adam marches their
#: output embeddings in one direction; the twin removes the mean output embedding.
ANISOTROPY_RUNS = (_MARCHING,
                   dataclasses.replace(_MARCHING, name="twin: the same with mu-centering",
                                       mu_centering=True))
_MEMORISING = Recipe("unstable: memorising one batch of 4, AdamW lr 0.01, beta2 0.95",
                     0.01, vocab=16, noise=0.0, batch=4, batches=1, distinct_starts=True,
                     betas=(0.9, 0.95), steps=1600, divergence_window=1)
#: Adam instability and output-logit divergence: the first run's second moment collapses,
#: its logits' shared shift walks to hundreds of nats below 0, then its loss spikes
#: (divergence judged on single steps: it recovers within 20 steps). Its batch is
#: memorisable (distinct first tokens), so its loss and gradients fall toward 0 on every
#: seed. Twins: no collapse (beta2 0.999); the walk removed (mu-centering) or held (z-loss);
#: label smoothing.
ADAM_RUNS = (_MEMORISING,
             dataclasses.replace(_MEMORISING, name="healthy twin: the same with beta2 0.999",
                                 betas=(0.9, 0.999)),
             dataclasses.replace(_MEMORISING, name="healthy twin: the same with mu-centering",
                                 mu_centering=True),
             dataclasses.replace(_MEMORISING, name="twin: the same with z-loss 1e-4",
                                 z_loss=1e-4),
             dataclasses.replace(_MEMORISING, name="healthy twin: the same with label "
                                 "smoothing 0.1",
                                 label_smoothing=0.1))
REPRODUCTIONS = {"attention-logit growth": RUNS, "output-logit drift": OUTPUT_RUNS,
                 "output-embedding anisotropy": ANISOTROPY_RUNS,
                 "Adam instability and output-logit divergence": ADAM_RUNS}


def lm_loss(model: nn.Module, tokens: torch.Tensor, z_loss: float = 0.0,
            label_smoothing: float = 0.0) -> torch.Tensor:
    """Next-token cross-entropy of ``model`` on ``tokens`` [batch, seq + 1], plus ``z_loss``
    times the mean squared log Z of the logits (PaLM's z-loss)."""
    logits = model(tokens[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1),
                           label_smoothing=label_smoothing)
    if z_loss:
        loss = loss + z_loss * torch.logsumexp(logits, dim=-1).square().mean()
    return loss


def monitored_step(monitor, step: int, optimizer: torch.optim.Optimizer,
                   compute_loss) -> torch.Tensor:
    """One step of a plain loop under ``monitor``: the loss, backward, the optimizer step."""
    with monitor.step(step):
        loss = compute_loss()
        monitor.observe_loss(loss)
        loss.backward()
        monitor.observe_gradients()
        optimizer.step()
        optimizer.zero_grad()
    return loss


def train(recipe: Recipe, steps: int | None = None, every_n_steps: int = 10, observers=(),
          seed: int = 0):
    """Train ``recipe``'s TinyDecoder with AdamW (20 warm-up steps) under a Monitor for
    ``steps`` (default: the recipe's); returns the per-step losses, the Snapshots and the
    output geometry (output_geometry) after a quarter of the steps and after the last."""
    from gradwatch.monitor.capture.monitor import Monitor

    class Keep:
        def __init__(self):
            self.snapshots = []

        def on_pulse(self, pulse, monitor):
            pass

        def on_snapshot(self, snapshot, monitor):
            self.snapshots.append(snapshot)

    r = recipe
    steps = r.steps if steps is None else steps
    torch.manual_seed(seed)
    model = TinyDecoder(vocab=r.vocab, qk_norm=r.qk_norm, final_norm=r.final_norm,
                        head_bias=r.head_bias)
    optimizer = torch.optim.AdamW(model.parameters(), lr=r.lr, betas=r.betas, weight_decay=0.0)
    keep = Keep()
    monitor = Monitor(model, optimizers=[optimizer], every_n_steps=every_n_steps,
                      observers=[keep, *observers])
    data = token_batches(r.batches or steps, batch=r.batch, vocab=r.data_vocab or r.vocab,
                         seed=seed, noise=r.noise, distinct_starts=r.distinct_starts)
    losses, geometry = [], []
    # One thread: these runs are chaotic (the Adam spike's step moves by hundreds with the
    # float summation order), so the tests and the benchmark must see the same trajectory.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for step in range(steps):
            tokens = data[step % len(data)]
            for group in optimizer.param_groups:
                group["lr"] = r.lr * min(1.0, (step + 1) / 20)
            loss = monitored_step(monitor, step, optimizer, partial(
                lm_loss, model, tokens, r.z_loss, r.label_smoothing))
            if r.mu_centering:
                with torch.no_grad():
                    model.lm_head.weight -= model.lm_head.weight.mean(0)
            losses.append(loss.item())
            if step + 1 in (steps // 4, steps):
                geometry.append(output_geometry(model, tokens))
    finally:
        torch.set_num_threads(threads)
        monitor.close()
    return losses, keep.snapshots, geometry


def output_geometry(model: TinyDecoder, tokens: torch.Tensor) -> dict[str, float]:
    """The lm_head's geometry on ``tokens``: the norms of the mean output embedding mu and
    of the final hidden state's mean h_bar over the batch's positions, and mu . h_bar, which
    is the mean logit (without an lm_head bias; Stollenwerk et al. 2026)."""
    hidden = []
    hook = model.lm_head.register_forward_hook(lambda module, args, out: hidden.append(args[0]))
    try:
        with torch.no_grad():
            model(tokens[:, :-1])
    finally:
        hook.remove()
    mu, h_bar = model.lm_head.weight.detach().mean(0), hidden[0].mean((0, 1))
    return {"mu": float(mu.norm()), "h_bar": float(h_bar.norm()),
            "mu_dot_h_bar": float(mu @ h_bar)}


#: The loss has diverged at the first step whose 20-step mean loss is this many nats above
#: the best 20-step mean before it.
DIVERGED_NATS = 0.5
LEADING = ("AttentionLogitGrowth", "OutputLogitDivergence", "AdamUpdateDecorrelation")


def divergence_step(losses: list[float], window: int = 20) -> int | None:
    """The first step whose ``window``-step mean loss is DIVERGED_NATS above the best
    ``window``-step mean before it (or not finite); None if the loss never diverged."""
    best = math.inf
    for end in range(window, len(losses) + 1):
        mean = sum(losses[end - window:end]) / window
        if not math.isfinite(mean) or mean > best + DIVERGED_NATS:
            return end - 1
        best = min(best, mean)
    return None


def run_alerts(recipe: Recipe, steps: int | None = None, every_n_steps: int = 10,
               seed: int = 0) -> dict:
    """``recipe`` under the default detectors: its divergence step (judged on its
    divergence_window), its final loss and the first step each alert fired."""
    from gradwatch.monitor.judging.engine import AlertEngine

    engine = AlertEngine()
    losses, snapshots, geometry = train(recipe, steps, every_n_steps, observers=[engine],
                                        seed=seed)
    first: dict[str, int] = {}
    for alert in engine.history:
        if alert.status == "firing":
            first.setdefault(alert.name, alert.step)
    return {"run": recipe.name, "steps": len(losses),
            "diverged_at": divergence_step(losses, recipe.divergence_window),
            "final_loss": sum(losses[-20:]) / 20, "alerts": first,
            "log_z": snapshots[-1].output_logit_logsumexp,
            "mean_logit": snapshots[-1].output_logit_mean, "geometry": geometry,
            "eps_dominated_ratio": float(np.nanmedian(snapshots[-1].adam_eps_dominated_ratio))}


def sampled_step_cost(steps: int = 40, seed: int = 0) -> dict[str, float]:
    """Median wall time of a sampled step of the TinyDecoder (every_n_steps=1) with and
    without the new statistics (their probe and update table replaced by no-ops), steps
    interleaved; and the aten ops they add per sampled step (torch.profiler)."""
    import statistics
    import time
    from unittest import mock

    from torch.profiler import ProfilerActivity, profile

    from gradwatch.monitor.probes import update_stats
    from gradwatch.monitor.capture.monitor import Monitor

    def setup():
        torch.manual_seed(seed)
        model = TinyDecoder()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        return model, optimizer, Monitor(model, optimizers=[optimizer], every_n_steps=1)

    def one_step(model, optimizer, monitor, step, tokens):
        start = time.perf_counter()
        monitored_step(monitor, step, optimizer, lambda: lm_loss(model, tokens))
        return time.perf_counter() - start

    without = (mock.patch.object(AttentionProbe, "attach", lambda self: []),
               mock.patch.object(update_stats, "record_update", lambda *a: None))
    runs = {"with": setup(), "without": setup()}
    times: dict[str, list[float]] = {"with": [], "without": []}
    ops = {}
    batches = token_batches(steps + 1, seed=seed)
    for step, tokens in enumerate(batches):
        for name in ("with", "without") if step % 2 else ("without", "with"):
            patches = without if name == "without" else ()
            for patch in patches:
                patch.start()
            try:
                if step == steps:  # the last step: counted, not timed
                    with profile(activities=[ProfilerActivity.CPU]) as profiler:
                        one_step(*runs[name], step, tokens)
                    ops[name] = sum(1 for e in profiler.events() if e.name.startswith("aten::"))
                elif step >= 3:  # warm-up
                    times[name].append(one_step(*runs[name], step, tokens))
                else:
                    one_step(*runs[name], step, tokens)
            finally:
                for patch in patches:
                    patch.stop()
    for _, _, monitor in runs.values():
        monitor.close()
    with_ms = 1000 * statistics.median(times["with"])
    without_ms = 1000 * statistics.median(times["without"])
    return {"with_ms": with_ms, "without_ms": without_ms, "added_ms": with_ms - without_ms,
            "added_ops": ops["with"] - ops["without"]}


SECTION = "## Leading indicators of transformer instability (issue 17)"
#: What the seed table shows (written from a run of this benchmark).
SEEDS_VERDICT = (
    "Attention-logit growth holds on every seed: AttentionLogitGrowth at step 50, the loss "
    "diverged at 201-260 (lead 151-210 steps), both twins quiet. The memorising run holds on "
    "every seed, now that its batch is memorisable: AdamUpdateDecorrelation at step 640-660 "
    "and OutputLogitDivergence at 680-700, the spike at 1120, 837 and 1349 (leads 460, 197 "
    "and 689, and 420, 157 and 649 steps). Both are quiet on every twin and every other run "
    "of every seed: the mu-centering, z-loss and label-smoothing twins do collapse their "
    "second moments (where the old rule, the collapse alone, fired), but their gradients do "
    "not grow under it; the z-loss twin's small early bumps, under 0.5 nats, are no "
    "divergence. The "
    "output-embedding anisotropy runs are quiet and do not diverge on any seed (mu 4.6-4.8 "
    "-> 8.5-8.8 while h_bar falls 1.5-1.9 -> 0.9-1.1; mean logit about -6; mu-centering: 0). "
    "The output-logit drift recipe climbs log Z by confidence and raises no "
    "OutputLogitDivergence on any run or seed; seed 0's first run diverges at 367 and the "
    "z-loss twin of seed 2 at 244 with no leading alert. So the issue's criterion (a lead "
    ">= 20 steps, quiet twins) is met on 3 of 3 seeds for attention-logit growth and for "
    "output-logit divergence and for Adam's feedback loop (AdamUpdateDecorrelation). "
    "LossDivergence fires "
    "on the 16-token runs' loss bumps (relative rises of tiny losses): not a leading "
    "indicator, reported as measured.")


def across_seeds(seeds: tuple[int, ...] = (0, 1, 2), every_n_steps: int = 10) -> list[dict]:
    """Every run of every reproduction again with other ``seeds`` (other init and data)."""
    return [dict(run_alerts(r, None, every_n_steps, seed), seed=seed, reproduction=title)
            for title, runs in REPRODUCTIONS.items() for seed in seeds for r in runs]


def _seed_table(results: list[dict]) -> list[str]:
    return _results_table(results, {
        "reproduction": ("---", lambda r: r["reproduction"]),
        "seed": ("---:", lambda r: r["seed"]),
        "run": ("---", _short_name)})


def _short_name(r: dict) -> str:
    """"unstable" / "attempt", or a twin's name without "the same with"."""
    kind, what = r["run"].split(": ", 1)
    if kind in ("unstable", "attempt"):
        return kind
    return f"{kind}: {what.replace('the same with ', '')}"


def _leads(r: dict) -> str:
    """Divergence step - first alert step of each leading alert that fired ("-": none)."""
    return ", ".join(f"{name} {r['diverged_at'] - r['alerts'][name]}" for name in LEADING
                     if name in r["alerts"] and r["diverged_at"] is not None) or "-"


def _table(results: list[dict]) -> list[str]:
    return _results_table(results, {
        "run": ("---", lambda r: r["run"]),
        "steps": ("---:", lambda r: r["steps"]),
        "final loss (last 20)": ("---:", lambda r: f"{r['final_loss']:.3g}")},
        divergence_after=2)


def _geometry_table(results: list[dict]) -> list[str]:
    """_table with the last sample's log Z and mean logit and the lm_head's geometry."""
    def change(key: str):
        return lambda r: " -> ".join(f"{g[key]:.3g}" for g in r["geometry"])

    return _results_table(results, {
        "run": ("---", lambda r: r["run"]),
        "steps": ("---:", lambda r: r["steps"]),
        "final loss (last 20)": ("---:", lambda r: f"{r['final_loss']:.3g}"),
        "log Z": ("---:", lambda r: f"{r['log_z']:.3g}"),
        "mean logit": ("---:", lambda r: f"{r['mean_logit']:.3g}"),
        "mu . h_bar": ("---:", lambda r: f"{r['geometry'][-1]['mu_dot_h_bar']:.3g}"),
        "norm of mu (1/4 -> end)": ("---:", change("mu")),
        "norm of h_bar (1/4 -> end)": ("---:", change("h_bar"))},
        divergence_after=2)


def _results_table(results: list[dict], columns: dict, divergence_after: int = 3) -> list[str]:
    """A markdown table of runs: ``columns`` (header -> (alignment, value of a run)), with the
    divergence step after the first ``divergence_after`` of them, then the alerts and leads."""
    def diverged(r: dict) -> object:
        return r["diverged_at"] if r["diverged_at"] is not None else "-"

    def alerts(r: dict) -> str:
        return ", ".join(f"{name} ({step})" for name, step in r["alerts"].items()) or "none"

    items = list(columns.items())
    items.insert(divergence_after, ("diverged at step", ("---:", diverged)))
    items += [("first alerts (step)", ("---", alerts)),
              ("lead of the leading alerts, steps", ("---", _leads))]
    lines = ["| " + " | ".join(header for header, _ in items) + " |",
             "| " + " | ".join(align for _, (align, _) in items) + " |"]
    lines += ["| " + " | ".join(str(value(r)) for _, (_, value) in items) + " |" for r in results]
    return lines


def _anisotropy(runs: list[dict]) -> list[str]:
    """The output-embedding anisotropy subsection of ``section``."""
    walk, centred = runs
    (early, late), end = walk["geometry"], centred["geometry"][-1]
    return [
        "### Output-embedding anisotropy: the walk without the divergence", "",
        "The mechanism of Stollenwerk et al. 2026 (docs/theory.md § Output-logit divergence), "
        "set up as the issue suggests: a 512-token vocabulary of which the language (64 "
        "tokens, 10% random) uses 64, so 448 tokens are never the target; qk-layernorm (no "
        "attention-logit growth), a final LayerNorm, no lm_head bias; AdamW lr 0.1, no weight "
        "decay, no z-loss, 1,000 steps. Twin: mu-centering (the mean output embedding "
        "subtracted from the lm_head after each step).", "",
        *_geometry_table(runs), "",
        f"The walk is there: the norm of the mean output embedding mu grows from "
        f"{early['mu']:.3g} (step {walk['steps'] // 4}) to {late['mu']:.3g} (step "
        f"{walk['steps']}), the never-target tokens' embeddings stepping one way at Adam's "
        f"full step size. But the final hidden states' mean h_bar shrinks as it grows "
        f"({early['h_bar']:.3g} -> {late['h_bar']:.3g}), so the mean logit, which is exactly "
        f"mu . h_bar ({late['mu_dot_h_bar']:.3g}; the last sample measured "
        f"{walk['mean_logit']:.3g}), stays a few nats below 0, log Z near "
        f"{walk['log_z']:.3g}, and the loss does not diverge. OutputLogitDivergence stays "
        f"quiet, rightly: this is a healthy model with a large unused vocabulary. With "
        f"mu-centering mu is {end['mu']:.1g}, the mean logit 0 and the loss the same "
        f"({centred['final_loss']:.3g} against {walk['final_loss']:.3g}).", "",
        "Tried by hand as well (a plain loop, no monitor), none diverging: a 4,096-token "
        "vocabulary (64 used) at lr 0.1 (300 steps, mean logit -7.3 -> -7.7); lr 0.01 (600 "
        "steps) and 0.03 (2,200 steps); bf16 autocast at lr 0.03 (1,400 steps, as fp32); no "
        "final LayerNorm at lr 0.03 (2,100 steps, mean logit -6 -> -9) and 0.1 (1,500 "
        "steps: the hidden states keep a large mean, norm 7-18 of 14-23, but mu stays near "
        "2.8 and the mean logit rises from -24 to -12); 10% of the tokens drawn Zipfian over "
        "all 512 (3,000 steps, mean logit -3); Adam eps 1e-16 (1,000 steps, the same mean "
        "logit: no eps floor holds it); lr 0.3 (the model never learns, then one logit blows "
        "up to ~190 at step ~380: not a shift). While the loss still has something to learn, "
        "the model keeps its hidden states away from mu; the walk runs free once it has "
        "nothing left to learn (the memorising run below).", ""]


def section(results: dict[str, list[dict]], seeds: list[dict], cost: dict[str, float],
            every_n_steps: int) -> str:
    """The docs/benchmarks.md section of ``reproduce`` and ``sampled_step_cost``."""
    attention, output, anisotropy, adam = (results[title] for title in REPRODUCTIONS)
    lines = [
        SECTION, "",
        f"`PYTHONPATH=. python -m benchmarks.instability`: a 2-layer decoder-only transformer "
        f"(d_model 64, 4 heads, seq 32, pre-LayerNorm, attention through "
        f"`F.scaled_dot_product_attention`, AdamW with 20 warm-up steps, no weight decay) on a "
        f"synthetic language (each token a fixed function of the two before it), sampled "
        f"every {every_n_steps} steps, default Thresholds. The loss has diverged at the first "
        f"step whose 20-step mean is {DIVERGED_NATS} nats above its best 20-step mean so far. "
        f"Lead = divergence step - first alert step. The runs are chaotic, so they train on "
        f"one thread (the same trajectory in the tests and here). The tests "
        f"(tests/test_transformer_indicators.py) train the attention runs of seed 0 for 300 "
        f"steps and the memorising run with its beta2 and mu-centering twins for 1,200, and "
        f"assert each lead >= 20 steps and what the twins show; they train the output-logit "
        f"recipe's first run for its confidence climb.", "",
        "### Attention-logit growth", "",
        "Vocabulary 64, 10% random tokens, batches of 16.", "",
        *_table(attention), "",
        "This run fails by attention-logit growth (the max logit passes 100 by step 50 and "
        "keeps growing to ~1e5, the attention entropy collapses to ~0); OutputLogitDivergence "
        "and AdamUpdateDecorrelation stay quiet on all three runs, as they should (log Z stays "
        "near log 64 ~ 4.2 to 6.6, the median update/gradient cosine near 0.3-0.5).", "",
        "LossDivergence does not fire on this run, by design: its loss climbs from a 3.50 "
        "plateau to 4.08 and stays there (uniform guessing is 4.16), 1.17x, below "
        "LossDivergence's 1.5x factor. The leading indicator covers it: AttentionLogitGrowth "
        "fires at step 50 on every seed, 150+ steps before the 20-step mean loss is 0.5 nats "
        "above its best (table across seeds below). A factor loose enough for 1.17x would "
        "fire on healthy loss bumps (the z-loss twin below goes 0.16 -> 0.39, a warm restart "
        "raises the loss by more), so LossDivergence is unchanged.", "",
        "### Output-logit drift: a confidence climb, not a divergence", "",
        "Vocabulary 16, no random tokens (only the first target is unpredictable), no final "
        "LayerNorm, a bias on the lm_head, lr 0.03; twins: z-loss 1e-4, and a final LayerNorm "
        "(whose attention logits grow past 100 at this learning rate: AttentionLogitGrowth "
        "fires there, rightly). log Z climbs from log 16 ~ 2.8 to 17-21 by step 180 on every "
        "seed. Decomposed as log Z = mean logit + logsumexp(logits - mean logit), the mean "
        "logit (the shift the loss cannot see) stays within +-1 nat on all three runs and every "
        "seed measured: the climb is the model growing confident (the second term), which a "
        "healthy classifier shows as well (Adam 1e-2 on separable clusters: log Z 2 -> 19, "
        "loss 1e-8). With z-loss, the shift falls to about -12 and holds log Z at 3-10. The "
        "rule that judged log Z's drift itself fired on the first run (step 80) and the "
        "final-LayerNorm twin (step 320), and would on that classifier; the rule that judges "
        "the shift stays quiet on them (tests/test_transformer_indicators.py "
        "trains the classifier and the first decoder). On seed 0 the first run's loss "
        "diverges at step 367 in a sudden spike (log Z 18 -> 36 -> 88 within 20 steps) that "
        "no statistic here announces: the level rule (|log Z| above 100, where bf16 logits "
        "are spaced 0.5 apart; lower would page on the steady offset of pretrained models) "
        "can only come after it.",
        "",
        *_table(output), "",
        "No drift of the shift on this recipe's relatives either: the 64-token language with no "
        "final LayerNorm and an lm_head bias kept its mean logit within 0.1 nat over 600 steps "
        "at lr 0.03 and at lr 0.01 with beta2 0.95; at lr 0.1 everything blew up at once by "
        "step 20 (mean logit -8 -> +54, log Z 320). The shift walks on the memorising run "
        "below (after its second moment collapsed), the reproduction of output-logit "
        "divergence; the shift rule is also tested on synthetic series.",
        "",
        *_anisotropy(anisotropy),
        "### Adam instability (arXiv 2304.09871) and output-logit divergence", "",
        "Vocabulary 16, no random tokens, ONE batch of 4 sequences trained on over and over; no"
        " two share a first token, so every target is determined and the loss can reach 0 (seed"
        " 1's batch repeated one, a loss floor of 2 ln 2 / 128 that kept its gradients alive, "
        "and spiked at step 247 for another reason: distinct first tokens make it a clean "
        "instance). AdamW lr 0.01 with beta2 0.95 (eps 1e-8), 1,600 steps. The loss falls to "
        "~1e-8, the gradients with it, and Adam's second moment decays to eps size (the median "
        "eps-dominated ratio passes 0.5 near step 350-390 and reaches 1.0). From then on Adam "
        "steps like SGD at lr / eps, and the gradient norm, ~6e-8 at its low near step 480, "
        "grows under it (x4 by step 640, x8 by 800): AdamUpdateDecorrelation fires at 660 "
        "(640-660 on seeds 0-2). Nothing in the loss holds the logits' shared shift: the mean output "
        "embedding mu and the final hidden states' mean h_bar grow along each other and the "
        "mean logit, mu . h_bar, walks hundreds of nats below 0 (seed 0: -0.5 at step 450, -1.2"
        " at 500, -17 at 650, -815 at 1100), log Z and even the max logit with it (log Z 18 -> "
        "-794, max logit -773). This is the output-logit divergence of Wortsman et al. (logits "
        "very negative, late in training), through the anisotropy of Stollenwerk et al. "
        "OutputLogitDivergence fires at 680-700, once the shift has carried log Z 10 nats "
        "beyond 0. Then the loss spikes from ~1e-8 to ~2 nats (GradientExplosion, LossSpike). "
        "It recovers within 20 steps, so the 20-step divergence rule never trips; for this "
        "reproduction divergence is judged on single steps (the first step 0.5 nats above the "
        "best loss so far). In the table, log Z and the mean logit are the last sample's (after"
        " the spike); mu and h_bar are measured after a quarter of the steps and at the end.", "",
        "The twins say which is cause: with beta2 0.999 the second moment does not collapse "
        "within 1,600 steps, nothing walks, nothing spikes, no alert. mu-centering removes the "
        "walk (mean logit 0, log Z ~22 from confidence alone) and the spike with it, on every "
        "seed, though the second moment collapses as before: its gradient keeps falling "
        "(3e-8 -> 4e-10), no feedback loop runs, and AdamUpdateDecorrelation, which judges the "
        "gradient's growth since the collapse, stays quiet (the collapse alone fired it at 390 "
        "on every seed before; measured growth since the collapse on the twins: at most 2.2x, "
        "against 9.7-15x on the unstable runs). z-loss holds log Z at ~0 (the mean logit at "
        "~-19): no walk, only small early "
        "bumps (below 0.5 nats), OutputLogitDivergence quiet. Label smoothing 0.1 stops the "
        "loss at its smoothed optimum (0.565), where the gradients still vanish, slowly: on "
        "seed 1 the second moment collapses by step 1400 with a steady gradient (no alert; "
        "no spike follows within 2,600 steps, measured by hand).", "",
        *_geometry_table(adam), "",
        "Not reproduced on CPU: the cosine half of AdamUpdateDecorrelation (median "
        "update/gradient cosine below 0.05). Too-high learning rates, beta1 0.99 and beta2 "
        "0.5 on the 64-token language brought the median cosine down to 0.07-0.2 at most, "
        "with no divergence within 300 steps; on the runs above it stays 0.3-0.9. That rule "
        "is tested on synthetic series only.", "",
        "### Across seeds", "",
        "Seeds 0 (the tests' seed, the tables above), 1 and 2: other initialisation and data. "
        "Lead = divergence step - first alert step.", "",
        *_seed_table(seeds), "",
        SEEDS_VERDICT, "",
        "### Cost", "",
        f"Cost of the new statistics per sampled step of the attention model (every_n_steps=1, "
        f"median of interleaved steps; 2 shared CPU cores, so only a rough figure): "
        f"{cost['with_ms']:.1f} ms with them, {cost['without_ms']:.1f} ms without, "
        f"{cost['added_ms']:+.1f} ms; {cost['added_ops']:+d} aten ops per sampled step "
        f"(exact; before this bounding, +2,103 ops and +9.7 ms). Of the 2,103, 1,734 were the "
        f"update statistics (a dot product, norms and an eps count per parameter); on an "
        f"accelerator or in half precision they are reduced over concatenated buckets with "
        f"one segment_reduce, while a float32 CPU model takes a BLAS dot per parameter, more "
        f"ops (+404 with the buckets) for less time (issue 18: \"Cost of a sampled step, part "
        f"by part\"); 369 were the attention "
        f"probe, now one fused pass per call (max and entropy from the row maxima, scale and "
        f"causal mask folded into one baddbmm with a cached bias, the calls' figures stacked "
        f"once). The entropy's logits are bounded at the batch's first {MAX_SEQUENCES} "
        f"sequences x all heads x at most {MAX_QUERY_ROWS} evenly spaced query rows x the "
        f"keys per call; the maximum is exact (issue 26), over the whole call in chunks of "
        f"at most {CHUNK_LOGITS:,} logits. Unsampled steps: nothing added.", "",
    ]
    return "\n".join(lines)


def write_section(text: str, path: Path = Path("docs/benchmarks.md")) -> None:
    """Put ``text`` in place of the section in ``path`` (it is the file's last section)."""
    current = path.read_text()
    kept = current.split(SECTION)[0].rstrip("\n")
    path.write_text(f"{kept}\n\n{text}")


def kept_section(path: Path) -> str:
    """This section of an existing report (for benchmarks/overhead.py to keep), or ""."""
    if not path.exists() or SECTION not in path.read_text():
        return ""
    return "\n" + SECTION + path.read_text().split(SECTION, 1)[1]


def seed_zero(seeds: list[dict]) -> dict[str, list[dict]]:
    """The seed-0 runs of ``across_seeds``, per reproduction (the tables of the section)."""
    return {title: [r for r in seeds if r["reproduction"] == title and r["seed"] == 0]
            for title in REPRODUCTIONS}


if __name__ == "__main__":
    torch.set_num_threads(1)
    seeds = across_seeds()
    for result in seeds:
        print(result)
    results = seed_zero(seeds)
    cost = sampled_step_cost()
    print(cost)
    write_section(section(results, seeds, cost, every_n_steps=10))
