"""POST /score, /rank, /compare, /get_reward and /classify: validate, run the scoring pipeline, shape the
response."""

from __future__ import annotations

import contextlib
import math
import time
import uuid

from fastapi import APIRouter, Depends, Request, Response

from vlreward.service import scoring
from vlreward.service.errors import ServiceError
from vlreward.service.http.dependencies import require_api_key, service_state, with_cancellation
from vlreward.service.http.errors import documented_errors
from vlreward.service.lifecycle import ServiceState
from vlreward.service.model.checkpoint import REWARD_LABEL
from vlreward.service.schemas import (
    ClassifyData,
    ClassifyRequest,
    ClassifyResponse,
    ClassifyUsage,
    CompareRequest,
    CompareResponse,
    CompareResult,
    GetRewardRequest,
    GetRewardResponse,
    ItemError,
    RankRequest,
    RankResponse,
    ScoreRequest,
    ScoreResponse,
    Usage,
)

router = APIRouter(dependencies=[Depends(require_api_key)], responses=documented_errors())


def body_bytes(request: Request) -> int | None:
    """The request's Content-Length (None when it was sent without one)."""
    length = request.headers.get("content-length")
    return int(length) if length and length.isdigit() else None


def _label(request: Request, state: ServiceState, model: str | None) -> None:
    """Record the model a request chose, for its request metrics (an unknown name stays unlabelled)."""
    with contextlib.suppress(ServiceError):
        request.state.model = state.model(model).name


def _account(request: Request, response: Response, scored: scoring.Scored) -> Usage:
    """Timing headers, the access log's figures, and the usage block."""
    response.headers["x-queue-time-ms"] = f"{scored.queue_ms:.3f}"
    response.headers["x-inference-time-ms"] = f"{scored.inference_ms:.3f}"
    request.state.samples, request.state.tokens = scored.samples, scored.input_tokens
    request.state.queue_ms, request.state.inference_ms = scored.queue_ms, scored.inference_ms
    return Usage(input_tokens=scored.input_tokens, images=scored.images, output_tokens=scored.output_tokens)


@router.post("/score", response_model=ScoreResponse, response_model_exclude_none=True)
@with_cancellation
async def score(
    body: ScoreRequest, request: Request, response: Response, state: ServiceState = Depends(service_state)
) -> ScoreResponse:
    """Score samples; scores come back in item order."""
    _label(request, state, body.model)
    scored = await scoring.score_items(state, body, body_bytes(request))
    if state.capture is not None:
        state.capture.offer("/score", scored.model, body.items, scored.scores, scored.reference_version)
    errors = [ItemError(index=i, type=e.kind, message=e.message, param=e.param) for i, e in scored.errors]
    return ScoreResponse(
        model=scored.model,
        scores=scored.scores,
        details=scored.details,
        usage=_account(request, response, scored),
        errors=errors or None,
        reference_version=scored.reference_version,
    )


@router.post("/rank", response_model=RankResponse, response_model_exclude_none=True)
@with_cancellation
async def rank(
    body: RankRequest, request: Request, response: Response, state: ServiceState = Depends(service_state)
) -> RankResponse:
    """Score several responses to one prompt and rank them (best first; ties keep input order)."""
    _label(request, state, body.model)
    scored = await scoring.rank(state, body, body_bytes(request))
    if state.capture is not None:
        state.capture.offer("/rank", scored.model, body.candidates(), scored.scores, scored.reference_version)
    ranking = sorted(range(len(scored.scores)), key=lambda i: (-scored.scores[i], i))
    return RankResponse(
        model=scored.model,
        scores=scored.scores,
        details=scored.details,
        ranking=ranking[: body.top_k] if body.top_k else ranking,
        best=ranking[0],
        usage=_account(request, response, scored),
        reference_version=scored.reference_version,
    )


@router.post("/compare", response_model=CompareResponse, response_model_exclude_none=True)
@with_cancellation
async def compare(
    body: CompareRequest, request: Request, response: Response, state: ServiceState = Depends(service_state)
) -> CompareResponse:
    """Which of two responses is better, as P(A > B), per pair: a judge's verdict (asked in both orders
    unless ``debias`` is false); a scalar or process model's sigmoid(s_a - s_b) of its scores (a process
    model's: the aggregate)."""
    _label(request, state, body.model)
    scored = await scoring.compare(state, body, body_bytes(request))
    results = []
    for prob in scored.scores:
        results.append(CompareResult(prob_a=prob, verdict="a" if prob > 0.5 else "b" if prob < 0.5 else "tie"))
    usage = _account(request, response, scored)
    return CompareResponse(model=scored.model, results=results, details=scored.details, usage=usage)


@router.post("/get_reward", response_model=GetRewardResponse)
@with_cancellation
async def get_reward(
    body: GetRewardRequest, request: Request, response: Response, state: ServiceState = Depends(service_state)
) -> GetRewardResponse:
    """OpenRLHF's remote reward protocol: chat-templated queries in, raw rewards out."""
    _label(request, state, body.model)
    scored = await scoring.score_templated(state, body, body_bytes(request))
    _account(request, response, scored)
    return GetRewardResponse(rewards=scored.scores, scores=scored.scores, extra_logs={})


@router.post("/classify", response_model=ClassifyResponse)
@with_cancellation
async def classify(
    body: ClassifyRequest, request: Request, response: Response, state: ServiceState = Depends(service_state)
) -> ClassifyResponse:
    """vLLM's /classify protocol: ``data[i].probs[0]`` is the reward (raw unless ``use_activation``)."""
    _label(request, state, body.model)
    scored = await scoring.classify(state, body, body_bytes(request))
    _account(request, response, scored)
    values = [1.0 / (1.0 + math.exp(-s)) if body.use_activation else s for s in scored.scores]
    return ClassifyResponse(
        id=f"classify-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=body.model or scored.model,
        data=[ClassifyData(index=i, label=REWARD_LABEL, probs=[v], num_classes=1) for i, v in enumerate(values)],
        usage=ClassifyUsage(prompt_tokens=scored.input_tokens, total_tokens=scored.input_tokens),
    )
