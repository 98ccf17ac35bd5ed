"""The one place that turns a conversation into the backbone's input text and image list.

Every backend, the training collator and the evaluators call :func:`format_sample` (or
:func:`format_templated` for text a policy already templated); nothing else builds prompts.
The text uses the checkpoint's own chat template with ``add_generation_prompt=False`` and carries ONE
``<|image_pad|>`` per image; the processor (transformers) or the engine (vLLM) expands it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vlreward.service.schemas import ImagePart, Sample

if TYPE_CHECKING:
    from PIL import Image

IMAGE_PAD = "<|image_pad|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IM_END = "<|im_end|>"


@dataclass
class FormattedSample:
    """Chat-templated text (one image pad per image) and its images, in order."""

    text: str
    images: list[Image.Image] = field(default_factory=list)


class FormattingError(ValueError):
    """The sample cannot be turned into model input (e.g. image count does not match the text)."""


def template_messages(sample: Sample) -> list[dict[str, Any]]:
    """The sample as chat-template messages, with ``{"type": "image"}`` where each image goes."""
    if sample.messages is None:
        messages: list[dict[str, Any]] = []
        if sample.system is not None:
            messages.append({"role": "system", "content": sample.system})
        user_parts: list[dict[str, Any]] = [{"type": "image"} for _ in sample.image_refs()]
        user_parts.append({"type": "text", "text": sample.prompt})
        messages.append({"role": "user", "content": user_parts})
        messages.append({"role": "assistant", "content": sample.response})
        return messages
    converted = []
    for message in sample.messages:
        if isinstance(message.content, str):
            content: Any = message.content
        else:
            content = [
                {"type": "image"} if isinstance(part, ImagePart) else {"type": "text", "text": part.text}
                for part in message.content
            ]
        converted.append({"role": message.role, "content": content})
    return converted


def format_sample(sample: Sample, images: list[Image.Image], processor: Any) -> FormattedSample:
    """Apply the checkpoint's chat template to a Sample whose images are already decoded (in order)."""
    expected = len(sample.image_refs())
    if len(images) != expected:
        raise FormattingError(f"sample references {expected} images but {len(images)} were given")
    text = processor.apply_chat_template(template_messages(sample), tokenize=False, add_generation_prompt=False)
    return FormattedSample(text=text, images=list(images))


_OPENING_MARK = "\u2063vlreward-user-turn\u2063"
"""A prompt no tokenizer merges with the template text before it (starts with an invisible separator)."""


def template_opening(processor: Any) -> str:
    """The text every sample without its own system prompt starts with: the template's default system turn
    and the opening of the user's turn, up to where the user's images or words begin."""
    text = processor.apply_chat_template(
        template_messages(Sample(prompt=_OPENING_MARK, response="-")), tokenize=False, add_generation_prompt=False
    )
    return text[: text.index(_OPENING_MARK)]


_PAD_RUN = re.compile(f"(?:{re.escape(IMAGE_PAD)})+")


def format_templated(text: str, images: list[Image.Image]) -> FormattedSample:
    """Normalise already chat-templated text (OpenRLHF's ``query``) into the same FormattedSample.

    Runs of image pads collapse to one per image; the text is made to end with ``<|im_end|>\\n`` like
    the template's output, so a decoded rollout scores exactly like the same conversation as a Sample.
    """
    text = _PAD_RUN.sub(IMAGE_PAD, text)
    pads = text.count(IMAGE_PAD)
    if pads != len(images):
        raise FormattingError(f"text has {pads} image placeholders but {len(images)} images were given")
    stripped = text.rstrip()
    if stripped.endswith(IM_END):
        text = stripped + "\n"
    else:
        text = text + IM_END + "\n"
    return FormattedSample(text=text, images=list(images))
