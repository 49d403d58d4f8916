"""CPU reproductions of transformer instability (issue 17) and their healthy twins.

A tiny decoder-only transformer WITHOUT qk-layernorm trained with AdamW at a high learning
rate grows its attention logits, then diverges (Wortsman et al. 2023, arXiv 2309.14322);
its twins (a lower learning rate, or qk-layernorm) stay healthy. ``python -m
benchmarks.instability`` trains each under gradwatch and reports each leading detector's
first alert, the step the loss diverged and the cost of the new statistics per sampled step.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from monitor.attention import MAX_QUERY_ROWS, AttentionProbe


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
    """Token + position embeddings, ``layers`` Blocks, a final LayerNorm and an lm_head."""

    def __init__(self, vocab: int = 64, seq: int = 32, d_model: int = 64, heads: int = 4,
                 layers: int = 2, qk_norm: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.position = nn.Embedding(seq, d_model)
        self.blocks = nn.Sequential(*(Block(d_model, heads, qk_norm) for _ in range(layers)))
        self.norm = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        return self.lm_head(self.norm(self.blocks(self.embed(tokens) + self.position(positions))))


def token_batches(steps: int, batch: int = 16, seq: int = 33, vocab: int = 64, seed: int = 0):
    """A learnable synthetic language: each token is a fixed function of the two before it,
    with 10% noise tokens."""
    generator = torch.Generator().manual_seed(seed)
    table = torch.randint(vocab, (vocab, vocab), generator=generator)
    out = []
    for _ in range(steps):
        tokens = torch.randint(vocab, (batch, seq), generator=generator)
        for i in range(2, seq):
            follow = table[tokens[:, i - 2], tokens[:, i - 1]]
            noise = torch.rand(batch, generator=generator) < 0.1
            tokens[:, i] = torch.where(noise, tokens[:, i], follow)
        out.append(tokens)
    return out


#: The reproductions: (name, learning rate, qk-layernorm). The first diverges.
RUNS = (("unstable: AdamW lr 0.1, no qk-layernorm", 0.1, False),
        ("healthy twin: lr 0.03", 0.03, False),
        ("healthy twin: lr 0.1 with qk-layernorm", 0.1, True))


def lm_loss(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy of ``model`` on ``tokens`` [batch, seq + 1]."""
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


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


def train(lr: float, qk_norm: bool, steps: int, every_n_steps: int = 10, observers=(),
          seed: int = 0):
    """Train a TinyDecoder with AdamW (20 warm-up steps) under a Monitor; returns the
    per-step losses and the Snapshots."""
    from monitor.monitor import Monitor

    class Keep:
        def __init__(self):
            self.snapshots = []

        def on_pulse(self, pulse, monitor):
            pass

        def on_snapshot(self, snapshot, monitor):
            self.snapshots.append(snapshot)

    torch.manual_seed(seed)
    model = TinyDecoder(qk_norm=qk_norm)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    keep = Keep()
    monitor = Monitor(model, optimizers=[optimizer], every_n_steps=every_n_steps,
                      observers=[keep, *observers])
    losses = []
    for step, tokens in enumerate(token_batches(steps, seed=seed)):
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 20)
        loss = monitored_step(monitor, step, optimizer, lambda: lm_loss(model, tokens))
        losses.append(loss.item())
    monitor.close()
    return losses, keep.snapshots


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


def reproduce(steps: int = 600, every_n_steps: int = 10, seed: int = 0) -> list[dict]:
    """Each RUN under the default detectors: its divergence step and its first alerts."""
    from monitor.alerts import AlertEngine

    results = []
    for name, lr, qk_norm in RUNS:
        engine = AlertEngine()
        losses, _ = train(lr, qk_norm, steps, every_n_steps, observers=[engine], seed=seed)
        first: dict[str, int] = {}
        for alert in engine.history:
            if alert.status == "firing":
                first.setdefault(alert.name, alert.step)
        results.append({"run": name, "diverged_at": divergence_step(losses),
                        "final_loss": sum(losses[-20:]) / 20, "alerts": first})
    return results


def sampled_step_cost(steps: int = 40, seed: int = 0) -> dict[str, float]:
    """Median wall time of a sampled step of the TinyDecoder (every_n_steps=1) with and
    without the new statistics (their probe and update table replaced by no-ops), steps
    interleaved; and the aten ops they add per sampled step (torch.profiler)."""
    import statistics
    import time
    from unittest import mock

    from torch.profiler import ProfilerActivity, profile

    from monitor import update_stats
    from monitor.monitor import Monitor

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


def section(results: list[dict], cost: dict[str, float], steps: int, every_n_steps: int) -> str:
    """The docs/benchmarks.md section of ``reproduce`` and ``sampled_step_cost``."""
    lines = [
        SECTION, "",
        f"`PYTHONPATH=. python -m benchmarks.instability`: a 2-layer decoder-only transformer "
        f"(d_model 64, 4 heads, seq 32, vocabulary 64, pre-LayerNorm, attention through "
        f"`F.scaled_dot_product_attention`, AdamW with 20 warm-up steps), {steps} steps on a "
        f"synthetic language, sampled every {every_n_steps} steps, default Thresholds. The "
        f"loss has diverged at the first step whose 20-step mean is {DIVERGED_NATS} nats above "
        f"its best 20-step mean so far. Lead = divergence step - first alert step.", "",
        "| run | diverged at step | final loss (last 20) | first alerts (step) | lead, steps |",
        "| --- | ---: | ---: | --- | ---: |",
    ]
    for r in results:
        alerts = ", ".join(f"{name} ({step})" for name, step in r["alerts"].items()) or "none"
        leads = [r["diverged_at"] - r["alerts"][name] for name in LEADING
                 if name in r["alerts"] and r["diverged_at"] is not None]
        lines.append(f"| {r['run']} | {r['diverged_at'] if r['diverged_at'] is not None else '-'}"
                     f" | {r['final_loss']:.3f} | {alerts} | "
                     f"{max(leads) if leads else '-'} |")
    lines += [
        "",
        "This reproduction fails by attention-logit growth (the max logit passes 100 by step "
        "50 and keeps growing to ~1e5, the attention entropy collapses to ~0): "
        "OutputLogitDivergence and AdamUpdateDecorrelation stay quiet on all three runs, as "
        "they should (log Z stays near log 64 ~ 4.2 to 6.6, the median update/gradient cosine "
        "near 0.3-0.5). Their own failure modes (log Z drifting without z-loss, Adam's second "
        "moment collapsing) take far longer runs to appear and have no CPU reproduction here; "
        "their rules are tested on synthetic series (tests/test_transformer_indicators.py).",
        "",
        f"Cost of the new statistics per sampled step of this model (every_n_steps=1, "
        f"median of interleaved steps; 2 shared CPU cores, so only a rough figure): "
        f"{cost['with_ms']:.1f} ms with them, {cost['without_ms']:.1f} ms without, "
        f"{cost['added_ms']:+.1f} ms; {cost['added_ops']:+d} aten ops per sampled step "
        f"(exact). Most of the time is Python: every torch call of the sampled forward passes "
        f"through the TorchFunctionMode, and every module gets a pre- and post-hook for "
        f"that step. The added ops grow with the attention calls and parameters, not with "
        f"the sequence (logits of at most {MAX_QUERY_ROWS} query rows per call). Unsampled "
        f"steps: nothing added.", "",
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


if __name__ == "__main__":
    torch.set_num_threads(1)
    results = reproduce()
    for result in results:
        print(result)
    cost = sampled_step_cost()
    print(cost)
    write_section(section(results, cost, steps=600, every_n_steps=10))
