"""The metric contract: every ``gradwatch_*`` metric, its meaning, unit, labels and healthy range.

The Prometheus exporter takes its help texts from here and ``docs/metrics.md`` is generated
from here (a test keeps both in step), so the documentation cannot drift from the code.
Every metric also carries the labels ``run`` and, when the world size is above 1, ``rank``:
``rank="all"`` for the figures that are the same on every rank, exported once by rank 0.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable
from dataclasses import dataclass

from .thresholds import Thresholds

EVERY_STEP = "every step"
SAMPLED = "sampled steps"


@dataclass(frozen=True)
class MetricSpec:
    """One exported metric. ``healthy`` may name Thresholds fields as ``{t.field}``."""

    name: str
    kind: str  # gauge | counter | histogram
    help: str
    unit: str
    cadence: str
    healthy: str
    labels: tuple[str, ...] = ()


def _spec(name: str, kind: str, help: str, unit: str, cadence: str, healthy: str,
          labels: Iterable[str] = ()) -> MetricSpec:
    return MetricSpec(f"gradwatch_{name}", kind, help, unit, cadence, healthy, tuple(labels))


LAYER = ("layer",)
#: the activation statistics that a large output's sample estimates (monitor/probes/record_batches.py)
_ESTIMATED = (" Of an output above activation_sample values (default 2**16) and above 2**17: "
              "estimated from random whole rows of about that many values (max abs and "
              "NaN/Inf counts stay exact).")
_SPECS = (
    _spec("step", "gauge", "Global step of the latest finished step.", "steps", EVERY_STEP,
          "increases steadily; flat means training stalled"),
    _spec("last_step_timestamp_seconds", "gauge", "Unix time the latest step ended.",
          "seconds", EVERY_STEP, "within {t.stalled_seconds} s of now while training"),
    _spec("step_seconds", "gauge", "Wall-clock seconds between the ends of this rank's latest "
          "two steps (data loading included): the rank view of stragglers.", "seconds",
          EVERY_STEP, "about the same on every rank; one rank slower is a straggler"),
    _spec("run_finished", "gauge", "1 once the run ended cleanly (the last scrape or push "
          "keeps it), else 0: TrainerDown and TrainingStalled stay quiet for a finished run.",
          "boolean", "at the end", "0 while training, 1 after a clean end"),
    _spec("loss", "gauge", "Loss of the latest step (sum of its micro-batch losses).", "loss",
          EVERY_STEP, "finite, trending down; one step above {t.loss_spike_factor}x the rolling "
          "median is a spike, a level {t.loss_divergence_factor}x where it stood is divergence"),
    # issue 27: the loss detectors' own figures, counted in steps (records.loss_level), so
    # the rules judge as the trainer does at any pace (a scrape sees one step in many)
    _spec("loss_median", "gauge", "Median loss of the last history_steps steps whose loss "
          "was no spike: LossSpike's reference, over steps (every step seen). Absent until the "
          "loss is judged: loss_warmup_steps steps after the run's start or a jump of the "
          "learning rate (a warm restart, a step up), with history_min_steps steps of "
          "history.", "loss", EVERY_STEP, "follows the level of gradwatch_loss"),
    _spec("loss_log_sigma", "gauge", "Robust sigma of log(loss) over the steps of "
          "gradwatch_loss_median (their IQR / 1.349). Absent until the loss is judged.",
          "log(loss)", EVERY_STEP, "steady; a loss above {t.loss_spike_factor}x the median "
          "and {t.loss_noise_sigmas} of these above it is a spike"),
    _spec("loss_recent_median", "gauge", "Median loss of the last "
          "loss_divergence_steps steps: the loss's current level (LossDivergence). "
          "Absent until the loss is judged.", "loss", EVERY_STEP,
          "at or below gradwatch_loss_reference_median; {t.loss_divergence_factor}x above "
          "it and {t.loss_divergence_sigmas} of its robust sigmas is divergence"),
    _spec("loss_reference_median", "gauge", "Median loss of up to history_steps steps "
          "before those of gradwatch_loss_recent_median, held where the loss stood while it "
          "diverges: LossDivergence's reference. Absent until the loss is judged.", "loss",
          EVERY_STEP, "falls as the model learns"),
    _spec("loss_reference_log_sigma", "gauge", "Robust sigma of log(loss) over the steps of "
          "gradwatch_loss_reference_median (their IQR / 1.349). Absent until the loss is "
          "judged.", "log(loss)", EVERY_STEP, "steady"),
    _spec("loss_spike_steps", "counter", "Steps whose loss was a spike (above "
          "loss_spike_factor x gradwatch_loss_median and loss_noise_sigmas robust "
          "sigmas of log(loss) above it), by kind: lone (one hard batch: no spike in the "
          "loss_spike_repeat_steps steps before, the global gradient norm steady), repeat "
          "(another spike within loss_spike_repeat_steps steps before) or gradient_spike "
          "(the step's global gradient norm spiked too, by the same two bars against its own "
          "median). LossSpike warns on repeat and gradient_spike.", "steps", EVERY_STEP,
          "a lone one now and then (hard batches); no repeat or gradient_spike", ("kind",)),
    _spec("global_grad_norm", "gauge", "L2 norm over all gradients of the latest step, before "
          "clipping.", "L2 norm", EVERY_STEP, "finite, stable; above {t.explosion_norm} or "
          "{t.explosion_spike_factor}x the recent max is an explosion"),
    _spec("step_global_grad_norm", "histogram", "Every step's global gradient norm, so that a "
          "one-step spike between two scrapes is still seen (a non-finite norm counts in the "
          "+Inf bucket only, not in the sum).", "L2 norm",
          EVERY_STEP, "no observations above {t.explosion_norm}"),
    _spec("clipped_grad_norm", "gauge", "L2 norm over all gradients after clipping (when "
          "clipping is configured).", "L2 norm", EVERY_STEP, "at most the clipping threshold"),
    _spec("grad_clip_engaged", "counter", "Steps on which gradient clipping reduced the "
          "norm.", "steps", EVERY_STEP, "occasional; clipping on every step hides a "
          "too-high learning rate"),
    _spec("learning_rate", "gauge", "Learning rate of each optimizer param group.", "lr",
          EVERY_STEP, "as scheduled", ("optimizer", "group")),
    _spec("amp_loss_scale", "gauge", "AMP GradScaler scale (mixed precision).", "factor",
          EVERY_STEP, "stable or growing; a falling scale means overflows"),
    _spec("amp_skipped_steps", "counter", "Steps the AMP GradScaler skipped because "
          "gradients overflowed.", "steps", EVERY_STEP,
          "fewer than {t.amp_skipped_steps} per {t.history_steps} steps"),
    _spec("amp_overflow_steps", "counter", "Steps the AMP GradScaler skipped after its "
          "first applied step (its skips before are it calibrating its initial scale): "
          "what AmpOverflowStorm counts.", "steps", EVERY_STEP,
          "fewer than {t.amp_skipped_steps} per {t.history_steps} steps"),
    _spec("nonfinite", "counter", "Non-finite values seen (kind nan, posinf, neginf), per "
          "source (gradient, activation, parameter on sampled steps; loss every step, layer "
          "\"\").", "values", SAMPLED, "0", ("source", "layer", "kind")),
    _spec("nonfinite_steps", "counter", "Steps whose loss or global gradient norm was not "
          "finite (source loss or gradient; checked every step); under DDP also "
          "local_gradient: steps that began a run of non-finite steps with this rank's own "
          "gradients (before the all-reduce): the rank a NaN came from.", "steps", EVERY_STEP, "0", ("source",)),
    _spec("grad_norm", "gauge", "L2 norm of the layer's gradients before clipping.",
          "L2 norm", SAMPLED, "of similar magnitude across depth; a collapse toward the "
          "input below {t.vanishing_depth_ratio}x is vanishing", LAYER),
    _spec("weight_norm", "gauge", "L2 norm of the layer's parameters.", "L2 norm", SAMPLED,
          "slowly changing; fast growth precedes explosions", LAYER),
    _spec("update_ratio", "gauge", "||W_after - W_before|| / ||W_before|| of the last "
          "optimizer step.", "ratio", SAMPLED,
          "{t.update_ratio_low} .. {t.update_ratio_high} (about 1e-3)", LAYER),
    _spec("activation_mean", "gauge", "Mean of the layer's activation."
          + _ESTIMATED, "value", SAMPLED,
          "near 0 for symmetric activations", LAYER),
    _spec("activation_variance", "gauge", "Variance of the layer's activation."
          + _ESTIMATED, "value^2",
          SAMPLED, "about the same in every layer; a steady drift across depth means "
          "vanishing or exploding signals", LAYER),
    _spec("activation_saturation_ratio", "gauge", "Fraction of sigmoid/tanh outputs in the "
          "flat region." + _ESTIMATED, "ratio", SAMPLED, "below {t.saturation_ratio}", LAYER),
    _spec("activation_dead_ratio", "gauge", "Fraction of exact-zero activation values (dead "
          "ReLU units)." + _ESTIMATED, "ratio", SAMPLED, "below {t.dead_ratio} (about 0.5 is normal for "
          "ReLU)", LAYER),
    _spec("activation_max_abs", "gauge", "Max |x| of the layer's activation, "
          "exact (every value read).", "value",
          SAMPLED, "far below 65504 in fp16 (headroom above {t.fp16_headroom_bits} bits)",
          LAYER),
    _spec("layer_depth", "gauge", "Position of the layer in forward order, 0 = input side.",
          "index", SAMPLED, "constant", LAYER),
    _spec("layers", "gauge", "Number of monitored layers (beyond max_exported_layers, only "
          "the most offending ones have their own series).", "layers", SAMPLED, "constant"),
    _spec("layer_group", "gauge", "Models deeper than max_exported_layers: min, median, max "
          "and argmax (the depth of the max) of a per-layer statistic (metric) over the "
          "layers of a depth group (depth_group: first-last depth); for update_ratio also "
          "pooled, the group's own ratio over its updated parameters.", "as metric", SAMPLED,
          "as the per-layer metric", ("metric", "depth_group", "stat")),
    _spec("regime", "gauge", "1 for the run's current regime (worst firing alert): healthy, "
          "vanishing, exploding or nonfinite.", "one-hot", "on alert", "healthy",
          ("regime",)),
    _spec("alerts", "counter", "Alerts fired by the trainer.", "alerts", "on alert", "0",
          ("alertname",)),
    _spec("overhead_seconds", "counter", "Time the monitor spent on the training thread.",
          "seconds", EVERY_STEP, "a few percent of training time at most"),
    _spec("snapshots", "counter", "Sampled steps with full per-layer statistics.",
          "snapshots", SAMPLED, "one per every_n_steps steps"),
    _spec("export_dropped", "counter", "Export items dropped because the export queue was "
          "full.", "items", EVERY_STEP, "0"),
    # issue 17: leading indicators of transformer instability, skip-on-spike
    _spec("attention_logit_max", "gauge", "Max pre-softmax attention logit q.k/sqrt(d) of the "
          "module (label layer) that computed attention (F.scaled_dot_product_attention, "
          "nn.MultiheadAttention, Hugging Face eager/sdpa attention), exact: over every "
          "sequence, head and query position of the sampled step's calls, masks and biases "
          "included.", "logit", SAMPLED,
          "in the tens; above {t.attention_logit_level} or growing "
          "{t.attention_logit_growth_factor}x is attention-logit growth", LAYER),
    _spec("attention_entropy", "gauge", "Mean softmax entropy of the module's attention rows, "
          "estimated to bound the cost: over all heads, the batch's first 4 sequences and at "
          "most 64 evenly spaced query positions per call.", "nats", SAMPLED,
          "well above 0; a collapse toward 0 comes with attention-logit growth", LAYER),
    _spec("output_logit_logsumexp", "gauge", "Mean over the batch of the log-partition log Z "
          "of the output logits: those of the model's logit head (lm_head, Hugging Face's output "
          "embeddings, else the Linear whose output the model returns as its logits); a model "
          "without one (a regression) has none.", "nats",
          SAMPLED, "near log(vocabulary) at first; it climbs as the model grows confident "
          "(10+ nats on a low-entropy task is healthy); |log Z| above "
          "{t.output_logsumexp_level}, or drifting {t.output_logsumexp_drift} nats through "
          "the logits' shared shift (their mean, judged in-process), is output-logit "
          "divergence"),
    _spec("output_logit_max", "gauge", "Max output logit.", "logit", SAMPLED,
          "steady; fast growth comes with output-logit divergence"),
    _spec("output_logit_mean", "gauge", "Mean output logit over the batch and the "
          "vocabulary: the logits' shared shift, which the softmax and the loss cannot see.",
          "logit", SAMPLED, "steady (any offset); a drift of {t.output_logsumexp_drift} nats "
          "that carries log Z with it is output-logit divergence"),
    _spec("update_grad_cosine", "gauge", "cos(W_before - W_after, grad) of the layer's last "
          "optimizer step.", "cosine", SAMPLED, "1 for plain SGD; clearly positive early "
          "(about 0.3-0.7), falling toward 0 near convergence (gradient noise); below "
          "{t.update_grad_cosine_low} with an eps-dominated Adam it is decorrelation",
          LAYER),
    _spec("adam_eps_dominated_ratio", "gauge", "Fraction of the layer's Adam second-moment "
          "elements with sqrt(v_hat) <= 10 eps (Adam-family optimizers).", "ratio", SAMPLED,
          "near 0 (1 for parameters without gradient); a median over layers above "
          "{t.eps_dominated_ratio} means eps sets the steps", LAYER),
    _spec("skipped_updates", "counter", "Optimizer updates undone by skip-on-spike (an "
          "outlier loss or global gradient norm).", "steps", EVERY_STEP,
          "0, or rare; skip-on-spike is off by default"),
)
METRICS: dict[str, MetricSpec] = {spec.name: spec for spec in _SPECS}


def spec(name: str) -> MetricSpec:
    """The spec of ``gradwatch_<name>``."""
    return METRICS[f"gradwatch_{name}"]


def exposed_name(metric: MetricSpec) -> str:
    """The family name as scraped: counters carry ``_total``."""
    return metric.name + ("_total" if metric.kind == "counter" else "")


def render_markdown(thresholds: Thresholds | None = None) -> str:
    """``docs/metrics.md``: every metric with its meaning, unit, labels and healthy range."""
    t = thresholds or Thresholds()
    lines = [
        "# Metrics",
        "",
        "Generated from `monitor/records/metrics.py` (`gradwatch metrics-doc`); a test keeps it in "
        "step with the code. Every metric has the label `run`, and `rank` when the world "
        "size is above 1: `rank=\"all\"` for what is the same on every rank (per-layer "
        "gradient, weight and update figures, activations over all ranks, global norm, "
        "learning rate, AMP), exported once by rank 0. Non-finite values (NaN, +Inf, -Inf) "
        "are exported as such. Healthy ranges use the default `Thresholds`.",
        "",
        "| metric | type | labels | unit | updated | meaning | healthy |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for metric in METRICS.values():
        labels = ", ".join(f"`{label}`" for label in metric.labels) or "-"
        lines.append(
            f"| `{exposed_name(metric)}` | {metric.kind} | {labels} | {metric.unit} | "
            f"{metric.cadence} | {metric.help} | {metric.healthy.format(t=t)} |")
    return "\n".join(lines) + "\n"


def _docstring_section(doc: str, title: str) -> dict[str, str]:
    """The ``name: text`` entries of a Google-style section (``Args:``), lines joined."""
    entries: dict[str, str] = {}
    name = ""
    for line in inspect.cleandoc(doc).partition(f"\n{title}:\n")[2].splitlines():
        if line and not line.startswith(" "):
            break   # the next section
        if re.match(r" {4}\S", line):
            name, _, text = line.strip().partition(": ")
            entries[name] = text
        elif line.strip():
            entries[name] += " " + line.strip()
    return entries


def render_arguments(cls: type) -> str:
    """``docs/arguments.md``: the arguments of ``cls`` (``TrainingDiagnostics``), each with its
    default (from the signature) and meaning (from the docstring's ``Args:``)."""
    defaults = {name: p.default for name, p in inspect.signature(cls).parameters.items()}
    lines = [
        f"# Arguments of `{cls.__name__}`",
        "",
        f"Generated from the docstring and signature of `{cls.__module__}.{cls.__name__}` "
        "(`gradwatch metrics-doc --arguments`); a test keeps it in step with the code.",
        "",
        "| argument | default | meaning |",
        "| --- | --- | --- |",
    ]
    for names, text in _docstring_section(cls.__doc__ or "", "Args").items():
        shown = dict.fromkeys(f"`{defaults[n]!r}`" for n in names.split(", "))
        lines.append(f"| {', '.join(f'`{n}`' for n in names.split(', '))} | "
                     f"{', '.join(shown)} | {_markdown(text)} |")
    raises = _docstring_section(cls.__doc__ or "", "Raises")
    lines += ["", *(f"Raises `{name}`: {_markdown(text)}" for name, text in raises.items())]
    return "\n".join(lines) + "\n"


def _markdown(text: str) -> str:
    """Docstring text in a Markdown table cell: ``code`` as `code`, ``|`` escaped."""
    return text.replace("``", "`").replace("|", "\\|")
