"""The Sample shape: either form, with errors that name the problem."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from vlreward.service.schemas import Sample


def test_prompt_form_image_shorthand_and_list():
    assert Sample(prompt="p", response="r", image="abc").image_refs() == ["abc"]
    sample = Sample(prompt="p", response="r", images=["a", "b"])
    assert sample.image_refs() == ["a", "b"]
    assert sample.image_params() == ["images[0]", "images[1]"]


def test_messages_form_collects_images_in_order_with_their_paths():
    sample = Sample.model_validate(
        {
            "messages": [
                {"role": "system", "content": "s"},
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "one"}},
                        {"type": "text", "text": "q"},
                        {"type": "image_url", "image_url": {"url": "two"}},
                    ],
                },
                {"role": "assistant", "content": "a"},
            ]
        }
    )
    assert sample.image_refs() == ["one", "two"]
    assert sample.image_params() == ["messages[1].content[0].image_url.url", "messages[1].content[2].image_url.url"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"prompt": "p"}, "give `response` or"),
        ({"prompt": "p", "response": "r", "steps": ["s"]}, "give `response` or"),
        ({"prompt": "p", "steps": []}, "at least 1 item"),
        ({"messages": [{"role": "user", "steps": ["s"]}, {"role": "assistant", "content": "x"}]}, "only an assistant"),
        ({"messages": [{"role": "assistant", "content": "x", "steps": ["s"]}]}, "either `content` or"),
        ({"response": "r"}, "missing `prompt`"),
        ({"prompt": "p", "response": "r", "image": "a", "images": ["b"]}, "not both"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "last message must be the assistant"),
        ({"messages": [{"role": "assistant", "content": "x"}], "prompt": "p"}, "not both"),
        ({"prompt": "p", "response": "r", "respone": "typo"}, "Extra inputs"),
        ({"prompt": 3, "response": "r"}, "valid string"),
    ],
)
def test_invalid_samples_are_refused_with_a_reason(body, message):
    with pytest.raises(ValidationError, match=message):
        Sample.model_validate(body)
