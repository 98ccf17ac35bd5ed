"""Causal attention in blocks of queries is transformers' sdpa attention, with less of it computed."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from vlreward.service.model import causal_attention
from vlreward.service.model.causal_attention import BLOCKED_ATTENTION, blocked_causal_attention
from vlreward.service.model.cpu_kernels import torch_kernels

TOLERANCE = 1e-5
"""fp32 scores, same backend (the issue's bound)."""


def attention_inputs(batch: int, queries: int, past: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, 8, queries, 16, generator=generator)
    key = torch.randn(batch, 2, past + queries, 16, generator=generator)  # 4 query heads per key head
    value = torch.randn(batch, 2, past + queries, 16, generator=generator)
    return SimpleNamespace(is_causal=True, num_key_value_groups=4), query, key, value


def padded_causal_mask(lengths: list[int], width: int, past: int) -> torch.Tensor:
    """transformers' 4-D boolean mask for right-padded rows after ``past`` cached keys: [batch, 1, q, k]."""
    keys = torch.arange(past + width)
    causal = keys[None, :] <= torch.arange(width)[:, None] + past
    real = torch.stack([keys < past + length for length in lengths])  # [batch, keys]
    return (causal[None] & real[:, None])[:, None]


def sdpa_calls(monkeypatch) -> list[int]:
    """Keys given to each ``scaled_dot_product_attention`` call from now on."""
    calls: list[int] = []
    original = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(args[1].shape[2])
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    return calls


@pytest.mark.parametrize(
    ("past", "lengths", "mask"),
    [(0, [70, 70, 70], False), (0, [70, 41, 70], True), (13, [70, 70, 70], True), (13, [70, 41, 70], True)],
    ids=["causal", "padded", "after-a-cache", "padded-after-a-cache"],
)
def test_blocks_equal_one_sdpa_call(monkeypatch, past, lengths, mask):
    monkeypatch.setattr(causal_attention, "QUERY_BLOCK", 16)
    module, query, key, value = attention_inputs(len(lengths), 70, past)
    mask = padded_causal_mask(lengths, 70, past) if mask else None
    calls = sdpa_calls(monkeypatch)
    with torch.inference_mode():
        blocked, _ = blocked_causal_attention(module, query, key, value, mask, scaling=0.25)
        calls_blocked = list(calls)
        whole, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.25)
    # 5 blocks of <= 16 queries, each with the keys up to its last query only
    assert calls_blocked == [past + 16, past + 32, past + 48, past + 64, past + 70]
    assert blocked.shape == whole.shape == (len(lengths), 70, 8, 16)
    for row, length in enumerate(lengths):  # padded queries are never read
        assert torch.allclose(blocked[row, :length], whole[row, :length], atol=1e-6)


def test_where_blocks_do_not_apply_it_is_one_sdpa_call(monkeypatch):
    monkeypatch.setattr(causal_attention, "QUERY_BLOCK", 16)
    module, query, key, value = attention_inputs(1, 40, 0)
    calls = sdpa_calls(monkeypatch)
    blocked_causal_attention(module, query, key, value, None)  # gradients may be wanted (training)
    with torch.no_grad(), torch_kernels():  # the model card's plain pass
        blocked_causal_attention(module, query, key, value, None)
    with torch.no_grad():
        blocked_causal_attention(module, query[:, :, :16], key[:, :, :16], value[:, :, :16], None)  # one block
        blocked_causal_attention(
            module, query.to(torch.bfloat16), key.to(torch.bfloat16), value.to(torch.bfloat16), None
        )
    assert calls == [40, 40, 16, 40]
    with torch.no_grad():
        blocked_causal_attention(module, query, key, value, None)
    assert calls[4:] == [16, 32, 40]


@pytest.fixture
def encoded(hf_backend, mixed_samples):
    return [hf_backend.encode(s) for s in mixed_samples]


def test_the_language_model_scores_alike_blocked_and_whole(hf_backend, encoded, monkeypatch):
    model = hf_backend.model
    language = model.model.language_model
    assert language.config._attn_implementation == BLOCKED_ATTENTION
    assert model.model.visual.config._attn_implementation != BLOCKED_ATTENTION  # the tower keeps its own
    monkeypatch.setattr(causal_attention, "QUERY_BLOCK", 8)  # the tiny samples are short
    assert max(s.num_tokens for s in encoded) > 3 * 8
    blocks = []
    original = causal_attention.blocked_causal_attention

    def spying(*args, **kwargs):
        blocks.append(causal_attention._blocks_apply(*args[:3], args[4], **{"dropout": 0.0, **kwargs}))
        return original(*args, **kwargs)

    from transformers import AttentionInterface

    AttentionInterface.register(BLOCKED_ATTENTION, spying)
    try:
        solo = [model.score_batch([e])[0] for e in encoded]
        batched = model.score_batch(encoded)
        left = model.score_batch(encoded, padding_side="left")
        shared = model.score_shared_prefix([encoded[2]] + [encoded[2]] * 2)
    finally:
        AttentionInterface.register(BLOCKED_ATTENTION, original)
    assert any(blocks)  # the blocks ran (the test fails if they silently stop)
    language.config._attn_implementation = "sdpa"
    try:
        whole_solo = [model.score_batch([e])[0] for e in encoded]
        whole_batched = model.score_batch(encoded)
    finally:
        language.config._attn_implementation = BLOCKED_ATTENTION
    plain = [model.score_batch([e], plain=True)[0] for e in encoded]
    for got in (solo, batched, left, whole_solo, whole_batched):
        assert max(abs(a - b) for a, b in zip(got, plain, strict=True)) <= TOLERANCE
    assert all(abs(s - plain[2]) <= TOLERANCE for s in shared)
