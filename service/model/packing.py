"""Samples packed end to end in one row instead of padded to the longest: no work on padding.

A padded batch computes every row to the longest sample's length; the bench mix (160-610 tokens per
sample) pads a batch of 16 to about 1.5x its real tokens, and every linear layer works on the padding.
:func:`pack` lays a (right-padded) batch's real tokens end to end in one row, each sample keeping its own
M-RoPE positions; attention stays within each sample (:func:`segment_causal_attention`, called by the
language model's attention function while :func:`packed_segments` is in force), and the scored-token
last layer reads each sample's own tokens. Images need nothing: their features fill the image tokens in
order, as in a padded batch. The arithmetic per sample is the padded batch's, so scores agree with it to
float rounding.

The segments travel in a context variable, like the scored positions (:mod:`.scored_token`): the vision
tower, which attends within images with its own sequence lengths, never sees them.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812


@dataclass(frozen=True)
class Segments:
    """Where each packed sample starts and ends."""

    cu_seqlens: torch.Tensor
    """[samples + 1]: 0, the end of the first sample, ..., the row's length; on the model's device."""
    bounds: list[int]
    """The same numbers on the host (no device sync to read them)."""

    @property
    def tokens(self) -> int:
        return self.bounds[-1]

    @property
    def spans(self) -> list[tuple[int, int]]:
        """Each sample's (start, end) in the row."""
        return list(zip(self.bounds[:-1], self.bounds[1:], strict=True))


log = logging.getLogger(__name__)

_SEGMENTS: ContextVar[Segments | None] = ContextVar("vlreward_packed_segments", default=None)


@contextlib.contextmanager
def packed_segments(segments: Segments) -> Iterator[None]:
    """Within the block, the language model's single row holds samples end to end, at ``segments``."""
    token = _SEGMENTS.set(segments)
    try:
        yield
    finally:
        _SEGMENTS.reset(token)


def current_segments() -> Segments | None:
    """The segments set by :func:`packed_segments` (None: a padded batch)."""
    return _SEGMENTS.get()


@dataclass(frozen=True)
class PackedBatch:
    """A batch's real tokens in one row."""

    input_ids: torch.Tensor
    """[1, tokens]."""
    positions: torch.Tensor
    """M-RoPE positions [3, 1, tokens]: each sample's own, as in its padded row."""
    segments: Segments
    scored: torch.Tensor
    """Where each sample is read, [1, reads]: its last token, or a process sample's step tags one after
    another (``reads_per_sample`` says how many each has)."""
    reads_per_sample: list[int]


def pack(batch: dict[str, torch.Tensor], positions: torch.Tensor, read_at: list | None = None) -> PackedBatch:
    """Pack a right-padded batch (:func:`~.encoding.collate`) and its positions [3, batch, length]; with
    ``read_at`` (a process model's step-tag positions per sample) those tokens are read instead of the
    last."""
    real = batch["attention_mask"].bool()
    lengths = real.sum(dim=1)
    cu_seqlens = F.pad(lengths.cumsum(0), (1, 0))
    bounds = cu_seqlens.tolist()
    if read_at is None:
        scored, reads = [end - 1 for end in bounds[1:]], [1] * len(bounds[:-1])
    else:
        scored = [start + p for start, row in zip(bounds[:-1], read_at, strict=True) for p in row]
        reads = [len(row) for row in read_at]
    device = positions.device
    return PackedBatch(
        input_ids=batch["input_ids"][real].unsqueeze(0),
        positions=positions[:, real.to(device)].unsqueeze(1),
        segments=Segments(cu_seqlens.to(device), bounds),
        scored=torch.tensor(scored, device=device).unsqueeze(0),
        reads_per_sample=reads,
    )


def segment_starts(cu_seqlens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The first token of the sample each of ``positions`` (in the packed row) belongs to."""
    sample = torch.searchsorted(cu_seqlens, positions, right=True) - 1
    return cu_seqlens[sample]


def segment_causal_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    segments: Segments,
    scaling: float | None,
    attend: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Causal attention within each packed sample: ``query`` [1, heads, tokens, dim], ``key``/``value``
    [1, heads, tokens, dim] (key/value heads already repeated); returns [1, heads, tokens, dim]. ``attend``
    (query, key, value) computes one sample's causal attention; on CUDA torch's variable-length flash
    kernel runs every sample in one call where this torch has one."""
    if query.is_cuda and not _VARLEN_FAILED and (varlen := _torch_varlen()) is not None:
        try:
            return varlen(query, key, value, segments, scaling)
        except RuntimeError as exc:  # a GPU or dtype the kernel does not take: attend per sample
            _VARLEN_FAILED.append(repr(exc))
            log.warning("variable-length attention failed (%s); packed samples attend one by one", exc)
    output = torch.empty_like(query)
    for start, end in segments.spans:
        rows = slice(start, end)
        output[:, :, rows] = attend(query[:, :, rows], key[:, :, rows], value[:, :, rows])
    return output


_VARLEN_FAILED: list[str] = []
"""Why torch's variable-length kernel failed, once (then it is not tried again)."""


def varlen_kernel() -> str:
    """Whether packed rows attend with torch's variable-length kernel on CUDA: available, not in this
    torch, or failed (and why)."""
    if _VARLEN_FAILED:
        return f"failed: {_VARLEN_FAILED[0]}"
    return "available" if _torch_varlen() is not None else "not in this torch"


@functools.cache
def _torch_varlen() -> Callable | None:
    """:func:`_varlen_causal`, looked up once per process (every layer of every packed pass asks)."""
    return _varlen_causal()


def _varlen_causal() -> Callable | None:
    """torch's variable-length flash attention as a causal function of packed tensors, or None where this
    torch has none. Its signature changed between releases: causal is ``is_causal`` in some and a
    ``(-1, 0)`` window in others."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    parameters = inspect.signature(varlen_attn).parameters
    if "is_causal" in parameters:
        causal = {"is_causal": True}
    elif "window_size" in parameters:
        causal = {"window_size": (-1, 0)}
    else:
        return None

    def run(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, segments: Segments, scaling: Any):
        longest = max(end - start for start, end in segments.spans)
        cu_seqlens = segments.cu_seqlens.to(torch.int32)
        packed = [tensor[0].transpose(0, 1) for tensor in (query, key, value)]  # [tokens, heads, dim]
        out = varlen_attn(*packed, cu_seqlens, cu_seqlens, longest, longest, scale=scaling, **causal)
        return out.transpose(0, 1).unsqueeze(0)

    return run
