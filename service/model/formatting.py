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


STEP_SEPARATOR = "\n"
"""Between one step's tag and the next step's text."""


def join_steps(steps: list[str], step_tag: str) -> str:
    """A process model's response: every step, the last included, ends with the step tag; the model reads
    its head at each tag. A step's tag sees only the text before it, so the first k steps score the same
    whether or not more follow (the prefix property)."""
    return STEP_SEPARATOR.join(step + step_tag for step in steps)


def template_messages(sample: Sample, step_tag: str | None = None) -> list[dict[str, Any]]:
    """The sample as chat-template messages, with ``{"type": "image"}`` where each image goes and a
    process sample's steps joined by :func:`join_steps` (``step_tag``: the model's)."""

    def steps_text(steps: list[str]) -> str:
        if step_tag is None:
            raise FormattingError("this sample has steps, which only a process model reads")
        return join_steps(steps, step_tag)

    if sample.messages is None:
        messages: list[dict[str, Any]] = []
        if sample.system is not None:
            messages.append({"role": "system", "content": sample.system})
        user_parts: list[dict[str, Any]] = [{"type": "image"} for _ in sample.image_refs()]
        user_parts.append({"type": "text", "text": sample.prompt})
        messages.append({"role": "user", "content": user_parts})
        response = sample.response if sample.steps is None else steps_text(sample.steps)
        messages.append({"role": "assistant", "content": response})
        return messages
    converted = []
    for message in sample.messages:
        if message.steps is not None:
            content: Any = steps_text(message.steps)
        elif isinstance(message.content, str):
            content = message.content
        else:
            content = [
                {"type": "image"} if isinstance(part, ImagePart) else {"type": "text", "text": part.text}
                for part in message.content
            ]
        converted.append({"role": message.role, "content": content})
    return converted


def format_sample(
    sample: Sample, images: list[Image.Image], processor: Any, step_tag: str | None = None
) -> FormattedSample:
    """Apply the checkpoint's chat template to a Sample whose images are already decoded (in order);
    ``step_tag``: a process model's (its steps end with it)."""
    expected = len(sample.image_refs())
    if len(images) != expected:
        raise FormattingError(f"sample references {expected} images but {len(images)} were given")
    messages = template_messages(sample, step_tag)
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
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
