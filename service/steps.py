"""Process models' requests: every item's steps checked (the step tag's text nowhere in the input, the
limits on steps and on tokens per step), a response taken as one step when the request asks, and the
head's logits at the step tags turned into step scores and the aggregate every route returns."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from vlreward.service.errors import ErrorKind, ServiceError, too_large
from vlreward.service.kinds import ProcessHead
from vlreward.service.model.formatting import FormattingError
from vlreward.service.schemas import Message, Sample, TextPart


def as_one_step(sample: Sample) -> Sample:
    """A sample whose response becomes its only step (``response_as_step``); one with steps is kept."""
    if sample.messages is None:
        if sample.response is None:
            return sample
        return sample.model_copy(update={"response": None, "steps": [sample.response]})
    last = sample.messages[-1]
    if last.steps is not None or not isinstance(last.content, str):
        return sample
    messages = [*sample.messages[:-1], Message(role="assistant", steps=[last.content])]
    return sample.model_copy(update={"messages": messages})


def _texts(sample: Sample) -> Iterable[tuple[str, str]]:
    """Every text of a sample with its field path: prompt, system, response, steps, message contents."""
    for name in ("prompt", "system", "response"):
        value = getattr(sample, name)
        if value is not None:
            yield name, value
    for j, step in enumerate(sample.steps or []):
        yield f"steps[{j}]", step
    for m, message in enumerate(sample.messages or []):
        if isinstance(message.content, str):
            yield f"messages[{m}].content", message.content
        elif message.content is not None:
            for p, part in enumerate(message.content):
                if isinstance(part, TextPart):
                    yield f"messages[{m}].content[{p}].text", part.text
        for j, step in enumerate(message.steps or []):
            yield f"messages[{m}].steps[{j}]", step


def check_steps(
    sample: Sample, step_tag: str, tokenizer: Any, max_steps: int, max_step_tokens: int, param: str
) -> None:
    """Refuse what a process model cannot score: no steps (400 at the response), steps before the last
    message (400), the step tag's text anywhere in the input (400: it would add a step), more steps or
    longer steps than the limits (413). ``param`` locates the sample in the request."""
    steps = sample.step_list()
    if steps is None:
        where = "response" if sample.messages is None else f"messages[{len(sample.messages) - 1}].content"
        raise ServiceError(
            "a process model scores `steps` (a list of the response's steps); send steps, or "
            "`response_as_step: true` to score the response as one step",
            param=f"{param}.{where}",
        )
    for m, message in enumerate((sample.messages or [])[:-1]):
        if message.steps is not None:
            message = "only the last message (the response judged) may have steps"
            raise ServiceError(message, param=f"{param}.messages[{m}]")
    for path, text in _texts(sample):
        if step_tag in text:
            raise ServiceError(
                f"the text contains the model's step tag {step_tag!r}, which marks where a step ends; remove it",
                param=f"{param}.{path}",
            )
    where = "steps" if sample.messages is None else f"messages[{len(sample.messages) - 1}].steps"
    if len(steps) > max_steps:
        raise too_large(f"{len(steps)} steps; the limit is {max_steps} per item", param=f"{param}.{where}")
    for j, step in enumerate(steps):
        tokens = len(tokenizer(step, add_special_tokens=False)["input_ids"])
        if tokens > max_step_tokens:
            raise too_large(f"step has {tokens} tokens; the limit is {max_step_tokens}", param=f"{param}.{where}[{j}]")


def step_ends(token_ids: Sequence[int], tag_id: int, step_tag: str) -> tuple[int, ...]:
    """Where a process sample's steps end: the positions of its step tag's token, in order (each
    backend reads the head there). A text without the tag has nothing to score (FormattingError)."""
    positions = tuple(index for index, token in enumerate(token_ids) if token == tag_id)
    if not positions:
        raise FormattingError(f"no step ends with the step tag {step_tag!r}: nothing to score")
    return positions


def refuse_without_steps(texts: Sequence[str], step_tag: str, param: str) -> None:
    """Already-templated texts (/get_reward, /classify) for a process model must hold its step tags."""
    for index, text in enumerate(texts):
        if step_tag not in text:
            raise ServiceError(
                f"a process model reads its head at the step tag {step_tag!r}; this text has none",
                kind=ErrorKind.INVALID_REQUEST,
                param=f"{param}[{index}]",
            )


def scored_steps(
    head: ProcessHead, logits: Sequence[list[float] | None], aggregate: str | None
) -> tuple[list[float | None], list[dict[str, list[float]] | None]]:
    """Each item's step scores (``details[i].step_scores``) and their aggregate (``scores[i]``)."""
    scores: list[float | None] = []
    details: list[dict[str, list[float]] | None] = []
    for item in logits:
        if item is None:
            scores.append(None)
            details.append(None)
            continue
        steps = head.step_scores(item)
        scores.append(head.aggregate_of(steps, aggregate))
        details.append({"step_scores": steps})
    return scores, details
