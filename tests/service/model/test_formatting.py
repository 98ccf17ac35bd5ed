"""The one formatting function: both sample forms, text-only, multi-image, pre-templated text."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import shape_image, uri
from vlreward.service.model.encoding import encode, opening_ids
from vlreward.service.model.formatting import (
    IMAGE_PAD,
    VISION_START,
    FormattingError,
    format_sample,
    format_templated,
    template_opening,
)
from vlreward.service.schemas import Sample


def test_prompt_form_and_messages_form_give_identical_token_ids(hf_backend):
    images = [shape_image("red"), shape_image("blue", "square")]
    prompt_form = Sample(prompt="Which is red?", response="The first one.", images=[uri(i) for i in images])
    messages_form = Sample(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": uri(images[0])}},
                    {"type": "image_url", "image_url": {"url": uri(images[1])}},
                    {"type": "text", "text": "Which is red?"},
                ],
            },
            {"role": "assistant", "content": "The first one."},
        ]
    )
    a = format_sample(prompt_form, images, hf_backend.processor)
    b = format_sample(messages_form, images, hf_backend.processor)
    assert a.text == b.text
    assert encode(a, hf_backend.processor).input_ids.tolist() == encode(b, hf_backend.processor).input_ids.tolist()


def test_template_output_has_default_system_prompt_and_ends_with_im_end_newline(hf_backend):
    text = format_sample(Sample(prompt="Hi", response="Hello"), [], hf_backend.processor).text
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"
    )


def test_system_field_replaces_default_system_prompt(hf_backend):
    text = format_sample(Sample(prompt="Hi", response="Yo", system="Be terse."), [], hf_backend.processor).text
    assert text.startswith("<|im_start|>system\nBe terse.<|im_end|>\n")
    assert "helpful assistant" not in text


def test_text_only_sample_has_no_image_tokens(hf_backend):
    encoded = encode(format_sample(Sample(prompt="Hi", response="Yo"), [], hf_backend.processor), hf_backend.processor)
    assert encoded.pixel_values is None and encoded.num_images == 0
    assert int(encoded.mm_token_type_ids.sum()) == 0


def test_multi_image_sample_has_one_pad_per_image_in_text_and_expanded_tokens(hf_backend):
    images = [shape_image("red"), shape_image("green", size=(112, 56)), shape_image("blue")]
    formatted = format_sample(
        Sample(prompt="Count", response="Three", images=[uri(i) for i in images]), images, hf_backend.processor
    )
    assert formatted.text.count(IMAGE_PAD) == 3
    encoded = encode(formatted, hf_backend.processor)
    assert encoded.num_images == 3
    merged = (encoded.image_grid_thw.prod(-1) // 4).sum().item()
    assert int((encoded.mm_token_type_ids == 1).sum()) == merged


def test_image_count_mismatch_is_refused(hf_backend):
    with pytest.raises(FormattingError):
        format_sample(Sample(prompt="p", response="r", image=uri(shape_image())), [], hf_backend.processor)


def test_templated_text_matches_sample_formatting(hf_backend):
    image = shape_image("red")
    sample = Sample(prompt="Colour?", response="Red.", image=uri(image))
    expected = format_sample(sample, [image], hf_backend.processor).text
    expanded = expected.replace(IMAGE_PAD, IMAGE_PAD * 9)
    assert format_templated(expanded, [image]).text == expected
    assert format_templated(expanded.removesuffix("\n"), [image]).text == expected
    assert format_templated(expanded.removesuffix("<|im_end|>\n"), [image]).text == expected


def test_templated_text_with_pads_but_no_images_is_refused():
    with pytest.raises(FormattingError):
        format_templated(f"<|vision_start|>{IMAGE_PAD}<|vision_end|>hi", [])


@pytest.mark.parametrize("images", [0, 1])
def test_the_template_opening_is_where_every_default_sample_starts_and_ends_before_its_content(hf_backend, images):
    processor = hf_backend.processor
    opening = template_opening(processor)
    sample = Sample(prompt="Describe it.", response="A red circle.", images=[uri(shape_image())] * images)
    text = format_sample(sample, [shape_image()] * images, processor).text
    assert text.startswith(opening) and opening.endswith("user\n")
    assert "Describe" not in opening and VISION_START not in opening
    own_system = Sample(prompt="Describe it.", response="A red circle.", system="Be brief.")
    assert not format_sample(own_system, [], processor).text.startswith(opening)
    ids = opening_ids(processor)
    assert torch.equal(
        encode(format_sample(sample, [shape_image()] * images, processor), processor).input_ids[: len(ids)], ids
    )
