"""Attention and output-logit statistics of a sampled forward: leading signs of transformer
instability (attention-logit growth, Wortsman et al. 2023; output-logit divergence).

Attention is intercepted generically, not by per-model code: a ``TorchFunctionMode`` is
pushed only while the model's forward runs on a sampled step (the whole forward on one in
``SCAN_EVERY``, the modules attention was found in on the others) and sees

- ``F.scaled_dot_product_attention`` (custom models, Hugging Face "sdpa" attention and
  ``nn.MultiheadAttention`` with ``need_weights=False``): the logits are recomputed from q
  and k with the call's scale and mask;
- ``F.multi_head_attention_forward`` (``nn.MultiheadAttention``): the logits are
  recomputed from its inputs, projections and masks;
- a softmax over the last dim of a 4-D tensor [batch, heads, queries, keys] (Hugging Face
  "eager" attention): its input is the logits.

Each call is attributed to the innermost module running it. Every statistic is a device
tensor; the Monitor packs them into the sampled step's one transfer.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..logs import WarnOnce
from .layers import recomputing
from .overhead import Stopwatch, timed

#: Query rows per attention call whose logits are measured: longer sequences are
#: sub-sampled at evenly spaced positions.
MAX_QUERY_ROWS = 64
#: Sequences per attention call whose logits are measured (the batch's first ones): with
#: MAX_QUERY_ROWS, bounds the cost at sequences x heads x rows x keys.
MAX_SEQUENCES = 4
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
            self.record(_sdpa_logits(*args, **kwargs))
        elif func is F.multi_head_attention_forward:
            # its body runs with this mode off: the SDPA or softmax inside is not seen twice
            self.record(_mha_logits(*args, **kwargs))
        elif func in _SOFTMAXES and args and isinstance(args[0], torch.Tensor):
            x = args[0]
            dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
            if x.dim() == 4 and dim in (-1, 3):
                self.record(x)


@torch.no_grad()
def _sdpa_logits(query, key, value=None, attn_mask=None, dropout_p=0.0, is_causal=False,
                 scale=None, enable_gqa=False, **_) -> torch.Tensor:
    """The pre-softmax logits of an SDPA call (masked entries -inf), sequences and query
    rows sub-sampled."""
    rows = _query_rows(query.shape[-2], query.device)
    q = _float(_rows(_sequences(query), rows))
    k = _float(_sequences(key))
    if k.shape[-3] != q.shape[-3] and q.dim() >= 3:  # grouped-query attention
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
    factor = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    # scale and causal mask fused into the product (a cached -inf bias)
    bias = _causal_bias(query.shape[-2], k.shape[-2], q.device) if is_causal else \
        _no_bias(q.device)
    logits = torch.baddbmm(bias, q.reshape(-1, *q.shape[-2:]),
                           k.reshape(-1, *k.shape[-2:]).transpose(-2, -1), alpha=factor)
    logits = logits.view(*q.shape[:-1], k.shape[-2])
    if attn_mask is not None:
        mask = _sequences(attn_mask.detach()) if attn_mask.dim() == 4 else attn_mask.detach()
        mask = _rows(mask, rows) if mask.shape[-2] > 1 else mask
        logits = _masked(logits, mask, 0, disallowed=False)  # SDPA: True means attend
    return logits


_MHA_SIGNATURE = inspect.signature(F.multi_head_attention_forward)


@torch.no_grad()
def _mha_logits(*args, **kwargs) -> torch.Tensor:
    """The pre-softmax logits [batch, heads, queries, keys] of an
    ``F.multi_head_attention_forward`` call (inputs sequence-first, as it takes them)."""
    a = _MHA_SIGNATURE.bind(*args, **kwargs)
    a.apply_defaults()
    a = a.arguments
    query, key, heads = a["query"].detach(), a["key"].detach(), a["num_heads"]
    batched = query.dim() == 3
    if not batched:
        query, key = query.unsqueeze(1), key.unsqueeze(1)
    rows = _query_rows(query.shape[0], query.device)
    query, key = query[:, :MAX_SEQUENCES], key[:, :MAX_SEQUENCES]
    if rows is not None:
        query = query.index_select(0, rows)
    embed = query.shape[-1]
    bias = a["in_proj_bias"]
    bias_q, bias_k = (None, None) if bias is None else (bias[:embed], bias[embed:2 * embed])
    if a["use_separate_proj_weight"]:
        weight_q, weight_k = a["q_proj_weight"], a["k_proj_weight"]
    else:
        weight_q, weight_k = a["in_proj_weight"][:embed], a["in_proj_weight"][embed:2 * embed]
    q = F.linear(query, weight_q, bias_q)  # [L, N, E]
    k = F.linear(key, weight_k, bias_k)  # [S, N, E]
    if a["bias_k"] is not None:
        k = torch.cat([k, a["bias_k"].expand(1, k.shape[1], embed)])
    if a["add_zero_attn"]:
        k = torch.cat([k, k.new_zeros(1, *k.shape[1:])])
    length, batch, keys = q.shape[0], q.shape[1], k.shape[0]
    q = q.reshape(length, batch, heads, -1).permute(1, 2, 0, 3)
    k = k.reshape(keys, batch, heads, -1).permute(1, 2, 0, 3)
    logits = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(q.shape[-1])
    mask = a["attn_mask"]
    if mask is None and a["is_causal"]:
        mask = torch.ones(a["query"].shape[0], keys, dtype=torch.bool, device=q.device).triu(1)
    if mask is not None:
        if mask.dim() == 3:
            mask = mask.reshape(-1, heads, *mask.shape[1:])[:batch]
        logits = _masked(logits, _rows(mask, rows), _pad_keys(mask, keys), disallowed=True)
    padding = a["key_padding_mask"]
    if padding is not None:
        padding = padding[:batch].reshape(batch, 1, 1, -1) if batched else \
            padding.reshape(1, 1, 1, -1)
        logits = _masked(logits, padding, _pad_keys(padding, keys), disallowed=True)
    return logits


def _pad_keys(mask: torch.Tensor, keys: int) -> int:
    """Key columns a mask lacks (bias_k / add_zero_attn add keys after the masks' ends)."""
    return keys - mask.shape[-1]


def _masked(logits: torch.Tensor, mask: torch.Tensor, missing: int,
            disallowed: bool) -> torch.Tensor:
    """``logits`` with a bool mask (True where ``disallowed``) or an additive float mask."""
    if missing:
        mask = F.pad(mask, (0, missing))
    if mask.dtype == torch.bool:
        return logits.masked_fill(mask if disallowed else ~mask, -math.inf)
    return logits + mask.float()


@functools.lru_cache(maxsize=64)
def _query_rows(length: int, device: torch.device) -> torch.Tensor | None:
    """The query positions measured: None for all, else MAX_QUERY_ROWS evenly spaced."""
    if length <= MAX_QUERY_ROWS:
        return None
    return torch.linspace(0, length - 1, MAX_QUERY_ROWS, device=device).round().long()


@functools.lru_cache(maxsize=16)  # a few shapes per model; each [<= 64, keys] floats
def _causal_bias(length: int, keys: int, device: torch.device) -> torch.Tensor:
    """[measured rows, keys]: -inf where a causal query may not attend, else 0."""
    causal = torch.ones(length, keys, dtype=torch.bool, device=device).triu(1)
    bias = torch.zeros(length, keys, device=device).masked_fill(causal, -math.inf)
    return _rows(bias, _query_rows(length, device))


@functools.lru_cache(maxsize=16)
def _no_bias(device: torch.device) -> torch.Tensor:
    return torch.zeros(1, 1, device=device)


def _rows(x: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """``x`` [..., queries, keys-or-features] at the query positions ``rows`` (None: all)."""
    return x if rows is None else x.index_select(-2, rows)


def _sequences(x: torch.Tensor) -> torch.Tensor:
    """The first MAX_SEQUENCES of a batch-first [batch, heads, ...] tensor (a view)."""
    return x[:MAX_SEQUENCES] if x.dim() == 4 and x.shape[0] > MAX_SEQUENCES else x


def _float(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float32 else x.float()


@torch.no_grad()
def attention_record(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(max logit, summed softmax entropy of the rows, rows) of one call's logits [..., keys]
    (a softmax's input: sequences and rows sub-sampled here), in one pass over the logits;
    fully masked rows do not count. A NaN logit makes the max NaN."""
    z = logits
    if z.dim() > 2:
        z = _rows(_sequences(z), _query_rows(z.shape[-2], z.device))
    z = _float(z)
    top = z.amax(dim=-1, keepdim=True)  # per row
    p = (z - top).exp_()  # a fully masked row: -inf - -inf, NaN
    p = p.div_(p.sum(dim=-1, keepdim=True))
    # -sum p log p with 0 log 0 = 0; nansum: fully masked rows do not count
    entropy = torch.special.entr(p).nansum()
    return top.max(), entropy, (top > -math.inf).sum(dtype=z.dtype)


def output_head(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The module producing the output logits: one named ``lm_head``, else the last
    ``nn.Linear`` registered with at least 2 outputs; None for a model without one."""
    linears = [(name, m) for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and m.out_features >= 2]
    for name, module in linears:
        if name.split(".")[-1] == "lm_head":
            return name, module
    return linears[-1] if linears else None


class AttentionProbe:
    """Attention-logit and output-logit statistics of the forward passes of a sampled step.

    ``attach`` (when a sampled step starts) returns the hook handles the Monitor removes when
    it ends; ``values`` gives the device tensor of the step, ``read`` its host figures.

    The mode is on from the outermost module called on one sampled step in SCAN_EVERY (the
    first included); on the others, only inside the modules attention was found in (the
    "sites"), and not at all in a model without any.
    """

    def __init__(self, model: nn.Module, stopwatch: Stopwatch) -> None:
        self.model = model
        self.stopwatch = stopwatch  # where the probe's own time counts (the Monitor's)
        self.head = output_head(model)
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
        if self._stack and not recomputing():
            self._stack.pop()
        if not self._stack and self._mode_depth:
            self._mode_depth -= 1
            self._mode.__exit__(None, None, None)

    @timed
    def _record(self, logits: torch.Tensor) -> None:
        site = self._stack[-1] if self._stack else "model"
        if site not in self.sites:
            self.sites.append(site)
        self._calls.extend(attention_record(logits))
        self._call_sites.append(self.sites.index(site))

    @timed
    @torch.no_grad()
    def _on_head(self, module, args, output) -> None:
        if self.paused or recomputing() or not isinstance(output, torch.Tensor):
            return
        logits = _float(output)
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
