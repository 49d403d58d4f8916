"""An attention call's pre-softmax logits q.k^T * scale (+ masks), recomputed from its q and
k: their exact maximum over the whole call, in chunks of bounded memory, and a sample of
rows for the entropy.

The maximum is compared with QK-clip thresholds: it is taken over every sequence, head and
query row, CHUNK_LOGITS logits at a time (at least one query row of every head). The
extra memory of a call's measurement is one chunk of float32 logits (16 MiB) and float32
copies of that chunk's q and k (its key heads repeated under grouped-query attention).
The entropy is an estimate: the rows of the batch's first MAX_SEQUENCES sequences at
MAX_QUERY_ROWS evenly spaced positions.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: Query rows per attention call whose entropy is measured: longer sequences are
#: sub-sampled at evenly spaced positions.
MAX_QUERY_ROWS = 64
#: Sequences per attention call whose entropy is measured (the batch's first ones): with
#: MAX_QUERY_ROWS, bounds its cost at sequences x heads x rows x keys.
MAX_SEQUENCES = 4
#: Logits computed at once for the exact maximum (float32: 16 MiB).
CHUNK_LOGITS = 1 << 22


@dataclass(frozen=True)
class AttentionScores:
    """What an attention call's logits are made of, in SDPA's layout.

    q: [batch, heads, queries, dim]; k: [batch, key heads, keys, dim] (any dtype, key heads
    dividing heads); masks: each broadcastable to [batch, heads, queries, keys], a bool
    one True where a query may attend, a float one added; causal: a query attends to keys
    at its position and before.
    """

    q: torch.Tensor
    k: torch.Tensor
    scale: float
    masks: tuple[torch.Tensor, ...] = ()
    causal: bool = False

    def logits(self, sequences: slice, rows: torch.Tensor | slice) -> torch.Tensor:
        """[sequences, heads, rows, keys] float32 logits of these sequences and query rows."""
        q = _float(self.q[sequences][:, :, rows])
        k = _float(self.k[sequences])
        if k.shape[1] != q.shape[1]:  # grouped-query attention
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        logits = torch.matmul(q, k.transpose(-2, -1)).mul_(self.scale)
        if self.causal:
            positions = torch.arange(self.q.shape[2], device=q.device)[rows]
            keys = torch.arange(k.shape[2], device=q.device)
            logits.masked_fill_(keys > positions[:, None], -math.inf)
        for mask in self.masks:
            if mask.dim() == 4 and mask.shape[0] > 1:
                mask = mask[sequences]
            if mask.dim() >= 2 and mask.shape[-2] > 1:
                mask = mask[..., rows, :]
            logits = (logits.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool
                      else logits + mask.float())
        return logits

    def chunks(self) -> Iterator[tuple[slice, slice]]:
        """(sequences, rows) of every chunk of at most CHUNK_LOGITS logits (at least one
        query row of every head)."""
        batch, heads, length = self.q.shape[:3]
        rows = max(1, CHUNK_LOGITS // max(1, heads * self.k.shape[2]))
        if rows >= length:
            step = rows // length
            for start in range(0, batch, step):
                yield slice(start, start + step), slice(None)
            return
        for sequence in range(batch):
            for start in range(0, length, rows):
                yield slice(sequence, sequence + 1), slice(start, start + rows)

    def sampled(self) -> tuple[slice, torch.Tensor | slice]:
        """The sequences and query rows of the entropy's sample."""
        rows = query_rows(self.q.shape[2], self.q.device)
        return slice(0, MAX_SEQUENCES), slice(None) if rows is None else rows

    def covered_by_sample(self) -> bool:
        return self.q.shape[0] <= MAX_SEQUENCES and self.q.shape[2] <= MAX_QUERY_ROWS


@torch.no_grad()
def exact_max_and_sample(scores: AttentionScores) -> tuple[torch.Tensor, torch.Tensor]:
    """The maximum logit over the whole call (NaN if any is; -inf if every one is masked)
    and the logits of the entropy's sample."""
    sample = scores.logits(*scores.sampled())
    if scores.covered_by_sample():
        return sample.amax(), sample
    top = torch.full((), -math.inf, device=scores.q.device)
    for sequences, rows in scores.chunks():
        top = torch.maximum(top, scores.logits(sequences, rows).amax())
    return top, sample


def sdpa_scores(query, key, value=None, attn_mask=None, dropout_p=0.0, is_causal=False,
                scale=None, enable_gqa=False, **_) -> AttentionScores:
    """An ``F.scaled_dot_product_attention`` call's scores (3-D inputs: one batch entry)."""
    if query.dim() == 3:
        query, key = query.unsqueeze(0), key.unsqueeze(0)
    factor = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    masks = () if attn_mask is None else (attn_mask.detach(),)
    return AttentionScores(query.detach(), key.detach(), factor, masks, bool(is_causal))


_MHA_SIGNATURE = inspect.signature(F.multi_head_attention_forward)


@torch.no_grad()
def mha_scores(*args, **kwargs) -> AttentionScores:
    """An ``F.multi_head_attention_forward`` call's scores, recomputed from its inputs
    (sequence-first, as it takes them), projections and masks."""
    bound = _MHA_SIGNATURE.bind(*args, **kwargs)
    bound.apply_defaults()
    a = bound.arguments
    query, key, heads = a["query"].detach(), a["key"].detach(), a["num_heads"]
    if query.dim() == 2:  # unbatched
        query, key = query.unsqueeze(1), key.unsqueeze(1)
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
    masks = []
    mask = a["attn_mask"]
    if mask is not None:
        if mask.dim() == 3:
            mask = mask.reshape(batch, heads, *mask.shape[1:])
        masks.append(_allowed(mask, keys))
    padding = a["key_padding_mask"]
    if padding is not None:
        masks.append(_allowed(padding.reshape(batch, 1, 1, -1), keys))
    causal = mask is None and bool(a["is_causal"])
    return AttentionScores(q, k, 1.0 / math.sqrt(q.shape[-1]), tuple(masks), causal)


def _allowed(mask: torch.Tensor, keys: int) -> torch.Tensor:
    """An MHA mask (bool: True where NOT allowed; or additive) in SDPA's convention, its
    key columns padded to ``keys`` (bias_k / add_zero_attn add keys after its end)."""
    mask = F.pad(mask.detach(), (0, keys - mask.shape[-1]))
    return ~mask if mask.dtype == torch.bool else mask


@functools.lru_cache(maxsize=64)
def query_rows(length: int, device: torch.device) -> torch.Tensor | None:
    """The query positions of the entropy's sample: None for all, else MAX_QUERY_ROWS evenly
    spaced."""
    if length <= MAX_QUERY_ROWS:
        return None
    return torch.linspace(0, length - 1, MAX_QUERY_ROWS, device=device).round().long()


def _float(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float32 else x.float()
