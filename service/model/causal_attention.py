"""The language model's causal attention in blocks of queries, for float32 inference on the CPU.

torch's CPU flash-attention kernel skips the masked half of a causal product only in whole key blocks of
512: a sequence shorter than that (the bench mix has 160-610 tokens) multiplies every query by every key
and masks half of the products away. :func:`blocked_causal_attention` gives each block of
:data:`QUERY_BLOCK` queries only the keys it can see (those up to its last query), so about half of that
work is never done (docs/performance.md, "The measurements behind the defaults").

Each block is one ``scaled_dot_product_attention`` call on the same keys, values and mask entries the
whole call would see, so it is the same attention. It applies to float32 inference on the CPU with more
queries than one block; elsewhere (a GPU, training, a single scored token) and in the model card's plain
pass (:func:`~vlreward.service.model.cpu_kernels.torch_kernels`) transformers' sdpa runs as it is.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

from vlreward.service.model.cpu_kernels import torch_kernels_only
from vlreward.service.model.packing import current_segments, segment_causal_attention

BLOCKED_ATTENTION = "vlreward_blocked_causal_sdpa"
"""Registered name of :func:`blocked_causal_attention` (with transformers' sdpa masks)."""

QUERY_BLOCK = 64
"""Queries per block (docs/performance.md, "The measurements behind the defaults")."""


def _blocks_apply(
    module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, dropout: float, **kwargs
) -> bool:
    """Float32 inference on the CPU, more queries than a block, causal, and either a 4-D mask or no cache
    (transformers reads a missing mask with cached keys its own way)."""
    return (
        query.device.type == "cpu"
        and query.dtype == torch.float32
        and query.shape[2] > QUERY_BLOCK
        and (key.shape[2] == query.shape[2] if mask is None else mask.dim() == 4)
        and dropout == 0.0
        and getattr(module, "is_causal", False)
        and kwargs.get("is_causal") is not False
        and kwargs.get("position_bias") is None
        and kwargs.get("cache") is None
        and not torch.is_grad_enabled()
        and not torch_kernels_only()
    )


def blocked_causal_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal attention of ``query`` [batch, heads, queries, dim] on ``key``/``value`` [batch, kv heads,
    keys, dim] (the queries are the last keys; earlier keys come from a cache), ``attention_mask`` None
    (causal, no padding) or transformers' 4-D mask [batch, 1, queries, keys]; returns [batch, queries,
    heads, dim] like transformers' attention functions. A packed row (:mod:`.packing`) attends within
    each of its samples."""
    segments = current_segments()
    if segments is not None and attention_mask is None and query.shape[2] == key.shape[2] == segments.tokens:
        groups = getattr(module, "num_key_value_groups", 1)
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
        blocks = _blocks_apply(module, query, key, None, dropout, **kwargs)

        def one_sample(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            if blocks and q.shape[2] > QUERY_BLOCK:
                return _blocked(q, k, v, None, scaling)
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling)

        output = segment_causal_attention(query, key, value, segments, scaling, one_sample)
        return output.transpose(1, 2).contiguous(), None
    if not _blocks_apply(module, query, key, attention_mask, dropout, **kwargs):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    return _blocked(query, key, value, attention_mask, scaling).transpose(1, 2).contiguous(), None


def _blocked(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None, scaling: Any
) -> torch.Tensor:
    """The attention in blocks of :data:`QUERY_BLOCK` queries (key/value heads already repeated); returns
    [batch, heads, queries, dim]."""
    queries, keys = query.shape[2], key.shape[2]
    past = keys - queries  # cached keys before the first query
    if attention_mask is None:  # causal, no cache: query i sees keys up to i
        hidden = torch.arange(keys, device=query.device)[None] > torch.arange(queries, device=query.device)[:, None]
        attention_mask = torch.zeros(hidden.shape, dtype=query.dtype, device=query.device).masked_fill_(
            hidden, float("-inf")
        )
    output = torch.empty_like(query)
    for start in range(0, queries, QUERY_BLOCK):
        end = min(queries, start + QUERY_BLOCK)
        seen = past + end  # the keys any query of this block can see
        output[:, :, start:end] = F.scaled_dot_product_attention(
            query[:, :, start:end],
            key[:, :, :seen],
            value[:, :, :seen],
            attn_mask=attention_mask[..., start:end, :seen],
            scale=scaling,
        )
    return output


def use_blocked_causal_attention(language_model: torch.nn.Module) -> None:
    """Register the function (once, with transformers' sdpa masks) and switch a built language model to
    it; a model on sdpa only (its fallback is sdpa)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(BLOCKED_ATTENTION, blocked_causal_attention)
    AttentionMaskInterface.register(BLOCKED_ATTENTION, sdpa_mask)
    language_model.config._attn_implementation = BLOCKED_ATTENTION
