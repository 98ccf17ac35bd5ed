"""The transformers backend's async path and its facts."""

from __future__ import annotations

import asyncio
import threading

from vlreward.service.backends import create_backend
from vlreward.service.media import MediaPolicy
from vlreward.service.prepare import prepare_sample
from vlreward.service.schemas import Sample


def test_async_score_runs_off_the_event_loop_and_matches_sync(hf_backend):
    samples = [
        prepare_sample(Sample(prompt=f"q{i}", response="a" * i), hf_backend.processor, MediaPolicy()) for i in range(5)
    ]
    seen_threads = []
    original = hf_backend.score_sync

    def spy(batch):
        seen_threads.append(threading.current_thread().name)
        return original(batch)

    hf_backend.score_sync = spy
    try:
        result = asyncio.run(hf_backend.score(samples))
    finally:
        del hf_backend.score_sync
    assert seen_threads and all(name.startswith("vlreward-hf") for name in seen_threads)
    assert result == hf_backend.score_sync(samples)


def test_info_reports_model_dtype_device_and_pixel_bounds(hf_backend):
    info = hf_backend.info()
    assert info["backend"] == "hf" and info["dtype"] == "float32" and info["device"] == "cpu"
    assert (info["min_pixels"], info["max_pixels"]) == (4 * 28 * 28, 64 * 28 * 28)
    assert len(info["checkpoint_hash"]) == 16
    assert hf_backend.health()


def test_pixel_bound_overrides_change_the_image_token_count(tiny_reward):
    backend = create_backend("hf", str(tiny_reward), device="cpu", max_pixels=16 * 28 * 28)
    from tests.helpers import shape_image, uri

    sample = Sample(prompt="p", response="r", image=uri(shape_image(size=(224, 224))))
    encoded = backend.encode(prepare_sample(sample, backend.processor, MediaPolicy()))
    assert int((encoded.mm_token_type_ids == 1).sum()) == 16
    assert backend.info()["max_pixels"] == 16 * 28 * 28
