"""The last decoder layer runs at the scored token only, and the scores are those of the full pass."""

from __future__ import annotations

import threading

import pytest
import torch

from tests.helpers import shape_image, uri
from vlreward.service.media import MediaPolicy
from vlreward.service.model.encoding import collate
from vlreward.service.model.scored_token import ScoredTokenDecoderLayer, score_at_last_layer_only

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def encoded(hf_backend, mixed_samples):
    return [hf_backend.encode(s) for s in mixed_samples]


class MLPInputs:
    """Records the shapes the last decoder layer's MLP is given."""

    def __init__(self, model):
        self.shapes: list[tuple[int, ...]] = []
        self._hook = model.model.language_model.layers[-1].mlp.register_forward_hook(
            lambda module, args, out: self.shapes.append(tuple(args[0].shape))
        )

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._hook.remove()


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_the_last_layer_runs_one_token_per_row_and_scores_equal_the_full_pass(hf_backend, encoded, padding_side):
    model = hf_backend.model
    assert isinstance(model.model.language_model.layers[-1], ScoredTokenDecoderLayer)
    full = [model.score_batch([e], plain=True)[0] for e in encoded]
    with MLPInputs(model) as seen:
        batched = model.score_batch(encoded, padding_side)
    width = max(e.num_tokens for e in encoded)
    assert seen.shapes == [(len(encoded), 1, model.config.text_config.hidden_size)]
    with MLPInputs(model) as seen:
        batched_full = model.score_batch(encoded, padding_side, plain=True)
    assert seen.shapes == [(len(encoded), width, model.config.text_config.hidden_size)]
    for a, b, c in zip(full, batched, batched_full, strict=True):
        assert abs(a - b) <= TOLERANCE and abs(a - c) <= TOLERANCE


def test_shared_prefix_suffixes_run_the_last_layer_at_their_scored_token(hf_backend):
    from vlreward.service.prepare import Limits, prepare_rank
    from vlreward.service.schemas import RankRequest

    request = RankRequest(
        prompt="What is shown?", image=uri(shape_image("red")), responses=["A.", "A red circle.", "Wait, " * 5]
    )
    candidates = prepare_rank(hf_backend, request.candidates(), MediaPolicy(), Limits(max_tokens=4096))
    model = hf_backend.model
    full = model.score_batch(candidates, plain=True)
    with MLPInputs(model) as seen:
        shared = model.score_shared_prefix(candidates)
    hidden = model.config.text_config.hidden_size
    # the prefix pass keeps every token (its cache must hold every key); the suffixes run one token each
    assert seen.shapes[-1] == (3, 1, hidden) and seen.shapes[0][1] > 1
    for a, b in zip(full, shared, strict=True):
        assert abs(a - b) <= TOLERANCE


def test_training_through_the_scored_token_gives_the_full_pass_scores_and_gradients(hf_backend, encoded):
    model = hf_backend.model
    batch = collate(encoded, model.config.text_config.pad_token_id)
    mlp = model.model.language_model.layers[-1].mlp.down_proj.weight
    model.train()
    try:
        grads = []
        for plain in (False, True):
            model.zero_grad()
            rewards = model.reward(model.hidden_states(**batch, plain=plain))
            (rewards[0] - rewards[1]).backward()
            grads.append((rewards.detach(), mlp.grad.clone()))
    finally:
        model.eval()
        model.zero_grad(set_to_none=True)
    (fast, fast_grad), (full, full_grad) = grads
    assert torch.allclose(fast, full, atol=TOLERANCE)
    assert fast_grad.abs().sum() > 0 and torch.allclose(fast_grad, full_grad, atol=1e-5)


def test_concurrent_forward_passes_each_score_their_own_rows(hf_backend, encoded):
    """The scored positions are per thread (the CPU lanes run forward passes side by side)."""
    model = hf_backend.model
    alone = [model.score_batch([e])[0] for e in encoded]
    results: dict[int, list[float]] = {}
    barrier = threading.Barrier(2)

    def run(key: int, batch):
        barrier.wait()
        results[key] = [s for _ in range(5) for s in model.score_batch(batch)]

    threads = [threading.Thread(target=run, args=(0, encoded[:1])), threading.Thread(target=run, args=(1, encoded))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert max(abs(a - b) for a, b in zip(results[0], alone[:1] * 5, strict=True)) <= TOLERANCE
    assert max(abs(a - b) for a, b in zip(results[1], alone * 5, strict=True)) <= TOLERANCE


def test_only_a_qwen_decoder_layer_is_switched():
    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList([torch.nn.Linear(2, 2)])
    with pytest.raises(TypeError, match="Qwen2_5_VLDecoderLayer"):
        score_at_last_layer_only(model)
