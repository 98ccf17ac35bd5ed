"""Packed batches: samples end to end in one row score as their padded batch does, for every model kind."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from tests.helpers import shape_image, uri
from vlreward.service.model.encoding import collate
from vlreward.service.model.packing import Segments, pack, segment_causal_attention

TOLERANCE = 1e-5


@contextlib.contextmanager
def packing(model, on: bool = True):
    saved = model.pack_batches
    model.pack_batches = on
    try:
        yield
    finally:
        model.pack_batches = saved


def packed_and_padded(model, encoded: list) -> tuple[list, list]:
    """The scores of ``encoded`` as one batch packed, and padded; the packed path must have run."""
    runs = model.packed_batches
    with packing(model):
        packed = model.score_batch(encoded)
    assert model.packed_batches == runs + 1
    with packing(model, on=False):
        padded = model.score_batch(encoded)
    assert model.packed_batches == runs + 1
    return packed, padded


def largest_difference(a: list, b: list) -> float:
    flat = lambda rows: [x for row in rows for x in (row if isinstance(row, list) else [row])]  # noqa: E731
    return max(abs(x - y) for x, y in zip(flat(a), flat(b), strict=True))


def test_packed_scores_equal_the_padded_batchs_with_images_and_without(hf_backend, mixed_samples):
    encoded = [hf_backend.encode(s) for s in mixed_samples]
    assert len({e.num_tokens for e in encoded}) > 2  # padding to save
    packed, padded = packed_and_padded(hf_backend.model, encoded)
    assert largest_difference(packed, padded) <= TOLERANCE
    alone = [hf_backend.model.score_batch([e])[0] for e in encoded]
    assert largest_difference(packed, alone) <= TOLERANCE


def test_a_process_model_reads_every_step_tag_of_every_packed_sample(tiny_process):
    from vlreward.service.backends.transformers import TransformersBackend

    backend = TransformersBackend(tiny_process, dtype="float32", device="cpu")
    steps = ["I look at the picture.", "The circle is red.", "Red is a warm colour.", "So the answer is red."]
    samples = [
        {"prompt": "Which colour is the circle?", "steps": steps, "image": uri(shape_image("red"))},
        {"prompt": "Describe it. " * 9, "steps": steps[:2]},
        {"prompt": "Why?", "steps": steps[:1]},
    ]
    encoded = [backend.encode(backend.format_request_sample(s)) for s in samples]
    packed, padded = packed_and_padded(backend.model, encoded)
    assert [len(row) for row in packed] == [4, 2, 1]
    assert largest_difference(packed, padded) <= TOLERANCE


def test_a_judge_gets_its_verdict_logits_packed_as_padded(judge_backend, mixed_samples):
    from vlreward.service.prepare import prepare_request_sample

    raw = [{"prompt": "Is the sky blue?", "response": "Yes. " * n} for n in (1, 7, 20)]
    encoded = [
        judge_backend.encode(prepare_request_sample(s, judge_backend.processor, judge=judge_backend.judge)) for s in raw
    ]
    packed, padded = packed_and_padded(judge_backend.model, encoded)
    assert all(isinstance(row, list) and len(row) > 1 for row in packed)
    assert largest_difference(packed, padded) <= TOLERANCE


def test_batches_without_padding_or_with_plain_or_left_padding_are_not_packed(hf_backend, mixed_samples):
    model = hf_backend.model
    encoded = [hf_backend.encode(s) for s in mixed_samples]
    runs = model.packed_batches
    with packing(model):
        model.score_batch([encoded[0], encoded[0]])  # nothing to save
        model.score_batch(encoded, plain=True)  # the model card's pass stays transformers' own
        model.score_batch(encoded, padding_side="left")
        model.score_batch(encoded[:1])
    assert model.packed_batches == runs


def test_pack_keeps_each_samples_own_positions_and_marks_its_bounds(hf_backend, mixed_samples):
    model = hf_backend.model
    encoded = [hf_backend.encode(s) for s in mixed_samples[:3]]
    batch = collate(encoded, model.config.text_config.pad_token_id)
    args = batch["input_ids"], batch["attention_mask"], batch["mm_token_type_ids"], batch.get("image_grid_thw")
    packed = pack(batch, model.position_ids(*args))
    lengths = [e.num_tokens for e in encoded]
    assert packed.segments.bounds == [0, lengths[0], lengths[0] + lengths[1], sum(lengths)]
    assert packed.scored.tolist() == [[end - 1 for end in packed.segments.bounds[1:]]]
    for sample, start in zip(encoded, packed.segments.bounds, strict=False):
        alone = collate([sample], model.config.text_config.pad_token_id)
        grid = sample.image_grid_thw
        own = model.position_ids(alone["input_ids"], alone["attention_mask"], alone["mm_token_type_ids"], grid)
        assert torch.equal(packed.positions[:, 0, start : start + sample.num_tokens], own[:, 0])
        assert torch.equal(packed.input_ids[0, start : start + sample.num_tokens], sample.input_ids)


def test_segment_attention_is_each_samples_own_causal_attention():
    generator = torch.Generator().manual_seed(0)
    bounds = [0, 5, 12, 13]
    query, key, value = (torch.randn(1, 2, 13, 8, generator=generator) for _ in range(3))
    segments = Segments(torch.tensor(bounds), bounds)
    causal = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
    out = segment_causal_attention(query, key, value, segments, None, causal)
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        rows = slice(start, end)
        assert torch.allclose(out[:, :, rows], causal(query[:, :, rows], key[:, :, rows], value[:, :, rows]))


@pytest.mark.parametrize("pack_batches", [True, False])
def test_the_setting_reaches_the_model_and_info(tiny_reward, pack_batches):
    from vlreward.service.backends.transformers import TransformersBackend

    backend = TransformersBackend(tiny_reward, dtype="float32", device="cpu", pack_batches=pack_batches)
    assert backend.model.pack_batches is pack_batches and backend.info()["pack_batches"] is pack_batches


def test_the_variable_length_kernel_gets_packed_tensors_and_a_causal_request(monkeypatch):
    """On CUDA torch's flash kernel runs every sample in one call; a stand-in with its signature (it runs on
    CUDA only) checks the layout and the causal request this module sends it."""
    import inspect

    from torch.nn.attention import varlen

    from vlreward.service.model import packing

    real = inspect.signature(varlen.varlen_attn)
    calls = []

    def stand_in(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None, window_size=(-1, -1), **rest):
        calls.append((query.shape, cu_seq_q.dtype, max_q, window_size, rest))
        bounds = cu_seq_q.tolist()
        out = torch.empty_like(query)
        for start, end in zip(bounds[:-1], bounds[1:], strict=True):
            q, k, v = (t[start:end].transpose(0, 1) for t in (query, key, value))
            out[start:end] = F.scaled_dot_product_attention(q, k, v, is_causal=window_size == (-1, 0)).transpose(0, 1)
        return out

    stand_in.__signature__ = real
    monkeypatch.setattr(varlen, "varlen_attn", stand_in)
    bounds = [0, 5, 12, 13]
    generator = torch.Generator().manual_seed(1)
    query, key, value = (torch.randn(1, 2, 13, 8, generator=generator) for _ in range(3))
    run = packing._varlen_causal()
    assert run is not None
    out = run(query, key, value, Segments(torch.tensor(bounds), bounds), None)
    (shape, dtype, longest, window, rest), *_ = calls
    assert shape == (13, 2, 8) and dtype == torch.int32 and longest == 7
    assert window == (-1, 0) or rest.get("is_causal") is True
    causal = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
    expected = segment_causal_attention(query, key, value, Segments(torch.tensor(bounds), bounds), None, causal)
    assert (out - expected).abs().max() <= 1e-6
