"""The vision tower's window attention as one ``scaled_dot_product_attention`` call per window size.

Qwen2.5-VL's vision encoder attends within windows (8x8 patches) in 28 of its 32 blocks and within each
image in the other 4. transformers runs that with one attention call per window unless a flash-attention
build is installed: 32 images of 448x448 make 14,492 calls per forward pass, and the profile of the GPU
check showed the GPU waiting on kernel launches (``Command Buffer Full``). Here windows of the same
length are gathered into one batch and attended in one call (a handful of calls per block); the
arithmetic is the same attention, so the scores agree with the per-window path to float tolerance.

transformers sends the tower's packed sequence with its ``cu_seqlens`` to an attention function whose
registered name contains "flash"; this one is registered under :data:`WINDOWED_ATTENTION` and set on
the vision config only (the language model keeps sdpa and its masks).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

WINDOWED_ATTENTION = "vlreward_flash_free_windows"
"""Registered name (it must contain "flash" for transformers to pass ``cu_seqlens``; no flash-attn needed)."""


GROUPS_ATTRIBUTE = "_vlreward_window_groups"
"""Where :func:`window_groups` keeps its answer on the boundaries tensor (it lives as long as the tensor)."""


def windowed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    cu_seq_lens_q: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention within each packed segment of ``query/key/value`` ([1, heads, tokens, dim]); returns
    [1, tokens, heads, dim] like transformers' attention functions."""
    if cu_seq_lens_q is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling)
    heads, dim = query.shape[1], query.shape[3]
    output = torch.empty_like(query)
    for length, index in window_groups(cu_seq_lens_q):

        def windows(tensor: torch.Tensor, index: torch.Tensor = index, length: int = length) -> torch.Tensor:
            return tensor[0, :, index].view(heads, -1, length, dim).transpose(0, 1)  # [windows, heads, length, dim]

        attended = F.scaled_dot_product_attention(
            windows(query), windows(key), windows(value), dropout_p=dropout, scale=scaling
        )
        output[0, :, index] = attended.transpose(0, 1).reshape(heads, -1, dim)
    return output.transpose(1, 2).contiguous(), None


def window_groups(cu_seq_lens: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """The windows of a packed sequence grouped by length: each length with the token index of its windows
    ([windows * length], on the boundaries' device). Computed once per boundaries tensor: the tower passes
    the same one to each of its blocks, and reading it on the host waits for the GPU."""
    groups = getattr(cu_seq_lens, GROUPS_ATTRIBUTE, None)
    if groups is not None:
        return groups
    bounds = cu_seq_lens.tolist()
    by_length: dict[int, list[int]] = {}
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        if end > start:
            by_length.setdefault(end - start, []).append(start)
    device = cu_seq_lens.device
    groups = [
        (length, (torch.tensor(starts, device=device)[:, None] + torch.arange(length, device=device)).view(-1))
        for length, starts in by_length.items()
    ]
    setattr(cu_seq_lens, GROUPS_ATTRIBUTE, groups)
    return groups


def use_windowed_vision_attention(vision_tower: torch.nn.Module) -> None:
    """Register the function (once) and switch a built vision tower to it. After construction: at
    construction transformers would look for a flash-attention package behind any name with "flash"."""
    from transformers import AttentionInterface

    AttentionInterface.register(WINDOWED_ATTENTION, windowed_attention)
    vision_tower.config._attn_implementation = WINDOWED_ATTENTION
