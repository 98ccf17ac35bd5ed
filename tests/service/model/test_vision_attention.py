"""Window attention batched by window size gives the per-window path's scores, with far fewer calls."""

from __future__ import annotations

import torch

from tests.helpers import shape_image, uri
from vlreward.service.media import MediaPolicy
from vlreward.service.model.causal_attention import BLOCKED_ATTENTION
from vlreward.service.model.checkpoint import load_reward_model
from vlreward.service.model.encoding import encode
from vlreward.service.model.vision_attention import WINDOWED_ATTENTION
from vlreward.service.prepare import prepare_sample
from vlreward.service.schemas import Sample


def test_batched_windows_score_like_one_call_per_window(tiny_reward, monkeypatch):
    model, processor = load_reward_model(tiny_reward)
    assert model.model.visual.config._attn_implementation == WINDOWED_ATTENTION
    assert model.model.language_model.config._attn_implementation == BLOCKED_ATTENTION  # its own (causal_attention)
    # Image sides that are and are not multiples of the window (edge windows are shorter), two images, none.
    samples = [
        Sample(prompt="Which colours?", response="Red and blue.",
               images=[uri(shape_image("red", size=(224, 168))), uri(shape_image("blue", "square", (100, 60)))]),
        Sample(prompt="Shape?", response="A triangle.", image=uri(shape_image("green", "triangle", (140, 196)))),
        Sample(prompt="Hello", response="Hi."),
    ]  # fmt: skip
    encoded = [encode(prepare_sample(s, processor, MediaPolicy()), processor) for s in samples]
    calls = []
    original = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    windowed = model.score_batch(encoded)
    windowed_calls = list(calls)
    calls.clear()
    model.model.visual.config._attn_implementation = "sdpa"  # transformers' own path: one call per window
    per_window = model.score_batch(encoded)
    assert max(abs(a - b) for a, b in zip(windowed, per_window, strict=True)) <= 1e-5
    assert len(calls) > len(windowed_calls)
    assert any(shape[0] > 1 for shape in windowed_calls)  # several windows in one call


def test_the_window_groups_are_read_once_per_boundaries_tensor():
    from vlreward.service.model.vision_attention import GROUPS_ATTRIBUTE, window_groups

    bounds = torch.tensor([0, 4, 8, 10, 14])
    groups = window_groups(bounds)
    assert [(length, index.tolist()) for length, index in groups] == [
        (4, [0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12, 13]),
        (2, [8, 9]),
    ]
    assert getattr(bounds, GROUPS_ATTRIBUTE) is groups and window_groups(bounds) is groups  # the next block's call
    assert window_groups(torch.tensor([0, 4, 8, 10, 14])) is not groups  # another tensor: its own
