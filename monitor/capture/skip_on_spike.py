"""Skip-on-spike: an opt-in response that keeps an outlier step from poisoning the weights.

A step whose loss or global gradient norm is above mean + ``sigmas`` x std of the last
``window`` kept steps (once ``min_steps`` are known), or is not finite, has its optimizer
update undone ON THE DEVICE: the parameters and the optimizer's tensor state are copied
before the step and chosen back with ``torch.where`` after it, so no host sync decides
anything (OLMo-core skips steps by the same rule). A kept step's tensors are its own,
bit for bit. Cost, every step: one copy of the parameters and of the optimizer state, and a
few dozen small ops.
"""

from __future__ import annotations

import torch

from ..records.validation import check_int, check_positive


class SkipOnSpike:
    """Undo the optimizer update of outlier steps, on the device.

    Args:
        sigmas: how many standard deviations above the mean is an outlier.
        window: steps of history (kept steps only) the mean and std are taken over.
        min_steps: kept steps needed before any finite step can be judged an outlier.

    Raises:
        ValueError: an argument out of range, naming it.

    Example::

        TrainingDiagnostics(skip_on_spike=SkipOnSpike(sigmas=6, window=128))
    """

    def __init__(self, sigmas: float = 6.0, window: int = 128, min_steps: int = 20) -> None:
        check_positive("sigmas", sigmas)
        check_int("window", window, low=2)
        check_int("min_steps", min_steps, low=2)
        self.sigmas, self.window, self.min_steps = float(sigmas), window, min_steps
        self._history: torch.Tensor | None = None  # [window, 3]: loss, norm, kept (0/1)
        self._position = 0
        self._saved: dict[int, list[torch.Tensor]] = {}

    def renewed(self) -> SkipOnSpike:
        """A SkipOnSpike with the same settings and no history (every fit starts fresh)."""
        return SkipOnSpike(self.sigmas, self.window, self.min_steps)

    def save(self, optimizer: torch.optim.Optimizer) -> None:
        """Copy what ``optimizer``'s step will change (call right before it)."""
        self._saved[id(optimizer)] = [t.detach().clone() for t in _tensors(optimizer)]

    @torch.no_grad()
    def decide(self, loss: torch.Tensor, grad_sq: torch.Tensor) -> torch.Tensor:
        """A device bool: is this step (its loss and squared global norm) an outlier? Records
        the step in the history (as kept unless an outlier). Call once per step."""
        values = torch.stack([loss.float(), grad_sq.float().sqrt()])
        if self._history is None or self._history.device != values.device:
            self._history = torch.zeros(self.window, 3, device=values.device)
        history = self._history
        kept = history[:, 2]
        count = kept.sum()
        mean = (history[:, :2] * kept[:, None]).sum(0) / count.clamp(min=1)
        variance = (((history[:, :2] - mean) ** 2) * kept[:, None]).sum(0) / count.clamp(min=1)
        bar = mean + self.sigmas * variance.sqrt()
        outlier = ((values > bar).any() & (count >= self.min_steps)) | ~values.isfinite().all()
        row = history[self._position % self.window]
        row[:2] = torch.where(outlier, 0.0, values)
        row[2] = (~outlier).float()
        self._position += 1
        return outlier

    @torch.no_grad()
    def undo_if(self, optimizer: torch.optim.Optimizer, outlier: torch.Tensor) -> None:
        """Put back what ``save`` copied where ``outlier`` holds (call right after the step).
        State the step created (a first step's lazy init) goes back to zeros."""
        saved = self._saved.pop(id(optimizer), None)
        if saved is None:
            return
        current = _tensors(optimizer)
        saved += [torch.zeros_like(t) for t in current[len(saved):]]
        for now, before in zip(current, saved):
            now.copy_(torch.where(outlier.to(now.device), before, now))


def _tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The parameters then the tensor state of ``optimizer``, in a stable order."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = [value for p in params for _, value in sorted(optimizer.state.get(p, {}).items())
             if isinstance(value, torch.Tensor)]
    return [p.data for p in params] + state
