"""Sample -> model input: decode images (media), apply the chat template (formatting), encode, check limits.

Runs in a worker thread (image decoding and preprocessing are CPU work). Every error is an
:class:`~vlreward.service.errors.ServiceError` located at the request field it concerns.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from PIL import Image

from vlreward.service.errors import Overloaded, ServiceError, too_large
from vlreward.service.media import MediaError, MediaPolicy, load_image
from vlreward.service.model.formatting import (
    FormattedSample,
    FormattingError,
    format_judged_orders,
    format_judged_pair,
    format_judged_templated,
    format_sample,
    format_templated,
)
from vlreward.service.schemas import ImagePart, Sample, TextPart
from vlreward.service.settings import default
from vlreward.service.steps import check_steps

if TYPE_CHECKING:
    from vlreward.service.backends.base import Backend, EncodedInput
    from vlreward.service.judge import JudgeDeclaration

Truncate = Literal["none", "prompt_left"]
T = TypeVar("T")


@dataclass(frozen=True)
class Limits:
    """Per-sample limits."""

    max_tokens: int = default("max_tokens")
    max_images: int = default("max_images")
    max_steps: int = default("max_steps")
    max_step_tokens: int = default("max_step_tokens")


def load_images(
    refs: list[str], params: list[str], policy: MediaPolicy, max_images: int, owner: str | None
) -> list[Image.Image]:
    """Decode a sample's images in order. ``params`` are the images' field paths, ``owner`` the sample's."""
    if len(refs) > max_images:
        raise too_large(f"{len(refs)} images; the limit is {max_images} per sample", param=owner)
    images = []
    for ref, param in zip(refs, params, strict=True):
        try:
            images.append(load_image(ref, policy))
        except MediaError as exc:
            raise exc.at(param) from exc
    return images


def _located(params: list[str], prefix: str) -> list[str]:
    return [f"{prefix}.{p}" if prefix else p for p in params]


def prepare_sample(
    sample: Sample,
    processor: Any,
    policy: MediaPolicy,
    param_prefix: str = "",
    max_images: int = 1 << 30,
    step_tag: str | None = None,
    judge: JudgeDeclaration | None = None,
) -> FormattedSample:
    """Decode the sample's images in order and format it (``step_tag``: a process model's; ``judge``: a
    judge's declaration)."""
    params = _located(sample.image_params(), param_prefix)
    images = load_images(sample.image_refs(), params, policy, max_images, param_prefix or None)
    return format_sample(sample, images, processor, step_tag, judge)


def prepare_request_sample(
    sample: dict,
    processor: Any,
    policy: MediaPolicy | None = None,
    step_tag: str | None = None,
    judge: JudgeDeclaration | None = None,
) -> FormattedSample:
    """A sample in the HTTP JSON shape (a dict) -> the model's input: the one path of probes, warm-up,
    offline tools and benchmarks that hold samples as dicts (images inline unless ``policy`` allows more).
    A judge without a pointwise template is asked to compare the response with itself."""
    parsed = Sample.model_validate(sample)
    policy = policy or MediaPolicy()
    if judge is not None and not judge.rates:  # a judge that only compares: the response against itself
        images = load_images(parsed.image_refs(), parsed.image_params(), policy, 1 << 30, None)
        return format_judged_pair(parsed, parsed, images, processor, judge)
    return prepare_sample(parsed, processor, policy, step_tag=step_tag, judge=judge)


class GeneratingView:
    """A judge's backend as its generate mode formats questions: the judge's answer is opened with its
    ``generate_prefix`` (the judge writes its critique, then the verdict) instead of the verdict's answer
    prefix. Everything else is the backend's; every ``prepare_*`` function takes it as a backend."""

    def __init__(self, backend: Backend):
        self._backend = backend
        self.judge = backend.judge.for_generation()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)


def formatted(backend: Backend, sample: Sample, images: list) -> FormattedSample:
    """A sample formatted for ``backend``'s model (its kind decides how)."""
    return format_sample(sample, images, backend.processor, backend.step_tag, backend.judge)


def _text_slots(sample: Sample) -> list[tuple[int | None, int | None]]:
    """Where prompt text lives, earliest first: (message, part) pairs; (None, None) is `prompt`."""
    if sample.messages is None:
        return [(None, None)]
    slots: list[tuple[int | None, int | None]] = []
    for m, message in enumerate(sample.messages[:-1]):
        if message.role == "system" or message.content is None:
            continue
        if isinstance(message.content, str):
            slots.append((m, None))
        else:
            slots += [(m, p) for p, part in enumerate(message.content) if isinstance(part, TextPart)]
    return slots


def _get_text(sample: Sample, slot: tuple[int | None, int | None]) -> str:
    m, p = slot
    if m is None:
        return sample.prompt or ""
    content = sample.messages[m].content
    return content if p is None else content[p].text


def _with_text(sample: Sample, slot: tuple[int | None, int | None], text: str) -> Sample:
    m, p = slot
    if m is None:
        return sample.model_copy(update={"prompt": text})
    messages = [message.model_copy(deep=True) for message in sample.messages]
    if p is None:
        messages[m].content = text
    else:
        messages[m].content[p].text = text
    return sample.model_copy(update={"messages": messages})


def truncate_prompt_left(sample: Sample, excess: int, tokenizer: Any) -> Sample | None:
    """Drop ``excess`` tokens of prompt text from the left (earliest turns first); never the response.

    Returns None when the prompt text is too short to absorb the excess.
    """
    for slot in _text_slots(sample):
        if excess <= 0:
            break
        ids = tokenizer(_get_text(sample, slot), add_special_tokens=False)["input_ids"]
        cut = min(excess, len(ids))
        sample = _with_text(sample, slot, tokenizer.decode(ids[cut:]))
        excess -= cut
    return sample if excess <= 0 else None


def _encode(backend: Backend, sample: Sample, images: list, param: str) -> EncodedInput:
    """Format and encode one sample; what cannot be formatted is a 400 at ``param``."""
    try:
        return backend.encode(formatted(backend, sample, images))
    except FormattingError as exc:
        raise ServiceError(str(exc), param=param) from exc


def encode_within_limit(
    backend: Backend, sample: Sample, images: list, limits: Limits, truncate: Truncate, param: str
) -> EncodedInput:
    """Format and encode, applying the token limit (cut the prompt from the left when asked)."""
    encoded = _encode(backend, sample, images, param)
    for _ in range(4):  # re-tokenising cut text can shift a token or two; converge in a few rounds
        if encoded.num_tokens <= limits.max_tokens:
            return encoded
        if truncate != "prompt_left":
            break
        shorter = truncate_prompt_left(sample, encoded.num_tokens - limits.max_tokens, backend.processor.tokenizer)
        if shorter is None:
            break
        sample = shorter
        encoded = _encode(backend, sample, images, param)
    raise too_large(
        f"sample has {encoded.num_tokens} tokens (images included); the limit is {limits.max_tokens}"
        + ("" if truncate == "prompt_left" else " (truncate: prompt_left cuts the prompt to fit)"),
        param=param,
    )


def load_item_images(backend: Backend, sample: Sample, policy: MediaPolicy, limits: Limits, param: str) -> list:
    """One /score item's checks before encoding: a process model's steps, then its images decoded and
    counted against the request's image memory."""
    if backend.step_tag is not None:
        tokenizer = backend.processor.tokenizer
        check_steps(sample, backend.step_tag, tokenizer, limits.max_steps, limits.max_step_tokens, param)
    params = _located(sample.image_params(), param)
    return load_images(sample.image_refs(), params, policy, limits.max_images, param)


def prepare_item(backend: Backend, sample: Sample, policy: MediaPolicy, limits: Limits, truncate: Truncate, param: str):
    """One /score item -> encoded model input (a process model's: its steps checked first)."""
    images = load_item_images(backend, sample, policy, limits, param)
    return encode_within_limit(backend, sample, images, limits, truncate, param)


def prefix_key(sample: Sample) -> str | None:
    """What /score items must have in common to share a prefix: everything before the response (the
    system text, the prompt or the earlier messages, and the image references). None: the sample's
    response carries images, so nothing before it can be shared safely."""
    if sample.messages is None:
        return json.dumps(["prompt", sample.system, sample.prompt, sample.image_refs()])
    last = sample.messages[-1]
    if isinstance(last.content, list) and any(isinstance(p, ImagePart) for p in last.content):
        return None
    return json.dumps(["messages", [m.model_dump(mode="json") for m in sample.messages[:-1]]])


def shared_prefix_groups(samples: list[Sample], truncate: Truncate) -> list[list[int]]:
    """Indices of /score items that share their prompt and images (a GRPO group), two or more each.
    Items cut with ``prompt_left`` are never grouped: each may lose a different part of its prompt."""
    if truncate != "none" or len(samples) < 2:
        return []
    by_key: dict[str, list[int]] = {}
    for index, sample in enumerate(samples):
        key = prefix_key(sample)
        if key is not None:
            by_key.setdefault(key, []).append(index)
    return [indices for indices in by_key.values() if len(indices) > 1]


def encode_sharing_images(
    backend: Backend, samples: list[Sample], policy: MediaPolicy, limits: Limits, param: str | None
) -> list[EncodedInput]:
    """Samples with the same images (a /rank request, a GRPO group): the first sample's images are
    decoded and preprocessed once for all. ``param`` locates the first sample in the request."""
    return encode_with_images(backend, samples, load_shared_images(samples[0], policy, limits, param), param)


def load_shared_images(first: Sample, policy: MediaPolicy, limits: Limits, param: str | None) -> list:
    """The images of samples that share them, decoded from the ``first`` one, which ``param`` locates."""
    params = _located(first.image_params(), param or "")
    return load_images(first.image_refs(), params, policy, limits.max_images, param)


def encode_with_images(backend: Backend, samples: list[Sample], images: list, param: str | None) -> list[EncodedInput]:
    """Samples that share ``images``, encoded with them preprocessed once."""
    try:
        return backend.encode_shared([formatted(backend, sample, images) for sample in samples])
    except FormattingError as exc:
        raise ServiceError(str(exc), param=param) from exc


ENCODING_THREADS_MAX = 8
"""Threads that encode the items of /score requests side by side, at most (one per core below that)."""


@functools.cache
def encoding_pool() -> ThreadPoolExecutor:
    """The process's threads that encode a many-item request's items side by side: encoding (the image
    processor, the tokenizer) releases the GIL for much of its work (the measurement: docs/performance.md,
    "The measurements behind the defaults")."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return encoding_threads(min(ENCODING_THREADS_MAX, cores))


def encoding_threads(threads: int) -> ThreadPoolExecutor:
    """``threads`` encoding threads, each running torch on one core (:func:`encoding_pool` is the process's)."""
    return ThreadPoolExecutor(threads, thread_name_prefix="vlreward-encode", initializer=_torch_on_one_core)


def _torch_on_one_core() -> None:
    """An encoding thread runs torch (the image processor) on one core: the threads already run side by
    side, and a multi-threaded OpenMP team in each would oversubscribe the cores (on a GPU host nothing
    else sets torch's thread count)."""
    import torch

    torch.set_num_threads(1)


def side_by_side(works: list[Callable[[], T]]) -> list[T | ServiceError]:
    """Each work's result in order, run on :func:`encoding_pool` when there are several; a work's
    :class:`ServiceError` is its result (anything else is raised)."""

    def outcome(work: Callable[[], T]) -> T | ServiceError:
        try:
            return work()
        except ServiceError as exc:
            return exc

    if len(works) < 2:
        return [outcome(work) for work in works]
    return list(encoding_pool().map(outcome, works))


def prepare_items(
    backend: Backend,
    samples: list[Sample],
    policy: MediaPolicy,
    limits: Limits,
    truncate: Truncate,
    collect_errors: bool,
) -> tuple[list[EncodedInput | None], list[tuple[int, ServiceError]], list[list[int]]]:
    """All /score items; with ``collect_errors`` a bad item becomes None plus an error, else the first bad
    item's error (in item order) is raised.

    Also returns the groups of items that share a prefix, as indices into the items that were encoded
    (the Nones left out), for the scheduler to run each group's prompt and images once.

    Images are decoded in item order on this thread (so which item meets an image limit does not depend on
    timing); the items are then encoded side by side (:func:`side_by_side`).
    """
    encoded: list[EncodedInput | None] = [None] * len(samples)
    # A process model's items go one by one (their steps are checked there; it shares no prefix yet).
    groups = [] if backend.step_tag is not None else shared_prefix_groups(samples, truncate)
    loaded: list[tuple[list[int], list]] = []  # (a group's item indices, their shared images)
    for group in groups:
        try:
            loaded.append((group, load_shared_images(samples[group[0]], policy, limits, f"items[{group[0]}]")))
        except Overloaded:
            raise  # the service's image memory is full: the whole request waits (429)
        except ServiceError:
            continue  # its images failed: each item goes the one-by-one way below, which locates the error
    group_works = [
        functools.partial(encode_with_images, backend, [samples[i] for i in group], images, f"items[{group[0]}]")
        for group, images in loaded
    ]
    shared: list[list[int]] = []
    for (group, _), result in zip(loaded, side_by_side(group_works), strict=True):
        if isinstance(result, ServiceError):
            continue  # formatting failed: the one-by-one way locates it
        members = []
        for index, item in zip(group, result, strict=True):
            if item.num_tokens <= limits.max_tokens:  # one over the limit goes the one-by-one way, which reports it
                encoded[index] = item
                members.append(index)
        shared.append(members)
    errors: list[tuple[int, ServiceError]] = []
    alone: list[tuple[int, list]] = []  # (item index, its decoded images)
    for index, sample in enumerate(samples):
        if encoded[index] is not None:
            continue
        try:
            alone.append((index, load_item_images(backend, sample, policy, limits, f"items[{index}]")))
        except Overloaded:
            raise  # the service's image memory is full: the whole request waits (429)
        except ServiceError as exc:
            errors.append((index, exc))
            if not collect_errors:
                break  # an earlier item's encoding error, if any, comes first (below)
    item_works = [
        functools.partial(encode_within_limit, backend, samples[i], images, limits, truncate, f"items[{i}]")
        for i, images in alone
    ]
    for (index, _), result in zip(alone, side_by_side(item_works), strict=True):
        if isinstance(result, ServiceError):
            errors.append((index, result))
        else:
            encoded[index] = result
    errors.sort(key=lambda pair: pair[0])
    if errors and not collect_errors:
        raise errors[0][1]
    position = {}  # item index -> its place among the encoded items
    for index, item in enumerate(encoded):
        if item is not None:
            position[index] = len(position)
    return encoded, errors, [[position[i] for i in group] for group in shared if len(group) > 1]


def prepare_rank(backend: Backend, candidates: list[Sample], policy: MediaPolicy, limits: Limits) -> list[EncodedInput]:
    """/rank: candidates share prompt and images, so the images are decoded and preprocessed once."""
    if backend.step_tag is not None:
        tokenizer = backend.processor.tokenizer
        for index, candidate in enumerate(candidates):
            try:
                check_steps(candidate, backend.step_tag, tokenizer, limits.max_steps, limits.max_step_tokens, "")
            except ServiceError as exc:  # located at the candidate: its steps are the response
                raise exc.at(f"responses[{index}]") from exc
    encoded = encode_sharing_images(backend, candidates, policy, limits, None)
    for index, item in enumerate(encoded):
        if item.num_tokens > limits.max_tokens:
            raise too_large(
                f"prompt + response has {item.num_tokens} tokens; the limit is {limits.max_tokens}",
                param=f"responses[{index}]",
            )
    return encoded


def prepare_templated(
    backend: Backend, queries: list[str], image_refs: list[list[str]] | None, policy: MediaPolicy, limits: Limits
) -> list[EncodedInput]:
    """/get_reward: already chat-templated text (+ images per query) -> encoded model input."""
    encoded = []
    for index, query in enumerate(queries):
        refs = image_refs[index] if image_refs is not None else []
        params = [f"images[{index}][{i}]" for i in range(len(refs))]
        images = load_images(refs, params, policy, limits.max_images, f"images[{index}]")
        try:
            if backend.judge is None:
                item = backend.encode(format_templated(query, images))
            else:
                item = backend.encode(format_judged_templated(query, images, backend.processor, backend.judge))
        except FormattingError as exc:
            raise ServiceError(str(exc), param=f"query[{index}]") from exc
        if item.num_tokens > limits.max_tokens:
            raise too_large(f"query has {item.num_tokens} tokens; the limit is {limits.max_tokens}", f"query[{index}]")
        encoded.append(item)
    return encoded


def prepare_pairs(
    backend: Backend, pairs: list[tuple[Sample, Sample]], policy: MediaPolicy, limits: Limits, debias: bool
) -> tuple[list[EncodedInput], list[list[int]]]:
    """/compare with a judge: each pair as the judge's pairwise question, asked A first and, with
    ``debias``, B first too (the pair's images decoded once). Returns the questions in that order and the
    groups that share a prefix (a pair's two orders share the prompt and images)."""
    encoded: list[EncodedInput] = []
    groups: list[list[int]] = []
    for index, (a, b) in enumerate(pairs):
        param = f"pairs[{index}]"
        images = load_images(a.image_refs(), _located(a.image_params(), param), policy, limits.max_images, param)
        try:
            questions = format_judged_orders(a, b, images, backend.processor, backend.judge, debias)
        except FormattingError as exc:
            raise ServiceError(str(exc), param=param) from exc
        items = backend.encode_shared(questions)
        for item in items:
            if item.num_tokens > limits.max_tokens:
                message = f"the judge's question has {item.num_tokens} tokens; the limit is {limits.max_tokens}"
                raise too_large(message, param=param)
        if len(items) > 1:
            groups.append(list(range(len(encoded), len(encoded) + len(items))))
        encoded += items
    return encoded, groups
