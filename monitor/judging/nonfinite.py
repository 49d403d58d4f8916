"""NonFiniteValues: NaN or Inf in the loss, the gradients, the weights or activations."""

from __future__ import annotations

import math

import numpy as np

from ..records.findings import Finding, Result, Verdict, describe_layers, table_fields
from ..records.snapshot import NONFINITE_SOURCES, Pulse, Snapshot
from ..records.thresholds import Thresholds
from .base import Sustained, pulse_of


class NonFiniteValues:
    """Any NaN/Inf in the loss, gradients, activations or parameters, with its origin.

    On a Pulse with a non-finite loss or global norm (except an AMP step that the scaler
    skipped: overflowed gradients are its normal business), the verdict is NEEDS_SAMPLING
    and the finding waits for the next Snapshot: the one of the same step gives the exact
    origin; a later one (the engine escalates sampling) gives an inferred origin. ``flush``
    returns a waiting finding when no Snapshot will come (end of training).
    A Pulse's NaN also means "not observed" (no loss passed to the Monitor, no gradients),
    so a NaN loss or norm only counts once that series has been finite; an Inf always
    counts, and a run that is NaN from its first step is caught by its Snapshot's counts.
    Clears after ``escalation_steps`` finite steps in a row.
    """

    name = "NonFiniteValues"

    def __init__(self, thresholds: Thresholds) -> None:
        self.t = thresholds
        self.pending: Pulse | None = None  # first non-finite Pulse not yet reported
        self.state = Sustained(1, thresholds.escalation_steps)

    def on_pulse(self, pulse: Pulse) -> Result:
        if not self._bad_series(pulse) or pulse.amp_skipped:
            if self.pending is None and not self.state.update(False):
                return Verdict.CLEAR
            return None
        if self.state.on:
            self.state.update(True)  # still non-finite: restart the count to clearing
            return None
        if self.pending is None:
            self.pending = pulse
        return Verdict.NEEDS_SAMPLING

    def on_snapshot(self, snapshot: Snapshot) -> Result:
        pending, self.pending = self.pending, None
        if pending is not None:
            self.state.update(True)
            return self._finding(snapshot, pending, exact=snapshot.step == pending.step)
        if snapshot.judged_nonfinite().sum() > 0 or snapshot.nonfinite_origin:
            self.state.update(True)
            return self._finding(snapshot, pulse_of(snapshot), exact=True)
        return None

    @staticmethod
    def _bad_series(pulse: Pulse) -> list[str]:
        """'loss (inf)'-style names of the Pulse's measured series that went non-finite."""
        series = (("loss", pulse.loss), ("global gradient norm", pulse.global_grad_norm))
        return [f"{name} ({value:g})" for name, value in series
                if value is not None and not math.isfinite(value)]

    def flush(self) -> Result:
        """The waiting finding, without origin, when no Snapshot is coming."""
        if self.pending is None:
            return None
        pulse, self.pending = self.pending, None
        self.state.update(True)
        return self._finding(None, pulse, exact=False)

    def _finding(self, snapshot: Snapshot | None, pulse: Pulse, exact: bool) -> Finding:
        sources = self._bad_series(pulse)
        origin_layers: tuple[str, ...] = ()
        origin_text = "origin unknown: no fully sampled step followed"
        total = float(len(sources))
        if snapshot is not None:
            counts = snapshot.judged_nonfinite()
            layers = snapshot.layers
            total = max(total, float(counts.sum()))
            per_source = {s: counts[i].sum(axis=1) for i, s in enumerate(NONFINITE_SOURCES)}
            for source, per_layer in per_source.items():
                hit = [layers[i] for i in np.flatnonzero(per_layer > 0) if i < len(layers)]
                if hit:
                    sources.append(f"{source}s in {describe_layers(hit)}")
            grads = per_source["gradient"]
            deepest_grad = next((layers[i] for i in reversed(range(min(len(grads), len(layers))))
                                 if grads[i] > 0), "")
            forward = snapshot.nonfinite_origin
            origin_layers = tuple(dict.fromkeys(x for x in (forward, deepest_grad) if x))
            how = "exact (seen on the step itself)" if exact else (
                f"inferred from step {snapshot.step}, a fully traced step after the "
                f"non-finite step {pulse.step}")
            params_bad = bool(per_source["parameter"].sum() > 0)
            origin_text = (
                f"first module with a non-finite output in forward order: "
                f"{forward or 'none seen'}; first layer with a non-finite gradient in backward "
                f"order: {deepest_grad or 'none seen'}; origin {how}")
            if params_bad and not exact:
                origin_text += (". Parameters were already non-finite by then, so the "
                                "forward origin only shows where the corrupted weights sit")
        where = ", ".join(sources) or "values"
        if pulse.local_gradients_finite is False:
            origin_text += ("; this rank's OWN gradients were already non-finite before the "
                            "all-reduce: the NaN came from this rank")
        elif pulse.local_gradients_finite:
            origin_text += ("; this rank's own gradients were finite before the all-reduce: "
                            "the NaN came from another rank (see that rank's alert)")
        return Finding(
            name=self.name, step=pulse.step, time=pulse.time,
            layers=origin_layers, value=total, threshold=0.0,
            origin_exact=exact if snapshot is not None else None,
            summary=(f"Non-finite values at step {pulse.step}"
                     + (f", first in {origin_layers[0]}" if origin_layers else "")),
            description=(f"NaN/Inf in {where}. {origin_text}. \"NaN during training\" is "
                         "most often an explosion that overflowed the float range; see "
                         "gradwatch_nonfinite_total and gradwatch_global_grad_norm just "
                         "before this step."),
            **table_fields(self.name),
        )
