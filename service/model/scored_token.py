"""The final decoder layer computed at the scored token only.

A reward is read from one position per row (the last real token). Every decoder layer but the last must
run on every token, since the layers above attend to their keys and values; the last one's output is
read at that one position, so only its keys and values are needed everywhere. In the last layer
:class:`ScoredTokenDecoderLayer` projects keys and values for every token and runs the query, the
attention, the output projection and the MLP for the scored token of each row: about 1/8 of the
decoder's arithmetic on the 8-layer bench model and 1/28 on a 7B. The operations on that token are the
ones the full layer runs, so scores agree with the full pass to float rounding.

The positions travel in a context variable (:func:`scoring_at`), so concurrent forward passes on other
threads each see their own; with none set the layer is transformers' own (every token, as in training
with other heads or a prefix cache that must hold every key).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import torch
from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as qwen

from vlreward.service.model.packing import current_segments, segment_starts

_SCORED_POSITIONS: ContextVar[torch.Tensor | None] = ContextVar("vlreward_scored_positions", default=None)


@contextlib.contextmanager
def scoring_at(positions: torch.Tensor) -> Iterator[None]:
    """Within the block, the last decoder layer outputs one token per row: ``positions[row]`` (of the
    tokens passed in this call), shape [batch, 1, hidden]; or, for ``positions`` of shape [batch, k]
    (a process model's step tags), k tokens per row, shape [batch, k, hidden]."""
    token = _SCORED_POSITIONS.set(positions)
    try:
        yield
    finally:
        _SCORED_POSITIONS.reset(token)


class _EveryTokensKeys:
    """Stands in for the cache in the one-token attention call: answers its ``update`` with the keys and
    values of every token (computed by the layer beforehand, past ones included)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        self.keys, self.values = keys, values

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        return self.keys, self.values


class ScoredTokenDecoderLayer(qwen.Qwen2_5_VLDecoderLayer):
    """Qwen2.5-VL's decoder layer; inside :func:`scoring_at`, computed at the scored positions only."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Any = None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        positions = _SCORED_POSITIONS.get()
        if positions is None:
            return super().forward(
                hidden_states, attention_mask, position_ids, past_key_values, use_cache, position_embeddings, **kwargs
            )
        # One position per row ([batch]: a reward), or k ([batch, k]: a process model's step tags).
        several = positions.dim() == 2
        attention = self.self_attn
        rows = torch.arange(hidden_states.shape[0], device=hidden_states.device)
        if several:
            rows = rows.unsqueeze(1)
            at_scored = lambda tensor: tensor[rows, positions]  # noqa: E731  [batch, k, ...]
        else:
            at_scored = lambda tensor: tensor[rows, positions].unsqueeze(1)  # noqa: E731  [batch, 1, ...]
        normed = self.input_layernorm(hidden_states)
        batch, length, _ = normed.shape
        keys = attention.k_proj(normed).view(batch, length, -1, attention.head_dim).transpose(1, 2)
        values = attention.v_proj(normed).view(batch, length, -1, attention.head_dim).transpose(1, 2)
        cos, sin = position_embeddings
        _, keys = qwen.apply_rotary_pos_emb(keys, keys, cos, sin)
        if past_key_values is not None:  # continuing a prefix: the cache joins its keys to these
            keys, values = past_key_values.update(keys, values, attention.layer_idx)
        options: dict[str, Any] = {}
        if attention_mask is not None and attention_mask.dim() == 4:  # [batch, 1, queries, keys]: the scored rows
            attention_mask = attention_mask[rows, :, positions]
            attention_mask = attention_mask.transpose(1, 2) if several else attention_mask.unsqueeze(2)
        elif several:  # causal, no padding: the query at p sees the keys up to past + p
            past = keys.shape[2] - length  # cached keys before this call's first token
            seen = torch.arange(keys.shape[2], device=keys.device).view(1, 1, 1, -1)
            attention_mask = seen <= (past + positions).view(batch, 1, -1, 1)
            segments = current_segments()
            if segments is not None:  # a packed row: each query sees its own sample's keys only
                starts = segment_starts(segments.cu_seqlens, positions)
                attention_mask = attention_mask & (seen >= starts.view(batch, 1, -1, 1))
        if several:
            options["is_causal"] = False  # the mask says it all (the queries are not the last keys)
        attended, _ = attention(
            hidden_states=at_scored(normed),
            attention_mask=attention_mask,
            position_embeddings=(at_scored(cos), at_scored(sin)),
            past_key_values=_EveryTokensKeys(keys, values),
            **options,
            **kwargs,
        )
        hidden = at_scored(hidden_states) + attended
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


def score_at_last_layer_only(language_model: torch.nn.Module) -> None:
    """Make a built Qwen2.5-VL text model's last decoder layer a :class:`ScoredTokenDecoderLayer`.

    The layer keeps its parameters, names, device and initialisation (its class changes, nothing else;
    the subclass adds no state), so checkpoints load and save as before.
    """
    last = language_model.layers[-1]
    if type(last) is not qwen.Qwen2_5_VLDecoderLayer:
        raise TypeError(f"expected a Qwen2_5_VLDecoderLayer, got {type(last).__name__}")
    last.__class__ = ScoredTokenDecoderLayer
