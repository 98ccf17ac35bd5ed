"""/score items prepared for the model: images decoded in item order, items encoded side by side."""

from __future__ import annotations

import threading

import pytest
import torch

from tests.helpers import shape_image, uri
from vlreward.service.errors import ServiceError
from vlreward.service.media import MediaPolicy
from vlreward.service.prepare import Limits, encoding_pool, prepare_item, prepare_items
from vlreward.service.schemas import Sample

RED, BLUE = uri(shape_image("red")), uri(shape_image("blue", "square"))


def items() -> list[Sample]:
    """Text-only items, items with their own image, and a GRPO group (three responses to one prompt and
    image), interleaved."""
    raw = [
        {"prompt": "What is 2 + 2?", "response": "4"},
        {"prompt": "Describe the picture.", "response": "A red circle.", "images": [RED]},
        {"prompt": "Which shape?", "response": "A square.", "images": [BLUE]},
        {"prompt": "Describe the picture.", "response": "Something round.", "images": [RED]},
        {"prompt": "Name a prime.", "response": "Seven."},
        {"prompt": "Describe the picture.", "response": "It is red.", "images": [RED]},
    ]
    return [Sample.model_validate(item) for item in raw]


def same_input(a, b) -> bool:
    tensors = ("input_ids", "mm_token_type_ids", "pixel_values", "image_grid_thw")
    return all(
        (getattr(a, name) is None and getattr(b, name) is None) or torch.equal(getattr(a, name), getattr(b, name))
        for name in tensors
    )


def test_items_encoded_side_by_side_equal_each_item_prepared_alone(hf_backend):
    samples = items()
    encoded, errors, groups = prepare_items(hf_backend, samples, MediaPolicy(), Limits(), "none", collect_errors=False)
    assert errors == []
    assert groups == [[1, 3, 5]]  # the three responses to the red circle share its prompt and image
    for index, sample in enumerate(samples):
        alone = prepare_item(hf_backend, sample, MediaPolicy(), Limits(), "none", f"items[{index}]")
        assert same_input(encoded[index], alone), index


def test_several_items_are_encoded_on_the_encoding_threads(hf_backend, monkeypatch):
    threads: list[str] = []
    encode = hf_backend.encode

    def recording(sample):
        threads.append(threading.current_thread().name)
        return encode(sample)

    monkeypatch.setattr(hf_backend, "encode", recording)
    prepare_items(hf_backend, items()[:3], MediaPolicy(), Limits(), "none", collect_errors=False)
    assert len(threads) == 3
    assert all(name.startswith("vlreward-encode") for name in threads)
    assert encoding_pool()._max_workers >= 1


def test_encoding_threads_run_torch_on_one_core_whatever_the_process_default():
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # what threads started from now on begin with (a GPU host keeps every core)
    pool = encoding_pool.__wrapped__()  # a fresh pool: its threads start now
    try:
        assert pool.submit(torch.get_num_threads).result() == 1  # side by side, each on one core
    finally:
        pool.shutdown()
        torch.set_num_threads(before)


def bad_items() -> list[Sample]:
    """Item 1 is over the token limit (found when encoding); item 3's image is not an image (found when
    decoding); the rest are good."""
    samples = items()[:5]
    samples[1] = Sample.model_validate({"prompt": "word " * 400, "response": "long"})
    samples[3] = Sample.model_validate(
        {"prompt": "Describe it.", "response": "x", "images": ["data:image/png;base64,AAAA"]}
    )
    return samples


def test_the_first_bad_item_in_order_is_reported_whichever_step_finds_it(hf_backend):
    limits = Limits(max_tokens=200)
    with pytest.raises(ServiceError) as caught:
        prepare_items(hf_backend, bad_items(), MediaPolicy(), limits, "none", collect_errors=False)
    assert caught.value.param == "items[1]"  # encoding found it, after decoding stopped at item 3
    only_image = bad_items()
    only_image[1] = items()[1]
    with pytest.raises(ServiceError) as caught:
        prepare_items(hf_backend, only_image, MediaPolicy(), limits, "none", collect_errors=False)
    assert caught.value.param.startswith("items[3]")


def test_collecting_errors_gives_every_bad_item_its_error_and_encodes_the_rest(hf_backend):
    encoded, errors, _ = prepare_items(
        hf_backend, bad_items(), MediaPolicy(), Limits(max_tokens=200), "none", collect_errors=True
    )
    assert [index for index, _ in errors] == [1, 3]
    assert errors[0][1].param == "items[1]" and errors[1][1].param.startswith("items[3]")
    assert [item is None for item in encoded] == [False, True, False, True, False]
