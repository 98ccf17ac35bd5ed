"""Scores are independent of batching and padding, and depend on the images and their order."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import shape_image, uri
from vlreward.service.media import MediaPolicy
from vlreward.service.prepare import prepare_sample
from vlreward.service.schemas import Sample

TOLERANCE = 1e-5


def test_score_alone_equals_score_in_padded_mixed_batch(hf_backend, mixed_samples):
    encoded = [hf_backend.encode(s) for s in mixed_samples]
    alone = [hf_backend.model.score_batch([e])[0] for e in encoded]
    together = hf_backend.model.score_batch(encoded, padding_side="right")
    assert len({e.num_tokens for e in encoded}) >= 4  # really mixed lengths
    for a, b in zip(alone, together, strict=True):
        assert abs(a - b) <= TOLERANCE


def test_left_and_right_padding_give_the_same_scores(hf_backend, mixed_samples):
    encoded = [hf_backend.encode(s) for s in mixed_samples]
    right = hf_backend.model.score_batch(encoded, padding_side="right")
    left = hf_backend.model.score_batch(encoded, padding_side="left")
    for a, b in zip(right, left, strict=True):
        assert abs(a - b) <= TOLERANCE


def test_backend_planned_batches_keep_input_order(hf_backend, mixed_samples):
    encoded = [hf_backend.encode(s) for s in mixed_samples]
    alone = [hf_backend.model.score_batch([e])[0] for e in encoded]
    planned = hf_backend.score_sync(list(reversed(mixed_samples)))
    for a, b in zip(reversed(alone), planned, strict=True):
        assert abs(a - b) <= TOLERANCE


def _score(backend, sample: Sample) -> float:
    return backend.score_sync([prepare_sample(sample, backend.processor, MediaPolicy())])[0]


def test_the_image_changes_the_score(hf_backend):
    red = Sample(prompt="What colour is the circle?", response="Red.", image=uri(shape_image("red")))
    blue = Sample(prompt="What colour is the circle?", response="Red.", image=uri(shape_image("blue")))
    assert abs(_score(hf_backend, red) - _score(hf_backend, blue)) > 1e-4


def test_swapping_two_images_changes_the_score(hf_backend):
    a, b = uri(shape_image("red")), uri(shape_image("green", "square"))
    first = Sample(prompt="Describe both.", response="A red circle, then a green square.", images=[a, b])
    swapped = Sample(prompt="Describe both.", response="A red circle, then a green square.", images=[b, a])
    assert abs(_score(hf_backend, first) - _score(hf_backend, swapped)) > 1e-4


def test_plan_batches_respects_size_and_token_budget(hf_backend):
    backend = hf_backend
    saved = backend.max_batch_size, backend.max_batch_tokens
    try:
        backend.max_batch_size, backend.max_batch_tokens = 3, 100
        batches = backend.plan_batches([10, 50, 20, 30, 40, 10, 5])
        assert sorted(i for b in batches for i in b) == list(range(7))
        lengths = [10, 50, 20, 30, 40, 10, 5]
        for batch in batches:
            assert len(batch) <= 3
            assert len(batch) == 1 or max(lengths[i] for i in batch) * len(batch) <= 100
    finally:
        backend.max_batch_size, backend.max_batch_tokens = saved


@pytest.mark.parametrize("images", [0, 1, 2])
def test_shared_prefix_scoring_equals_full_batch_scoring(hf_backend, images):
    from vlreward.service.prepare import Limits, prepare_rank
    from vlreward.service.schemas import RankRequest

    refs = [uri(shape_image(c, size=(112, 84))) for c in ("red", "blue")][:images]
    request = RankRequest(
        prompt="What is shown?", images=refs or None, responses=["A.", "A circle, red.", "A.", "Wait, " * 6]
    )
    encoded = prepare_rank(hf_backend, request.candidates(), MediaPolicy(), Limits(max_tokens=4096))
    full = hf_backend.model.score_batch(encoded)
    shared = hf_backend.model.score_shared_prefix(encoded)
    assert abs(full[0] - full[2]) <= TOLERANCE  # identical responses
    for a, b in zip(full, shared, strict=True):
        assert abs(a - b) <= TOLERANCE


def test_shared_prefix_length():
    import torch

    from vlreward.service.model.reward_model import shared_prefix_length

    assert shared_prefix_length([torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 5]), torch.tensor([1, 2, 3])]) == 2
    assert shared_prefix_length([torch.tensor([1, 2]), torch.tensor([1, 2])]) == 2


@pytest.mark.parametrize(("max_batch_size", "max_batch_tokens"), [(2, None), (64, 1), (3, 10_000)])
def test_rank_candidates_in_chunks_give_the_scores_of_one_pass(hf_backend, max_batch_size, max_batch_tokens):
    from vlreward.service.prepare import Limits, prepare_rank
    from vlreward.service.schemas import RankRequest

    responses = [f"Answer {i}: " + "red circle " * (i % 4) for i in range(7)]
    request = RankRequest(prompt="What is shown?", image=uri(shape_image("red", size=(112, 84))), responses=responses)
    encoded = prepare_rank(hf_backend, request.candidates(), MediaPolicy(), Limits(max_tokens=4096))
    one_pass = hf_backend.model.score_shared_prefix(encoded)
    chunked = hf_backend.model.score_shared_prefix(encoded, max_batch_size, max_batch_tokens)
    full = hf_backend.model.score_batch(encoded)
    assert len(chunked) == len(responses)
    for a, b, c in zip(one_pass, chunked, full, strict=True):
        assert abs(a - b) <= TOLERANCE and abs(a - c) <= TOLERANCE


def suffix_chunks(model, monkeypatch) -> list[int]:
    """The candidates per suffix pass of ``model``'s shared-prefix scoring, recorded as they run."""
    seen: list[int] = []
    original = model._score_suffixes

    def spy(cache, suffixes, *args):
        seen.append(len(suffixes))
        return original(cache, suffixes, *args)

    monkeypatch.setattr(model, "_score_suffixes", spy)
    return seen


def test_the_backend_chunks_rank_candidates_by_its_batch_limits(hf_backend, monkeypatch):
    from vlreward.service.prepare import Limits, prepare_rank
    from vlreward.service.schemas import RankRequest

    request = RankRequest(prompt="Which?", responses=[f"option {i}" for i in range(5)])
    encoded = prepare_rank(hf_backend, request.candidates(), MediaPolicy(), Limits(max_tokens=4096))
    seen = suffix_chunks(hf_backend.model, monkeypatch)
    monkeypatch.setattr(hf_backend, "max_batch_size", 2)
    scores = hf_backend.score_shared_sync(encoded)
    assert seen == [2, 2, 1] and len(scores) == 5


def test_under_bf16_the_backbone_is_bf16_and_the_head_and_its_output_fp32(tiny_reward, mixed_samples):
    import torch

    from vlreward.service.backends.transformers import TransformersBackend

    backend = TransformersBackend(tiny_reward, dtype="bfloat16", device="cpu")
    model = backend.model
    assert (
        model.dtype == torch.bfloat16
        and model.model.language_model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    )
    assert model.score.weight.dtype == torch.float32
    from vlreward.service.model.encoding import collate

    batch = collate([backend.encode(s) for s in mixed_samples[:2]], model.config.text_config.pad_token_id)
    with torch.inference_mode():
        assert model(**batch).dtype == torch.float32
    assert backend.info()["dtype"] == "bfloat16"


def test_rank_chunks_count_the_candidates_own_tokens_and_the_prefix_copies_memory(hf_backend, monkeypatch):
    """A long shared prompt does not split short candidates into one pass each (the token budget counts
    what the pass computes); the copies of the prefix's cache are bounded by bytes instead."""
    from vlreward.service.model import reward_model
    from vlreward.service.prepare import Limits, prepare_rank
    from vlreward.service.schemas import RankRequest

    prompt = "Describe the picture in detail, please. " * 20
    request = RankRequest(prompt=prompt, responses=[f"option {i}" for i in range(6)])
    encoded = prepare_rank(hf_backend, request.candidates(), MediaPolicy(), Limits(max_tokens=4096))
    suffix = max(e.num_tokens for e in encoded) - reward_model.shared_prefix_length([e.input_ids for e in encoded])
    budget = 6 * (suffix + 1)  # room for every candidate's own tokens, not for one prefix + candidate
    assert budget < min(e.num_tokens for e in encoded)
    model = hf_backend.model
    seen = suffix_chunks(model, monkeypatch)
    one_pass = model.score_shared_prefix(encoded, 64, budget)
    assert seen == [6]
    prefix_len = min(e.num_tokens for e in encoded) - suffix
    monkeypatch.setattr(reward_model, "PREFIX_COPY_BYTES", 2 * prefix_len * model.cache_bytes_per_token)
    seen.clear()
    bounded = model.score_shared_prefix(encoded, 64, budget)
    assert seen == [2, 2, 2]
    assert max(abs(a - b) for a, b in zip(one_pass, bounded, strict=True)) <= TOLERANCE


def test_a_batch_continues_from_a_copy_of_the_openings_keys_and_values_never_from_them(hf_backend, mixed_samples):
    model = hf_backend.model
    opening = model.opening
    kept = [(k.clone(), v.clone()) for k, v in opening.layers]
    cache = opening.for_rows(3)
    assert len(cache.layers) == len(kept) == model.config.text_config.num_hidden_layers
    for layer, (k, v) in zip(cache.layers, kept, strict=True):
        assert layer.keys.shape[0] == 3 and torch.equal(layer.keys, k.expand(3, -1, -1, -1))
        assert torch.equal(layer.values, v.expand(3, -1, -1, -1))
        assert layer.keys.data_ptr() != k.data_ptr()
    encoded = [hf_backend.encode(s) for s in mixed_samples if opening.starts([hf_backend.encode(s)])]
    first = model.score_batch(encoded)
    assert model.score_batch(encoded) == first  # the second batch starts from the same opening
    for (k, v), (k_after, v_after) in zip(kept, opening.layers, strict=True):
        assert torch.equal(k, k_after) and torch.equal(v, v_after) and k_after.shape[2] == opening.length


def test_samples_continue_from_the_cached_template_opening_with_their_own_scores(hf_backend, mixed_samples):
    model = hf_backend.model
    opening = model.opening
    assert opening is not None and opening.length >= 5  # the default system turn and "user"
    encoded = [hf_backend.encode(s) for s in mixed_samples]
    starts = [opening.starts([e]) for e in encoded]
    assert starts == [True, True, True, False, True]  # sample 3 has its own system prompt
    plain = [model.score_batch([e], plain=True)[0] for e in encoded]
    before = model.opening_batches
    solo = [model.score_batch([e])[0] for e in encoded]
    assert model.opening_batches - before == sum(starts)  # fails if continuing silently stops
    sharing = [e for e, s in zip(encoded, starts, strict=True) if s]
    together = model.score_batch(sharing)
    assert model.opening_batches - before == sum(starts) + 1
    model.score_batch(encoded)  # one row does not start with it: the whole batch runs every token
    model.score_batch(sharing, padding_side="left")  # continuing needs the opening at column 0
    assert model.opening_batches - before == sum(starts) + 1
    assert max(abs(a - b) for a, b in zip(solo, plain, strict=True)) <= TOLERANCE
    expected = [p for p, s in zip(plain, starts, strict=True) if s]
    assert max(abs(a - b) for a, b in zip(together, expected, strict=True)) <= TOLERANCE
    model.cache_opening(None)
    try:
        assert model.score_batch(sharing) == pytest.approx(together, abs=TOLERANCE)
        assert model.opening_batches - before == sum(starts) + 1
    finally:
        model.opening = opening
