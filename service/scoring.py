"""The scoring pipeline behind every scoring route (no HTTP here):
admit -> prepare in a worker thread (media, formatting, encoding, limits) -> schedule -> account.

Each function takes the validated request and returns a :class:`Scored`; the HTTP routes only turn
that into their response shape. Errors are :class:`~vlreward.service.errors.ServiceError`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from vlreward.service.backends.base import EncodedInput
from vlreward.service.batching import BatchResult, Groups
from vlreward.service.ensemble import member_parts
from vlreward.service.errors import EngineBroken, ErrorKind, ServiceError, too_large
from vlreward.service.judge import Generation, GenerationParams, Verdict, orders_disagree, vote
from vlreward.service.kinds import GENERATE_FIELDS, refuse_unaccepted, sigmoid
from vlreward.service.lifecycle import ServedModel, ServiceState
from vlreward.service.prepare import GeneratingView, prepare_items, prepare_pairs, prepare_rank, prepare_templated
from vlreward.service.schemas import ClassifyRequest, CompareRequest, GetRewardRequest, RankRequest, ScoreRequest
from vlreward.service.settings import Settings
from vlreward.service.steps import as_one_step, refuse_without_steps, scored_steps


@dataclass
class Scored:
    """A request's model, its scores (None for items that failed with ``on_error: "null"``) and its accounting."""

    model: str
    scores: list[float | None]
    input_tokens: int
    images: int
    queue_ms: float
    inference_ms: float
    errors: list[tuple[int, ServiceError]] = field(default_factory=list)
    details: list[dict | None] | None = None
    """The model kind's extra outputs per item (a process model's step scores); None for scalar models."""
    output_tokens: int | None = None
    """Tokens a judge wrote (generate mode); None otherwise."""
    reference_version: str | None = None
    """The reference statistics the scores were normalised with; None: raw scores."""

    @property
    def samples(self) -> int:
        return sum(score is not None for score in self.scores)


INLINE_PREPARE_MAX_BYTES = 64 * 1024
"""Requests of at most this many body bytes that fetch no URL are prepared on the event loop: for a
small request the worker-thread hop (and its GIL hand-offs) costs more than the work
(docs/performance.md, "The measurements behind the defaults"). Larger
requests, and any that fetch an image URL, are prepared in a worker thread so the loop never waits."""

T = TypeVar("T")


async def _prepare(body_bytes: int | None, image_refs: Iterable[str], work: Callable[..., T], *args: Any) -> T:
    """Run ``work(*args)`` (media, formatting, encoding) inline or in a worker thread (see above);
    ``body_bytes`` is the request's Content-Length (None: unknown, so a thread)."""
    small = body_bytes is not None and body_bytes <= INLINE_PREPARE_MAX_BYTES
    if small and not any(ref.startswith(("http://", "https://")) for ref in image_refs):
        return work(*args)
    return await asyncio.to_thread(work, *args)


def _check_timeout(timeout_s: float | None, settings: Settings) -> None:
    """A request may not ask to run longer than the drain after SIGTERM would wait for it."""
    if timeout_s is not None and timeout_s > settings.max_request_timeout_s:
        raise ServiceError(
            f"timeout_s {timeout_s:g} exceeds this server's max_request_timeout_s ({settings.max_request_timeout_s:g})",
            kind=ErrorKind.VALIDATION,
            param="timeout_s",
        )


def _check_count(count: int, limit: int, what: str, param: str) -> None:
    if count > limit:
        raise too_large(f"{count} {what}; the limit is {limit}", param=param)


KIND_REQUEST_FIELDS = ("aggregate", "response_as_step", "head", *GENERATE_FIELDS)
"""Request fields only some kinds read (each kind lists the ones it accepts)."""


JUDGE_FORMS = {"pointwise": ("only compares", "/compare"), "pairwise": ("only rates", "/score or /rank")}
"""A judge's two forms: what a judge without one does, and the routes that ask the other."""


def _head(model: ServedModel, asked: str | None) -> str | None:
    """The head a request's ``scores`` hold: the one it names, else a multi-head model's default (None: a
    one-head model); a 400 at ``head`` for a head the model does not have."""
    if model.heads is None:
        if asked is not None:
            raise ServiceError(
                f"model {model.name!r} has one head; it does not accept `head`",
                kind=ErrorKind.INVALID_REQUEST,
                param="head",
            )
        return None
    if asked is not None and asked not in model.heads.names:
        raise ServiceError(
            f"model {model.name!r} has no head {asked!r}; its heads are {', '.join(model.heads.names)}",
            kind=ErrorKind.INVALID_REQUEST,
            param="head",
        )
    return asked or model.heads.default


def _normalization(model: ServedModel, asked: str | None) -> bool:
    """Whether a request's scores are returned as z-scores (``asked``, else the model's ``normalize``
    setting); a 400 at ``normalize`` when the model (every head of a multi-head model) has no reference
    statistics."""
    if (asked or model.settings.normalize) != "zscore":
        return False
    heads = [None] if model.heads is None else model.heads.names
    if any(model.reference_of(head) is None for head in heads):
        raise ServiceError(
            f"model {model.name!r} has no reference statistics to normalise with: run `vlreward calibrate` on it",
            kind=ErrorKind.INVALID_REQUEST,
            param="normalize",
        )
    return True


def _normalized(model: ServedModel, scored: Scored, normalize: bool, head: str | None = None) -> Scored:
    """The scores as (s - mean) / std of the model's reference statistics (``head``'s; a multi-head model's
    ``details[i].heads`` each with its own), after they were counted raw, so the drift histogram keeps one
    scale; naming the statistics' version."""
    if normalize:
        reference = model.reference_of(head)
        scored.scores = [None if s is None else reference.zscore(s) for s in scored.scores]
        scored.reference_version = reference.version
        if model.heads is not None:
            for item in scored.details:
                if item is not None:
                    item["heads"] = {h: model.reference_of(h).zscore(v) for h, v in item["heads"].items()}
    return scored


def _model_for(
    state: ServiceState, body: Any, items: Sequence[Any] = (), param: str = "items", form: str = "pointwise"
) -> ServedModel:
    """The model a request chose (404 for an unknown name), after checking that its kind accepts every
    kind-specific field the request and its items set (400 naming the first that it does not). Items are
    at ``param[i]``; an empty ``param`` means the one item is the request itself. A judge must declare the
    ``form`` the route asks in (pointwise: every route but /compare)."""
    model = state.model(body.model)
    if model.judge is not None and getattr(model.judge, form) is None:
        does, ask = JUDGE_FORMS[form]
        raise ServiceError(
            f"model {model.name!r} is a judge that {does} (its declaration {model.judge.name!r} has no {form} "
            f"template): ask {ask}",
            kind=ErrorKind.INVALID_REQUEST,
            param="model",
        )
    if model.kind is not None:
        paths = [f"{param}[{i}]" if param else "" for i in range(len(items))]
        fields = [field for item, path in zip(items, paths, strict=True) for field in _set_fields(item, path)]
        requested = [name for name in KIND_REQUEST_FIELDS if getattr(body, name, None) is not None]
        refuse_unaccepted(model.kind, model.name, fields, requested)
    return model


def _set_fields(sample: Any, param: str) -> list[tuple[str, str]]:
    """The fields a sample sets, each with where it is; a message's steps count as the sample's."""
    at = f"{param}." if param else ""
    fields = [(name, f"{at}{name}") for name in sample.model_fields_set if getattr(sample, name) is not None]
    for m, message in enumerate(getattr(sample, "messages", None) or []):
        if message.steps is not None:
            fields.append(("steps", f"{at}messages[{m}].steps"))
    return fields


def _account_scores(model: ServedModel, scored: Scored, aggregate: str | None, head: str | None = None) -> Scored:
    """A process model's step logits become step scores (``details``) and their ``aggregate`` (None: the
    checkpoint's), a judge's verdict logits its expected rating, a multi-head model's outputs its ``head``'s
    score and every head's (``details[i].heads``); every returned score is counted (the drift histogram: a
    multi-head model's default head, one scale), and every item's steps."""
    if model.heads is not None:
        heads = model.heads
        counted = [None if v is None else v[heads.index(None)] for v in scored.scores]
        scored.details = [None if v is None else {"heads": heads.named(v)} for v in scored.scores]
        scored.scores = [None if v is None else v[heads.index(head)] for v in scored.scores]
        for score in counted:
            if score is not None:
                model.metrics.score.observe(score)
        return scored
    if model.judge is not None:
        scored.scores = [None if logits is None else model.judge.rating(logits) for logits in scored.scores]
    if model.process is not None:
        scored.scores, scored.details = scored_steps(model.process, scored.scores, aggregate)
        for item in scored.details:
            if item is not None:
                model.metrics.steps.observe(len(item["step_scores"]))
    for score in scored.scores:
        if score is not None:
            model.metrics.score.observe(score)
    return scored


async def _schedule(
    model: ServedModel, endpoint: str, encoded: Sequence[EncodedInput], timeout_s: float | None, started: float,
    groups: Groups = (),
) -> tuple[BatchResult, int, int]:  # fmt: skip
    """Submit within what is left of the request's deadline; count samples, tokens, images and scores."""
    remaining = (timeout_s or model.settings.request_timeout_s) - (time.monotonic() - started)
    try:
        result = await model.admission.submit(encoded, remaining, groups=groups)
    except EngineBroken as exc:
        raise ServiceError(f"the scoring engine stopped: {exc}", kind=ErrorKind.UNHEALTHY) from exc
    tokens = sum(e.num_tokens for e in encoded)
    images = sum(e.num_images for e in encoded)
    metrics = model.metrics
    metrics.samples(endpoint).inc(len(encoded) - len(result.failures))
    metrics.input_tokens.inc(tokens)
    metrics.images.inc(images)
    if result.failures:  # the model's own failures; the engine refusing a client's input is an item error
        ours = sum(not isinstance(exc, ServiceError) for exc in result.failures.values())
        metrics.reject("model_error", ours)
        metrics.reject("item_error", len(result.failures) - ours)
    return result, tokens, images


def model_failure(exc: Exception, param: str) -> ServiceError:
    """The error of a sample the model failed on alone: the engine's own refusal of a client's input
    keeps its kind (a 4xx), anything else is ours (500 ``internal``); either names the item."""
    if isinstance(exc, ServiceError):
        return exc.at(param)
    message = f"the model failed on this sample ({type(exc).__name__}); the request's other samples were scored"
    return ServiceError(message, kind=ErrorKind.INTERNAL, param=param)


def _scores_or_raise(result: BatchResult, param: Callable[[int], str]) -> list[float]:
    """All scores of a request, or the error of its first failed item (``param`` names item i)."""
    if result.failures:
        index = min(result.failures)
        raise model_failure(result.failures[index], param(index))
    return list(result.scores)


async def score_items(state: ServiceState, body: ScoreRequest, body_bytes: int | None = None) -> Scored:
    """/score: samples in item order; with ``on_error: "null"`` a bad item gets None and an error.
    Items that share prompt and images (a GRPO group) run their prefix once, as /rank does."""
    started = time.monotonic()
    _check_timeout(body.timeout_s, state.settings)
    if body.model in state.ensembles:
        return await _ensemble(state, body, lambda member: score_items(state, member, body_bytes))
    model = _model_for(state, body, body.items)
    items = [as_one_step(item) for item in body.items] if body.response_as_step else body.items
    head = _head(model, body.head)
    normalize = _normalization(model, body.normalize)
    params = _generation(state.settings, model, body, len(items))
    if params is not None:
        scored = await _judge_generate_items(state, model, body, items, params, body_bytes, started)
        return _normalized(model, scored, normalize)
    async with state.admitted(model) as policy:
        _check_count(len(items), state.settings.max_items, "items", "items")
        encoded, errors, groups = await _prepare(
            body_bytes,
            (ref for item in items for ref in item.image_refs()),
            prepare_items, model.backend, items, policy, model.limits, body.truncate,
            body.on_error == "null",
        )  # fmt: skip
        positions = [i for i, e in enumerate(encoded) if e is not None]
        valid = [encoded[i] for i in positions]
        result, tokens, images = await _schedule(model, "/score", valid, body.timeout_s, started, groups)
        failed = sorted(
            ((positions[v], model_failure(exc, f"items[{positions[v]}]")) for v, exc in result.failures.items()),
            key=lambda pair: pair[0],
        )
        if failed and body.on_error != "null":
            raise failed[0][1]
        scores: list = [None] * len(encoded)
        for v, position in enumerate(positions):
            scores[position] = result.scores[v]
        if errors:
            model.metrics.reject("item_error", len(errors))
        errors = sorted(errors + failed, key=lambda pair: pair[0])
        scored = Scored(model.name, scores, tokens, images, result.queue_ms, result.inference_ms, errors)
        return _normalized(model, _account_scores(model, scored, body.aggregate, head), normalize, head)


async def rank(state: ServiceState, body: RankRequest, body_bytes: int | None = None) -> Scored:
    """/rank: the candidates share prompt and images, which are decoded, encoded and run once."""
    started = time.monotonic()
    _check_timeout(body.timeout_s, state.settings)
    if body.model in state.ensembles:
        return await _ensemble(state, body, lambda member: rank(state, member, body_bytes))
    candidates = body.candidates()
    model = _model_for(state, body, candidates, "responses")
    head = _head(model, body.head)
    normalize = _normalization(model, body.normalize)
    async with state.admitted(model) as policy:
        _check_count(len(body.responses), state.settings.max_responses, "responses", "responses")
        encoded = await _prepare(
            body_bytes, candidates[0].image_refs(), prepare_rank, model.backend, candidates, policy, model.limits
        )
        everything = [list(range(len(encoded)))]
        result, tokens, images = await _schedule(model, "/rank", encoded, body.timeout_s, started, everything)
        scores = _scores_or_raise(result, lambda i: f"responses[{i}]")
        scored = Scored(model.name, scores, tokens, images, result.queue_ms, result.inference_ms)
        return _normalized(model, _account_scores(model, scored, body.aggregate, head), normalize, head)


async def compare(state: ServiceState, body: CompareRequest, body_bytes: int | None = None) -> Scored:
    """/compare: ``scores`` holds each pair's P(A > B). A judge is asked the pair (in both orders with
    ``debias``); a scalar or process model scores A and B as /score items (they share their prompt and
    images, so they run it once) and P(A > B) = sigmoid(s_a - s_b) of its scores (a process model's: the
    aggregate). Pairs count twice against ``max_items``."""
    started = time.monotonic()
    _check_timeout(body.timeout_s, state.settings)
    samples = [sample for pair in body.pairs for sample in pair.samples()]
    where = lambda i: f"pairs[{i // 2}].{'ab'[i % 2]}"  # noqa: E731
    try:
        model = _model_for(state, body, samples, "items", form="pairwise")
    except ServiceError as exc:
        raise exc.at(_pair_param(exc.param, where)) from None
    if model.judge is not None:
        params = _generation(state.settings, model, body, len(body.pairs) * (2 if body.debias else 1))
        if params is not None:
            return await _judge_generate_pairs(state, model, body, samples, params, body_bytes, started)
        return await _judge_compare(state, model, body, samples, body_bytes, started)
    head = _head(model, body.head)
    async with state.admitted(model) as policy:
        _check_count(len(body.pairs), state.settings.max_items // 2, "pairs", "pairs")
        try:
            encoded, _, groups = await _prepare(
                body_bytes, (ref for sample in samples[0::2] for ref in sample.image_refs()),  # B shares A's
                prepare_items, model.backend, samples, policy, model.limits, "none", False,
            )  # fmt: skip
        except ServiceError as exc:  # located at items[i]: say which pair and side
            raise exc.at(_pair_param(exc.param, where)) from None
        result, tokens, images = await _schedule(model, "/compare", encoded, body.timeout_s, started, groups)
        scores = _scores_or_raise(result, where)
        scored = Scored(model.name, scores, tokens, images, result.queue_ms, result.inference_ms)
        scored = _account_scores(model, scored, body.aggregate, head)
        reference = model.reference_of(head)
        temperature = 1.0 if reference is None else reference.temperature  # vlreward calibrate's T
        pairs = zip(scored.scores[0::2], scored.scores[1::2], strict=True)
        scored.scores = [sigmoid((a - b) / temperature) for a, b in pairs]
        scored.details = None
        return scored


async def _judge_compare(
    state: ServiceState, model: ServedModel, body: CompareRequest, samples: list, body_bytes: int | None, started: float
) -> Scored:
    """/compare with a judge: P(first better) of each question; with ``debias`` the pair's two orders
    combined exactly antisymmetrically, and whether they agreed counted."""
    judge = model.judge
    pairs = list(zip(samples[0::2], samples[1::2], strict=True))
    async with state.admitted(model) as policy:
        _check_count(len(body.pairs), state.settings.max_items // 2, "pairs", "pairs")
        encoded, groups = await _prepare(
            body_bytes, (ref for a, _ in pairs for ref in a.image_refs()),
            prepare_pairs, model.backend, pairs, policy, model.limits, body.debias,
        )  # fmt: skip
        result, tokens, images = await _schedule(model, "/compare", encoded, body.timeout_s, started, groups)
        per_pair = 2 if body.debias else 1
        logits = _scores_or_raise(result, lambda i: f"pairs[{i // per_pair}]")
        questions = [logits[i : i + per_pair] for i in range(0, len(logits), per_pair)]
        if body.debias:
            for ab, ba in questions:
                disagree = orders_disagree(judge.prob_first(ab), judge.prob_first(ba))
                model.metrics.judge_orders["disagree" if disagree else "agree"].inc()
        probs = [judge.prob_a(pair) for pair in questions]
        return Scored(model.name, probs, tokens, images, result.queue_ms, result.inference_ms)


# -- a judge's generate mode ------------------------------------------------------------------------------


def _generation(settings: Settings, model: ServedModel, body: Any, questions: int) -> GenerationParams | None:
    """A judge request's generate mode within the server's limits (413 naming the limit), or None for logits
    mode (where a generate-mode field is a 422). ``questions``: how many questions the request asks (items,
    or pairs times orders)."""
    judge = model.judge
    if judge is None:
        return None  # other kinds refused the fields already (_model_for)
    asked = [name for name in GENERATE_FIELDS[1:] if getattr(body, name) not in (None, False)]
    if (body.mode or judge.mode) == "logits":
        if asked:
            raise ServiceError(
                f"`{asked[0]}` is for a judge's generate mode; this request reads its logits (send mode: generate)",
                kind=ErrorKind.VALIDATION,
                param=asked[0],
            )
        return None
    samples = body.samples or 1
    limits = [
        (samples, settings.judge_max_samples, "samples", "samples per question", "judge_max_samples"),
        (body.max_new_tokens or 0, settings.judge_max_new_tokens, "max_new_tokens", "new tokens",
         "judge_max_new_tokens"),
        (questions * samples, settings.judge_max_generations, "samples", "answers (questions x samples)",
         "judge_max_generations"),
    ]  # fmt: skip
    for count, limit, param, what, setting in limits:
        if count > limit:
            raise too_large(f"{count} {what}; this server's limit is {limit} ({setting})", param=param)
    return GenerationParams(
        samples=samples,
        temperature=body.temperature if body.temperature is not None else (0.0 if samples == 1 else 1.0),
        max_new_tokens=body.max_new_tokens or min(judge.max_new_tokens, settings.judge_max_new_tokens),
        seed=body.seed,
    )


async def _generate(
    model: ServedModel, encoded: list[EncodedInput], params: GenerationParams, timeout_s: float | None, started: float
) -> tuple[list[list[Generation]], float]:
    """The judge's answers within what is left of the request's deadline (504 after it; the generation stops),
    and how long they took (ms)."""
    remaining = (timeout_s or model.settings.request_timeout_s) - (time.monotonic() - started)
    began = time.monotonic()
    try:
        answers = await asyncio.wait_for(model.backend.generate(encoded, params), max(remaining, 0.001))
    except TimeoutError:
        message = "the request's deadline passed while the judge was writing"
        raise ServiceError(message, kind=ErrorKind.TIMEOUT) from None
    except EngineBroken as exc:
        raise ServiceError(f"the scoring engine stopped: {exc}", kind=ErrorKind.UNHEALTHY) from exc
    metrics = model.metrics
    metrics.input_tokens.inc(sum(e.num_tokens for e in encoded))
    metrics.images.inc(sum(e.num_images for e in encoded))
    metrics.judge_generated_tokens.inc(written(answers))
    return answers, (time.monotonic() - began) * 1000


def written(answers: list[list[Generation]]) -> int:
    """Tokens the judge wrote in all its answers."""
    return sum(a.tokens for question in answers for a in question)


def _parsed(model: ServedModel, form: str, answers: list[Generation]) -> list[Verdict]:
    return [model.judge.parse_verdict(form, a.text, a.truncated) for a in answers]


def _read_answers(
    model: ServedModel,
    form: str,
    answers: list[Generation],
    verdicts: list[Verdict],
    flipped: list[bool],
    critique: bool,
    param: str,
) -> tuple[float | None, dict, ServiceError | None]:
    """One item's answers and their parsed verdicts: its score (their vote), its details, and its error when
    no verdict parsed."""
    failures = [v.failure for v in verdicts if v.failure is not None]
    for reason in failures:
        model.metrics.judge_parse_failures[reason].inc()
    if form == "pointwise":
        shown = [v.value for v in verdicts]
    else:
        pairs = zip(verdicts, flipped, strict=True)
        shown = [None if v.value is None else "ab"[int(v.value == flip)] for v, flip in pairs]
    details: dict[str, Any] = {"verdicts": shown, "parse_failures": len(failures)}
    if critique:
        details["critiques"] = [a.text for a in answers]
    score = vote(form, verdicts, flipped)
    if score is not None:
        return score, details, None
    message = (
        f"none of the judge's {len(answers)} answers had a verdict its declaration's rule reads "
        f"({', '.join(sorted(set(failures)))}); try more max_new_tokens, samples or another seed"
    )
    return None, details, ServiceError(message, kind=ErrorKind.UNPARSED_VERDICT, param=param)


async def _judge_generate_items(
    state: ServiceState, model: ServedModel, body: ScoreRequest, items: list, params: GenerationParams,
    body_bytes: int | None, started: float,
) -> Scored:  # fmt: skip
    """/score in a judge's generate mode: each item's pointwise question answered ``samples`` times; its
    score is the mean parsed rating. An item without one is an item error (``on_error``)."""
    async with state.admitted(model) as policy:
        _check_count(len(items), state.settings.max_items, "items", "items")
        encoded, errors, _ = await _prepare(
            body_bytes, (ref for item in items for ref in item.image_refs()),
            prepare_items, GeneratingView(model.backend), items, policy, model.limits, body.truncate,
            body.on_error == "null",
        )  # fmt: skip
        positions = [i for i, e in enumerate(encoded) if e is not None]
        answers, inference_ms = await _generate(model, [encoded[i] for i in positions], params, body.timeout_s, started)
        model.metrics.samples("/score").inc(len(positions))
        scores: list = [None] * len(items)
        details: list = [None] * len(items)
        for position, item_answers in zip(positions, answers, strict=True):
            param = f"items[{position}]"
            flipped = [False] * len(item_answers)
            verdicts = _parsed(model, "pointwise", item_answers)
            score, details[position], error = _read_answers(
                model, "pointwise", item_answers, verdicts, flipped, bool(body.critique), param
            )
            if error is not None:
                errors.append((position, error))
            scores[position] = score
        if errors and body.on_error != "null":  # every answer read (and its failure counted) first
            raise min(errors, key=lambda pair: pair[0])[1]
        if errors:
            model.metrics.reject("item_error", len(errors))
        tokens = sum(encoded[i].num_tokens for i in positions)
        images = sum(encoded[i].num_images for i in positions)
        errors = sorted(errors, key=lambda pair: pair[0])
        scored = Scored(model.name, scores, tokens, images, 0.0, inference_ms, errors, details, written(answers))
        for score in scores:
            if score is not None:
                model.metrics.score.observe(score)
        return scored


async def _judge_generate_pairs(
    state: ServiceState, model: ServedModel, body: CompareRequest, samples: list, params: GenerationParams,
    body_bytes: int | None, started: float,
) -> Scored:  # fmt: skip
    """/compare in a judge's generate mode: each pair's question (in both orders with ``debias``) answered
    ``samples`` times; P(A > B) is the share of parsed votes for A. A pair without any fails the request."""
    pairs = list(zip(samples[0::2], samples[1::2], strict=True))
    per_pair = 2 if body.debias else 1
    async with state.admitted(model) as policy:
        _check_count(len(body.pairs), state.settings.max_items // 2, "pairs", "pairs")
        encoded, _ = await _prepare(
            body_bytes, (ref for a, _ in pairs for ref in a.image_refs()),
            prepare_pairs, GeneratingView(model.backend), pairs, policy, model.limits, body.debias,
        )  # fmt: skip
        answers, inference_ms = await _generate(model, encoded, params, body.timeout_s, started)
        model.metrics.samples("/compare").inc(len(encoded))
        probs, details = [], []
        for index in range(len(pairs)):
            orders = answers[index * per_pair : (index + 1) * per_pair]
            parsed = [_parsed(model, "pairwise", order) for order in orders]
            flat = [a for order in orders for a in order]
            verdicts = [v for order in parsed for v in order]
            flipped = [k == 1 for k, order in enumerate(orders) for _ in order]
            where = f"pairs[{index}]"
            prob, detail, error = _read_answers(model, "pairwise", flat, verdicts, flipped, bool(body.critique), where)
            if error is not None:
                raise error
            if body.debias:  # each order's share of votes for its first response
                shares = [vote("pairwise", order) for order in parsed]
                if None not in shares:
                    model.metrics.judge_orders["disagree" if orders_disagree(*shares) else "agree"].inc()
            probs.append(prob)
            details.append(detail)
        tokens, images = sum(e.num_tokens for e in encoded), sum(e.num_images for e in encoded)
        return Scored(
            model.name, probs, tokens, images, 0.0, inference_ms, details=details, output_tokens=written(answers)
        )


async def _ensemble(state: ServiceState, body: Any, ask: Callable[[Any], Awaitable[Scored]]) -> Scored:
    """A request to an ensemble: asked once of every model its members are (or are heads of: one forward pass
    gives every head), raw, as a request of its own; each member's score normalised with its own reference
    statistics and each item's member z-scores combined (:meth:`~vlreward.service.ensemble.Ensemble.combine`).
    An item a model could not score (``on_error: "null"``) is null with that model's error."""
    ensemble = state.ensembles[body.model]
    if body.normalize == "none":
        raise ServiceError(
            f"ensemble {ensemble.name!r} combines z-scores: its scores are normalised", param="normalize"
        )
    if body.head is not None:
        raise ServiceError(
            f"ensemble {ensemble.name!r} has no heads; its members name theirs", kind=ErrorKind.INVALID_REQUEST,
            param="head",
        )  # fmt: skip
    asked = await asyncio.gather(
        *(ask(body.model_copy(update={"model": m, "normalize": "none"})) for m in ensemble.models)
    )
    by_model = dict(zip(ensemble.models, asked, strict=True))
    errors: dict[int, ServiceError] = {}
    for scored in asked:
        for index, error in scored.errors:
            errors.setdefault(index, error)
    references = {m: state.models[member_parts(m)[0]].reference_of(member_parts(m)[1]) for m in ensemble.members}

    def raw(member: str, index: int) -> float:
        name, head = member_parts(member)
        scored = by_model[name]
        return scored.scores[index] if head is None else scored.details[index]["heads"][head]

    scores: list[float | None] = []
    details: list[dict | None] = []
    histogram = state.metrics.ensemble_disagreement.labels(model=ensemble.name)
    for index in range(len(asked[0].scores)):
        if index in errors:
            scores.append(None)
            details.append(None)
            continue
        score, detail = ensemble.combine({m: references[m].zscore(raw(m, index)) for m in ensemble.members})
        histogram.observe(detail["disagreement"])
        scores.append(score)
        details.append(detail)
    return Scored(
        ensemble.name, scores, sum(m.input_tokens for m in asked), sum(m.images for m in asked),
        max(m.queue_ms for m in asked), max(m.inference_ms for m in asked), sorted(errors.items()), details,
        reference_version=",".join(f"{m}:{r.version}" for m, r in references.items()),
    )  # fmt: skip


def _pair_param(param: str | None, where: Callable[[int], str]) -> str | None:
    """``items[i]...`` (where /score's preparation locates an error) as ``pairs[i // 2].a|b...``."""
    if param is None or not param.startswith("items["):
        return param
    index, rest = param[len("items[") :].split("]", 1)
    return where(int(index)) + rest


async def score_templated(state: ServiceState, body: GetRewardRequest, body_bytes: int | None = None) -> Scored:
    """/get_reward: already chat-templated queries (+ images per query)."""
    started = time.monotonic()
    _check_timeout(body.timeout_s, state.settings)
    model = _model_for(state, body)
    if model.process is not None:
        refuse_without_steps(body.query, model.process.step_tag, "query")
    async with state.admitted(model) as policy:
        _check_count(len(body.query), state.settings.max_items, "queries", "query")
        encoded = await _prepare(
            body_bytes,
            (ref for refs in body.images or [] for ref in refs),
            prepare_templated, model.backend, body.query, body.images, policy, model.limits,
        )  # fmt: skip
        result, tokens, images = await _schedule(model, "/get_reward", encoded, body.timeout_s, started)
        scores = _scores_or_raise(result, lambda i: f"query[{i}]")
        scored = Scored(model.name, scores, tokens, images, result.queue_ms, result.inference_ms)
        return _account_scores(model, scored, body.aggregate)


async def classify(state: ServiceState, body: ClassifyRequest, body_bytes: int | None = None) -> Scored:
    """/classify (vLLM's protocol): templated texts, or one conversation given as messages."""
    started = time.monotonic()
    _check_timeout(body.timeout_s, state.settings)
    model = _model_for(state, body, [body.sample()] if body.messages is not None else [], "")
    if model.process is not None and body.messages is None:
        refuse_without_steps(body.texts(), model.process.step_tag, "input")
    async with state.admitted(model) as policy:
        if body.messages is not None:
            sample = body.sample()
            encoded, _, _ = await _prepare(
                body_bytes, sample.image_refs(), prepare_items, model.backend, [sample], policy,
                model.limits, "none", False,
            )  # fmt: skip
        else:
            _check_count(len(body.texts()), state.settings.max_items, "inputs", "input")
            encoded = await _prepare(
                body_bytes, (), prepare_templated, model.backend, body.texts(), None, policy, model.limits
            )
        result, tokens, images = await _schedule(model, "/classify", encoded, body.timeout_s, started)
        scores = _scores_or_raise(result, lambda i: "messages" if body.messages is not None else f"input[{i}]")
        scored = Scored(model.name, scores, tokens, images, result.queue_ms, result.inference_ms)
        return _account_scores(model, scored, body.aggregate)
