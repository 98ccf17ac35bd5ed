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

    from vlreward.service.judge import JudgeDeclaration

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
    sample: Sample,
    images: list[Image.Image],
    processor: Any,
    step_tag: str | None = None,
    judge: JudgeDeclaration | None = None,
) -> FormattedSample:
    """Apply the checkpoint's chat template to a Sample whose images are already decoded (in order);
    ``step_tag``: a process model's (its steps end with it); ``judge``: a judge's declaration (the sample
    becomes its pointwise question)."""
    expected = len(sample.image_refs())
    if len(images) != expected:
        raise FormattingError(f"sample references {expected} images but {len(images)} were given")
    if judge is not None:
        question, response, system = judged_parts(sample)
        return format_judge(judge, "pointwise", question, [response], system, images, processor)
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


# -- generative judges ---------------------------------------------------------------------------------

ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}


def _message_text(content: Any) -> str:
    """A message's words: its text, or its text parts joined (its images go before the judge's question)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(part.text for part in content if not isinstance(part, ImagePart))


def judged_parts(sample: Sample) -> tuple[str, str, str]:
    """What a judge is asked about a sample: the question (the conversation before the response: a single
    user turn's words, or every turn as ``Role: words`` lines), the response, and the system text."""
    if sample.messages is None:
        if sample.response is None:
            raise FormattingError("a judge rates a `response`; this sample has none")
        return sample.prompt or "", sample.response, sample.system or ""
    *before, last = sample.messages
    if last.role != "assistant" or last.steps is not None:
        raise FormattingError("a judge rates the last message, an assistant's text")
    turns = [(m.role, _message_text(m.content)) for m in before]
    question, system = _question_of(turns)
    return question, _message_text(last.content), system


def _question_of(turns: list[tuple[str, str]]) -> tuple[str, str]:
    """(question, system) of the turns before the judged response."""
    system = "\n".join(text for role, text in turns if role == "system")
    asked = [(role, text) for role, text in turns if role != "system"]
    if len(asked) == 1 and asked[0][0] == "user":
        return asked[0][1], system
    return "\n".join(f"{ROLE_NAMES.get(role, role)}: {text}" for role, text in asked), system


def format_judge(
    judge: JudgeDeclaration,
    form: str,
    question: str,
    responses: list[str],
    system: str,
    images: list[Image.Image],
    processor: Any,
) -> FormattedSample:
    """A judge's question (``form``: pointwise with one response, pairwise with two) as its chat: the
    judge's system message if it declares one, one user turn holding the images then the rendered
    template, and the assistant's turn opened with the declared answer prefix. The judge's verdict is the
    next token."""
    if form == "pointwise":
        text = judge.render(form, question=question, response=responses[0], system=system)
    else:
        text = judge.render(form, question=question, response_a=responses[0], response_b=responses[1], system=system)
    messages: list[dict[str, Any]] = []
    if judge.system is not None:
        messages.append({"role": "system", "content": judge.system})
    messages.append({"role": "user", "content": [*({"type": "image"} for _ in images), {"type": "text", "text": text}]})
    chat = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return FormattedSample(text=chat + judge.answer_prefix(form), images=list(images))


def format_judged_pair(
    first: Sample, second: Sample, images: list[Image.Image], processor: Any, judge: JudgeDeclaration
) -> FormattedSample:
    """A judge's pairwise question: is ``first``'s response or ``second``'s better (they share the prompt
    and its images, decoded once)."""
    question, response_a, system = judged_parts(first)
    _, response_b, _ = judged_parts(second)
    return format_judge(judge, "pairwise", question, [response_a, response_b], system, images, processor)


def format_judged_orders(
    a: Sample, b: Sample, images: list[Image.Image], processor: Any, judge: JudgeDeclaration, debias: bool = True
) -> list[FormattedSample]:
    """A pair as the judge's pairwise questions: A first and, with ``debias``, B first too (the order
    :meth:`~vlreward.service.judge.JudgeDeclaration.prob_a` reads their verdicts in)."""
    orders = [(a, b), (b, a)] if debias else [(a, b)]
    return [format_judged_pair(first, second, images, processor, judge) for first, second in orders]


_TURN = re.compile(r"<\|im_start\|>(\w+)\n(.*?)(?:<\|im_end\|>\s*|$)", re.DOTALL)
_IMAGE_RUN = re.compile(f"{re.escape(VISION_START)}(?:{re.escape(IMAGE_PAD)})+{re.escape(VISION_END)}")


def format_judged_templated(
    text: str, images: list[Image.Image], processor: Any, judge: JudgeDeclaration
) -> FormattedSample:
    """Already chat-templated text (OpenRLHF's ``query``: a conversation ending with the assistant's
    response) as a judge's pointwise question: its turns are read back from the ChatML markers."""
    turns = [(role, _IMAGE_RUN.sub("", content)) for role, content in _TURN.findall(text)]
    pads = len(_IMAGE_RUN.findall(text))
    if pads != len(images):
        raise FormattingError(f"text has {pads} images but {len(images)} images were given")
    if not turns or turns[-1][0] != "assistant":
        raise FormattingError("a judge rates the last turn of the text, an assistant's (<|im_start|>assistant ...)")
    question, system = _question_of(turns[:-1])
    return format_judge(judge, "pointwise", question, [turns[-1][1].rstrip()], system, images, processor)
