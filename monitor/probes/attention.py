"""Attention and output-logit statistics of a sampled forward: leading signs of transformer
instability (attention-logit growth, Wortsman et al. 2023; output-logit divergence).

Attention is intercepted generically, not by per-model code: a ``TorchFunctionMode`` is
pushed only while the model's forward runs on a sampled step (the whole forward on one in
``SCAN_EVERY``, the modules attention was found in on the others) and sees

- ``F.scaled_dot_product_attention`` (custom models, Hugging Face "sdpa" attention and
  ``nn.MultiheadAttention`` with ``need_weights=False``): the logits are recomputed from q
  and k with the call's scale and mask (``attention_logits``);
- ``F.multi_head_attention_forward`` (``nn.MultiheadAttention``): the logits are
  recomputed from its inputs, projections and masks;
- a softmax over the last dim of a 4-D tensor [batch, heads, queries, keys] (Hugging Face
  "eager" attention): its input is the logits.

The maximum logit is exact: over every sequence, head and query row of the call, in chunks
of bounded memory (``attention_logits.CHUNK_LOGITS``); the entropy is an estimate, from the
rows of the batch's first sequences at evenly spaced positions.

Each call is attributed to the innermost module running it. Every statistic is a device
tensor; the Monitor packs them into the sampled step's one transfer.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..logs import WarnOnce
from .attention_logits import (
    MAX_SEQUENCES,
    exact_max_and_sample,
    mha_scores,
    query_rows,
    sdpa_scores,
)
from .layers import recomputing
from .output_head import is_candidate, named_head, returned_logits
from .overhead import Stopwatch, timed

#: Every this many sampled steps (the first included), attention is looked for in the whole
#: forward; the others watch only the modules it was found in: the mode costs Python time on
#: every torch call it sees (~7 ms of a 100 ms step on a 4-layer encoder, whole forward).
SCAN_EVERY = 10
_SOFTMAXES = (F.softmax, torch.softmax, torch.Tensor.softmax)
# per call: max logit, summed row entropy, rows
_CALL_FIELDS = 3
# output logits: summed log Z, max logit, summed logits, rows, logits
_HEAD_FIELDS = 5


class _AttentionMode(TorchFunctionMode):
    """Hands attention logits to ``record`` and runs every function unchanged."""

    def __init__(self, record: Callable[..., None]) -> None:
        super().__init__()
        self.record = record
        self._warn = WarnOnce()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        try:
            self._look(func, args, kwargs)
        except Exception as exc:  # an unforeseen call shape must not stop the training
            self._warn(f"attention:{func}", "gradwatch: attention statistics of %s skipped "
                       "(reported once): %r", getattr(func, "__name__", func), exc)
        return func(*args, **kwargs)

    def _look(self, func, args, kwargs) -> None:
        if func is F.scaled_dot_product_attention:
            self.record(*exact_max_and_sample(sdpa_scores(*args, **kwargs)))
        elif func is F.multi_head_attention_forward:
            # its body runs with this mode off: the SDPA or softmax inside is not seen twice
            self.record(*exact_max_and_sample(mha_scores(*args, **kwargs)))
        elif func in _SOFTMAXES and args and isinstance(args[0], torch.Tensor):
            x = args[0]
            dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
            if x.dim() == 4 and dim in (-1, 3):
                self.record(*_softmax_logits(x.detach()))


def _softmax_logits(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A softmax input's exact maximum and the entropy's sample of its rows."""
    rows = query_rows(x.shape[-2], x.device)
    sample = x[:MAX_SEQUENCES] if rows is None else x[:MAX_SEQUENCES, :, rows]
    return x.amax(), sample.float()


@torch.no_grad()
def attention_record(top: torch.Tensor, sample: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(max logit, summed softmax entropy of the rows, rows) of one call: its exact maximum
    ``top`` and the logits of its entropy's sample [..., keys], in one pass over them;
    fully masked rows do not count."""
    z = sample
    row_top = z.amax(dim=-1, keepdim=True)
    p = (z - row_top).exp_()  # a fully masked row: -inf - -inf, NaN
    p = p.div_(p.sum(dim=-1, keepdim=True))
    # -sum p log p with 0 log 0 = 0; nansum: fully masked rows do not count
    entropy = torch.special.entr(p).nansum()
    return top.float(), entropy, (row_top > -math.inf).sum(dtype=z.dtype)


class AttentionProbe:
    """Attention-logit and output-logit statistics of the forward passes of a sampled step.

    ``attach`` (when a sampled step starts) returns the hook handles the Monitor removes when
    it ends; ``values`` gives the device tensor of the step, ``read`` its host figures.

    The mode is on from the outermost module called on one sampled step in SCAN_EVERY (the
    first included); on the others, only inside the modules attention was found in (the
    "sites"), and not at all in a model without any. The output logits are those of the
    model's logit head (``output_head``): known by its role, else looked for on those scan
    steps until found, as the Linear whose output the outermost module returns.
    """

    def __init__(self, model: nn.Module, stopwatch: Stopwatch) -> None:
        self.model = model
        self.stopwatch = stopwatch  # where the probe's own time counts (the Monitor's)
        self.head = named_head(model)
        # while the head is looked for: the candidates' outputs of the forward in progress
        self._outputs: dict[int, tuple[str, nn.Module, torch.Tensor]] | None = None
        self.sites: list[str] = []  # attention modules, in the order first seen
        self.paused = False
        self._stack: list[str] = []
        self._calls: list[torch.Tensor] = []  # _CALL_FIELDS scalars per call
        self._call_sites: list[int] = []
        self._head: list[torch.Tensor] = []  # 3 scalars per forward
        self._head_counts = [0, 0]  # rows, logits
        self._mode = _AttentionMode(self._record)
        self._mode_depth = 0
        self._attached = 0  # sampled steps so far
        self._site_modules: list[tuple[str, nn.Module]] = []
        self._sites_found = 0  # len(sites) when _site_modules was made

    def attach(self) -> list[torch.utils.hooks.RemovableHandle]:
        self._calls, self._call_sites, self._head, self._stack = [], [], [], []
        self._head_counts = [0, 0]
        scan = self._attached % SCAN_EVERY == 0
        self._attached += 1
        handles = []
        self._outputs = {} if scan and self.head is None else None
        if self._outputs is not None:  # before the pops: a Linear may be the outermost
            handles += [module.register_forward_hook(functools.partial(self._note_output, name))
                        for name, module in self._modules() if is_candidate(module)]
        for name, module in self._modules() if scan else self._sites():
            handles.append(module.register_forward_pre_hook(self._push(name)))
            handles.append(module.register_forward_hook(self._pop, always_call=True))
        if self.head is not None:
            handles.append(self.head[1].register_forward_hook(self._on_head))
        return handles

    def _modules(self) -> list[tuple[str, nn.Module]]:
        return [(name or "model", module) for name, module in self.model.named_modules()]

    def _sites(self) -> list[tuple[str, nn.Module]]:
        """The modules attention was found in (a site no longer in the model is dropped)."""
        if self._sites_found != len(self.sites):  # a scan found more
            modules = dict(self._modules())
            self._site_modules = [(s, modules[s]) for s in self.sites if s in modules]
            self._sites_found = len(self.sites)
        return self._site_modules

    def _push(self, name: str):
        def push(module, args):
            if recomputing():  # its attention was recorded when the forward first ran
                return
            # on from the outermost module called (a LightningModule's training_step may
            # call its submodules, never its own forward)
            if not self._stack and not self.paused:
                self._mode.__enter__()
                self._mode_depth += 1
            self._stack.append(name)
        return push

    def _pop(self, module, args, output) -> None:
        if not self._stack or recomputing():
            return
        self._stack.pop()
        if self._stack:
            return
        if self._mode_depth:
            self._mode_depth -= 1
            self._mode.__exit__(None, None, None)
        if self._outputs is not None and not self.paused:
            self._find_head(output)

    def _note_output(self, name: str, module: nn.Module, args: object, output: object) -> None:
        if isinstance(output, torch.Tensor) and self._outputs is not None \
                and not recomputing():
            self._outputs[id(output)] = (name, module, output)  # kept: its id stays its own

    def _find_head(self, output: object) -> None:
        """The candidate whose output the outermost module returned is the logit head."""
        outputs, self._outputs = self._outputs or {}, {}
        for tensor in returned_logits(output):
            name, module, candidate = outputs.get(id(tensor), ("", None, None))
            if candidate is tensor and module is not None:
                self.head = (name, module)
                self._on_head(module, None, tensor)  # this forward's; later ones: its hook
                return

    @timed
    def _record(self, top: torch.Tensor, sample: torch.Tensor) -> None:
        site = self._stack[-1] if self._stack else "model"
        if site not in self.sites:
            self.sites.append(site)
        self._calls.extend(attention_record(top, sample))
        self._call_sites.append(self.sites.index(site))

    @timed
    @torch.no_grad()
    def _on_head(self, module, args, output) -> None:
        if self.paused or recomputing() or not isinstance(output, torch.Tensor):
            return
        logits = output if output.dtype == torch.float32 else output.float()
        self._head.extend((torch.logsumexp(logits, dim=-1).sum(), logits.amax(), logits.sum()))
        rows = logits.numel() // max(logits.shape[-1], 1)
        self._head_counts = [self._head_counts[0] + rows, self._head_counts[1] + logits.numel()]

    def values(self, device: torch.device) -> torch.Tensor:
        """[sum log Z, max logit, sum of logits, rows, logits, then per site: max logit,
        entropy sum, rows]."""
        if self._head:
            head = torch.stack(self._head).view(-1, 3)
            if len(head) > 1:  # several forwards in the step
                head = torch.stack([head[:, 0].sum(), head[:, 1].max(), head[:, 2].sum()])
            head = torch.cat([head.reshape(-1).to(device),
                              torch.tensor(self._head_counts, device=device, dtype=head.dtype)])
        else:
            head = torch.tensor([math.nan, math.nan, math.nan, 0.0, 0.0], device=device)
        if self._calls and self._call_sites == list(range(len(self.sites))):
            sites = torch.stack(self._calls).to(device)  # each site once, in order
        else:
            sites = self._per_site(device)
        self._calls, self._call_sites, self._head, self._head_counts = [], [], [], [0, 0]
        return torch.cat([head, sites])

    def _per_site(self, device: torch.device) -> torch.Tensor:
        """The calls' figures gathered per site: max of the maxima, sums of the rest."""
        sites = torch.zeros(len(self.sites), _CALL_FIELDS, device=device)
        if self._calls:
            calls = torch.stack(self._calls).view(-1, _CALL_FIELDS).to(device)
            index = torch.tensor(self._call_sites, device=device)
            sites[:, 0] = torch.full((len(self.sites),), -math.inf, device=device).scatter_reduce(
                0, index, calls[:, 0], "amax")
            sites[:, 1:] = sites[:, 1:].index_add(0, index, calls[:, 1:])
        return sites.reshape(-1)

    def detach(self) -> None:
        """Leave the mode if a failed forward left it on."""
        while self._mode_depth:
            self._mode_depth -= 1
            self._mode.__exit__(None, None, None)

    def read(self, host) -> dict[str, object]:
        """Snapshot fields from the host copy of ``values``."""
        log_z_sum, logit_max, logit_sum, rows, elements = host[:_HEAD_FIELDS]
        sites = host[_HEAD_FIELDS:].reshape(-1, _CALL_FIELDS)
        seen = sites[:, 2] > 0
        with_rows = sites[:, 2].clip(min=1)
        return {
            "output_logit_logsumexp": float(log_z_sum / rows) if rows else math.nan,
            "output_logit_max": float(logit_max) if rows else math.nan,
            "output_logit_mean": float(logit_sum / elements) if rows else math.nan,
            "attention_layers": tuple(s for s, ok in zip(self.sites, seen) if ok),
            "attention_logit_max": sites[seen, 0],
            "attention_entropy": (sites[:, 1] / with_rows)[seen],
        }
