"""The alert table: every alert gradwatch raises, in one place.

The detectors, the generated Prometheus rules (``monitor/ops/rules.py``), the dashboards, the
``doctor`` command and the docs all read this table, so none of them can disagree on an
alert's severity, regime, labels, headline, remedy or runbook section (a test checks them).
No torch, no numpy: anything may import it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .regimes import EXPLODING, NONFINITE, VANISHING

CRITICAL, WARNING, INFO = "critical", "warning", "info"
#: Where an alert is raised: in the training process, by the Prometheus rules, or both.
IN_PROCESS, RULES = "in-process", "rules"
#: Default base of the runbook links (``runbook_url`` = base + "#" + anchor). Alert
#: notifications are read far from the repository, so the link is absolute; point it at
#: your own copy of docs/runbook.md with ``runbook_base_url``.
RUNBOOK_BASE_URL = "https://github.com/gradwatch/gradwatch/blob/main/docs/runbook.md"


@dataclass(frozen=True)
class AlertSpec:
    """One alert: what it is called, how loud, and what to do about it.

    ``summary`` is the headline of a Prometheus notification, with ``{run}`` and ``{layer}``
    (", layer x" or nothing) filled in; the in-process alert's summary adds its figures.
    ``labels`` are the labels that identify one firing (besides alertname, severity and
    regime): a run-wide alert (no "layer") names its culprit layers in the bounded
    ``layers`` annotation instead, so the trainer's and Prometheus' copies share labels.
    """

    name: str
    severity: str
    regime: str | None
    labels: tuple[str, ...]
    summary: str
    remedy: str
    sources: tuple[str, ...]

    @property
    def anchor(self) -> str:
        """The runbook section: docs/runbook.md#<name lower-cased>."""
        return self.name.lower()

    def runbook_url(self, base: str = RUNBOOK_BASE_URL) -> str:
        return f"{base}#{self.anchor}"


def check_runbook_base_url(base: object) -> str:
    """``base`` if it is an absolute http(s) URL without a fragment.

    Raises:
        ValueError: anything else, naming ``runbook_base_url`` (a notification is read far
            from the repository: a relative path cannot be clicked).
    """
    if not (isinstance(base, str) and base.startswith(("http://", "https://"))
            and "#" not in base and len(base) > len("https://")):
        raise ValueError(f"runbook_base_url must be an absolute http(s) URL without '#', "
                         f"got {base!r}")
    return base


BOTH = (IN_PROCESS, RULES)
RUN, RUN_LAYER = ("run",), ("run", "layer")

TABLE: tuple[AlertSpec, ...] = (
    AlertSpec(
        "NonFiniteValues", CRITICAL, NONFINITE, RUN,
        "Non-finite values (NaN/Inf) in run {run}{layer}",
        "Restart from the last finite checkpoint; check the batch of the step for NaN/Inf "
        "inputs or labels and the origin module for log/sqrt/division of non-positive values; "
        "under fp16 use a GradScaler or bf16.", BOTH),
    AlertSpec(
        "GradientExplosion", CRITICAL, EXPLODING, RUN,
        "Gradient explosion in run {run}{layer}",
        "Clip gradients (torch.nn.utils.clip_grad_norm_, max_norm=1.0); lower the learning "
        "rate or add warm-up; check the initialisation scale of the culprit layer; add "
        "normalisation or residual connections.", BOTH),
    AlertSpec(
        "LossDivergence", CRITICAL, EXPLODING, RUN,
        "Loss diverging in run {run}{layer}",
        "Lower the learning rate (or add warm-up) and resume from a checkpoint before the "
        "rise; clip gradients; for transformers, qk-layernorm or z-loss keep attention "
        "logits bounded.", BOTH),
    AlertSpec(
        "LossSpike", WARNING, None, RUN,
        "Loss spike in run {run}{layer}",
        "Look at the batch of the step (bad data, wrong labels, a huge target); if spikes "
        "recur, lower the learning rate or clip gradients; skipping the batch is enough for "
        "a one-off.", BOTH),
    AlertSpec(
        "GradientVanishing", WARNING, VANISHING, RUN,
        "Vanishing gradients in run {run}{layer}",
        "Replace sigmoid/tanh with ReLU/GELU; use Xavier/He initialisation matched to the "
        "activation; add BatchNorm/LayerNorm and residual connections.", BOTH),
    AlertSpec(
        "AmpOverflowStorm", WARNING, None, RUN,
        "AMP overflow storm in run {run}{layer}",
        "Keep the layer whose outputs approach 65504 in fp32 or normalise its input; clip "
        "gradients; lower the learning rate; or train in bf16.", BOTH),
    AlertSpec(
        "InitializationSuspect", WARNING, None, RUN_LAYER,
        "Initialisation far off every common scheme in run {run}{layer}",
        "Re-initialise with torch.nn.init.kaiming_uniform_ (ReLU family) or xavier_uniform_ "
        "(tanh/sigmoid/linear), or add normalisation layers.", (IN_PROCESS,)),
    AlertSpec(
        "SymmetricInitialization", WARNING, None, RUN_LAYER,
        "Weights with identical units in run {run}{layer}",
        "Initialise with random values of variance matched to the fan (kaiming_/xavier_); "
        "biases at 0.", (IN_PROCESS,)),
    AlertSpec(
        "ActivationSaturation", WARNING, None, RUN,
        "Saturated sigmoid/tanh layers in run {run}{layer}",
        "Replace sigmoid/tanh with ReLU/GELU; Xavier initialisation for the layers feeding "
        "them; normalise their inputs.", BOTH),
    AlertSpec(
        "DeadUnits", WARNING, None, RUN,
        "Mostly dead units in run {run}{layer}",
        "Use LeakyReLU/ELU/GELU; He initialisation with biases at 0; a lower learning rate; "
        "BatchNorm before the activation.", BOTH),
    AlertSpec(
        "Fp16HeadroomLow", WARNING, None, RUN_LAYER,
        "Layers near the fp16 overflow in run {run}{layer}",
        "Keep these layers in fp32 (autocast disabled around them) or train in bf16; "
        "normalise their inputs.", (IN_PROCESS,)),
    # Leading indicators of transformer instability (before the loss diverges), and the
    # skip-on-spike response.
    AlertSpec(
        "AttentionLogitGrowth", WARNING, None, RUN,
        "Attention logits growing in run {run}{layer}",
        "Add qk-layernorm (LayerNorm/RMSNorm on queries and keys before the dot product) or "
        "QK-Clip; lower the learning rate or lengthen warm-up; add weight decay on the q/k "
        "projections.", BOTH),
    AlertSpec(
        "OutputLogitDivergence", WARNING, None, RUN,
        "Output logits drifting in run {run}{layer}",
        "Add z-loss (1e-4 x log(Z)^2 added to the loss, PaLM); center the output embeddings "
        "(subtract their mean after each step: mu-centering) or put weight decay on the "
        "lm_head; lower the learning rate; add a final LayerNorm before the lm_head.", BOTH),
    AlertSpec(
        "AdamUpdateDecorrelation", WARNING, None, RUN,
        "Adam updates decorrelated in run {run}{layer}",
        "Use a larger eps (e.g. 1e-6 instead of 1e-8) or a larger beta2 (0.99-0.999: the "
        "second moment then forgets slower); lower the learning rate; add z-loss if the output "
        "logits drift too (OutputLogitDivergence); skip batches with outlier gradients "
        "(skip-on-spike); roll back to a checkpoint before the alert.", BOTH),
    AlertSpec(
        "UpdateSkipped", WARNING, None, RUN,
        "Updates skipped in run {run}{layer}",
        "One skip now and then is the response working; many mean the run is unstable: look "
        "for bad batches, lower the learning rate, clip gradients.", BOTH),
    AlertSpec(
        "TrainingStalled", WARNING, None, RUN,
        "Training stalled in run {run}{layer}",
        "Look at the trainer: a hung data loader, a dead collective (NCCL timeout), a "
        "checkpoint write that blocks; py-spy dump shows where it waits.", (RULES,)),
    AlertSpec(
        "TrainerDown", CRITICAL, None, ("run", "instance"),
        "Trainer down: {run_or_instance}",
        "Check the trainer process and its host; remove its file_sd entry when the run has "
        "finished.", (RULES,)),
)

SPECS: dict[str, AlertSpec] = {spec.name: spec for spec in TABLE}
#: Names of the alerts the training process raises.
IN_PROCESS_NAMES = tuple(s.name for s in TABLE if IN_PROCESS in s.sources)
#: Names of the alerts the Prometheus rules raise.
RULE_NAMES = tuple(s.name for s in TABLE if RULES in s.sources)


def spec(name: str) -> AlertSpec:
    """The table row of ``name``.

    Raises:
        KeyError: an alert name not in the table.
    """
    return SPECS[name]


def markdown_table() -> str:
    """The table as Markdown, for docs/alerts.md (a test keeps the docs equal to it)."""
    rows = ["| alert | severity | regime | raised | labels | remedy |",
            "|---|---|---|---|---|---|"]
    for s in TABLE:
        rows.append(f"| [{s.name}](runbook.md#{s.anchor}) | {s.severity} | {s.regime or ''} "
                    f"| {', '.join(s.sources)} | {', '.join(s.labels)} | {s.remedy} |")
    return "\n".join(rows) + "\n"
