"""The prefix key the batcher groups samples of different requests by: equal exactly when prompt and
images are, whichever way a sample was encoded."""

from __future__ import annotations

from tests.helpers import shape_image, uri
from vlreward.service.media import MediaPolicy
from vlreward.service.model.encoding import encode, encode_shared
from vlreward.service.prepare import prepare_sample
from vlreward.service.schemas import Sample

PROMPT = "What colour is the shape in the picture?"


def formatted(backend, **fields):
    return prepare_sample(Sample(**fields), backend.processor, MediaPolicy())


def test_the_prefix_key_is_equal_exactly_for_the_same_prompt_and_images(hf_backend):
    red, noisy_red = shape_image("red"), shape_image("red")
    noisy_red.putpixel((0, 0), (0, 0, 1))  # one pixel differs, same size and token count
    processor = hf_backend.processor
    key = encode(formatted(hf_backend, prompt=PROMPT, response="Red.", image=uri(red)), processor).prefix_key
    assert key is not None
    same = encode(formatted(hf_backend, prompt=PROMPT, response="Blue, surely.", image=uri(red)), processor)
    assert same.prefix_key == key  # another response: the same prefix
    assert (
        encode(formatted(hf_backend, prompt=PROMPT, response="Red.", image=uri(noisy_red)), processor).prefix_key != key
    )
    assert encode(formatted(hf_backend, prompt=PROMPT, response="Red.", system="Be brief.", image=uri(red)),
                  processor).prefix_key != key  # fmt: skip
    assert encode(formatted(hf_backend, prompt=PROMPT, response="Red."), processor).prefix_key is None  # no image
    together = [formatted(hf_backend, prompt=PROMPT, response=r, image=uri(red)) for r in ("Red.", "Blue, surely.")]
    assert [e.prefix_key for e in encode_shared(together, processor)] == [key, key]  # as encode() gives
