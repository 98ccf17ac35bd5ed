"""The FastAPI app: routes, the one error shape, auth, limits, request context, lifespan.

Follow a request: route -> schemas -> prepare (media, formatting, encoding, limits) -> batcher -> backend.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from vlreward.service.batching import BatchResult, DeadlineExceeded, Overloaded
from vlreward.service.errors import APIError, too_large
from vlreward.service.lifecycle import ServiceState
from vlreward.service.metrics import Metrics
from vlreward.service.prepare import prepare_items, prepare_rank, prepare_templated
from vlreward.service.schemas import (
    ErrorResponse,
    GetRewardRequest,
    GetRewardResponse,
    ItemError,
    RankRequest,
    RankResponse,
    ScoreRequest,
    ScoreResponse,
    Usage,
)
from vlreward.service.settings import Settings

access_log = logging.getLogger("vlreward.access")
SCORING_ENDPOINTS = ("/score", "/rank", "/get_reward")
KNOWN_ENDPOINTS = (*SCORING_ENDPOINTS, "/health", "/ready", "/info", "/metrics")

try:
    VERSION = version("vlreward")
except PackageNotFoundError:  # running from a source tree
    VERSION = "0.0.0"


class ClientDisconnected(Exception):
    """The client went away before its scores were ready."""


def _param(loc: tuple) -> str | None:
    """("body", "items", 3, "response") -> "items[3].response"."""
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


def _error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


# -- request context: id, body limit, metrics, access log ----------------------------------------------


class RequestContextMiddleware:
    """Request ids, the body-size limit, request metrics and the JSON access log, once for every route."""

    def __init__(self, app: Any, state: ServiceState):
        self.app = app
        self.state = state

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        request_id = headers.get("x-request-id") or uuid.uuid4().hex
        endpoint = scope["path"] if scope["path"] in KNOWN_ENDPOINTS else "other"
        limit = self.state.settings.max_body_bytes
        status = {"code": 500, "started": False}
        over_limit = {"hit": False}
        scope.setdefault("state", {})

        too_big = too_large(f"request body is over the {limit}-byte limit", param=None)

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                if over_limit["hit"]:  # replace whatever the app made of the cut body
                    return
                status["code"], status["started"] = message["status"], True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            elif message["type"] == "http.response.body" and over_limit["hit"]:
                return
            await send(message)

        received = {"bytes": 0}

        async def limited_receive() -> dict:
            message = await receive()
            if message["type"] == "http.request":
                received["bytes"] += len(message.get("body", b""))
                if received["bytes"] > limit:
                    over_limit["hit"] = True
                    return {"type": "http.disconnect"}
            return message

        try:
            declared = int(headers.get("content-length", "0") or 0)
        except ValueError:
            declared = 0
        try:
            if declared > limit:
                over_limit["hit"] = True
            else:
                try:
                    await self.app(scope, limited_receive, send_with_id)
                except Exception:
                    if not over_limit["hit"]:  # a cut body surfaces as a disconnect error: answered below
                        raise
        finally:
            if over_limit["hit"]:
                self.state.metrics.rejected.labels(reason="body_too_large").inc()
                response = _error_response(too_big)
                response.headers["x-request-id"] = request_id
                status["code"] = 413
                await response(scope, receive, send)
            elapsed = time.perf_counter() - started
            self.state.metrics.requests.labels(endpoint, str(status["code"])).inc()
            self.state.metrics.request_duration.labels(endpoint).observe(elapsed)
            if self.state.settings.log_json:
                info = scope["state"]
                access_log.info(
                    json.dumps(
                        {
                            "id": request_id,
                            "endpoint": scope["path"],
                            "status": status["code"],
                            "samples": info.get("samples", 0),
                            "tokens": info.get("tokens", 0),
                            "queue_ms": round(info.get("queue_ms", 0.0), 3),
                            "inference_ms": round(info.get("inference_ms", 0.0), 3),
                            "duration_ms": round(elapsed * 1000, 3),
                        }
                    )
                )


# -- helpers shared by the scoring routes --------------------------------------------------------------


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _until_disconnect(request: Request, work: Any) -> Any:
    """Await ``work`` unless the client goes away first (then cancel it: its samples leave the queue)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    raise ClientDisconnected()


def _record(
    request: Request, response: Response, state: ServiceState, endpoint: str, encoded: list, result: BatchResult
):
    tokens = sum(e.num_tokens for e in encoded)
    images = sum(e.num_images for e in encoded)
    metrics = state.metrics
    metrics.samples.labels(endpoint).inc(len(encoded))
    metrics.input_tokens.inc(tokens)
    metrics.images.inc(images)
    for score in result.scores:
        metrics.score.observe(score)
    response.headers["x-queue-time-ms"] = f"{result.queue_ms:.3f}"
    response.headers["x-inference-time-ms"] = f"{result.inference_ms:.3f}"
    request.state.samples, request.state.tokens = len(encoded), tokens
    request.state.queue_ms, request.state.inference_ms = result.queue_ms, result.inference_ms
    return Usage(input_tokens=tokens, images=images)


async def _score_encoded(
    request: Request,
    state: ServiceState,
    encoded: list,
    timeout_s: float | None,
    started: float,
    grouped: bool = False,
):
    timeout = (timeout_s or state.settings.request_timeout_s) - (time.monotonic() - started)
    if timeout <= 0:
        raise DeadlineExceeded("request deadline passed while preparing its inputs")
    return await _until_disconnect(request, state.batcher.submit(encoded, timeout, grouped=grouped))


# -- the app -------------------------------------------------------------------------------------------


def create_app(settings: Settings, backend: Any | None = None) -> FastAPI:
    """Build the service around a backend (loaded from ``settings.model`` in the background if None)."""
    metrics = Metrics()
    state = ServiceState(settings, metrics, backend)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.start()
        yield
        await state.stop()

    app = FastAPI(
        title="vlreward",
        version=VERSION,
        description="Scores (prompt, images, response) with a multimodal reward model.",
        lifespan=lifespan,
        responses={
            400: {"model": ErrorResponse},
            413: {"model": ErrorResponse},
            422: {"model": ErrorResponse},
            429: {"model": ErrorResponse},
        },
    )
    app.state.service = state
    app.add_middleware(RequestContextMiddleware, state=state)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"msg": "invalid request", "loc": ()}
        if first.get("type") == "json_invalid":
            return _error_response(APIError(f"body is not valid JSON: {first.get('msg')}", param=None))
        message = first["msg"].removeprefix("Value error, ")
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more problems)"
        return _error_response(APIError(message, status=422, type="validation", param=_param(tuple(first["loc"]))))

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, exc: Overloaded) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after)}
        return _error_response(APIError(str(exc), status=429, type="overloaded", headers=headers))

    @app.exception_handler(DeadlineExceeded)
    async def deadline(request: Request, exc: DeadlineExceeded) -> JSONResponse:
        return _error_response(APIError(str(exc), status=504, type="timeout"))

    @app.exception_handler(ClientDisconnected)
    async def disconnected(request: Request, exc: ClientDisconnected) -> JSONResponse:
        state.metrics.rejected.labels(reason="client_disconnected").inc()
        return _error_response(APIError("client disconnected", status=499, type="client_closed"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request")
        return _error_response(APIError(str(exc.detail), status=exc.status_code, type=kind))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        logging.getLogger("vlreward").exception("internal error")
        return _error_response(APIError(f"internal error: {type(exc).__name__}", status=500, type="internal"))

    def require_api_key(request: Request) -> None:
        if not state.api_keys:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        presented = token.strip().encode() if scheme.lower() == "bearer" else b""
        matched = False
        for key in state.api_keys:  # compare with every key, in constant time each
            matched |= hmac.compare_digest(presented, key.encode())
        if not matched:
            state.metrics.rejected.labels(reason="unauthorized").inc()
            raise APIError(
                "missing or invalid API key (send Authorization: Bearer <key>)",
                status=401,
                type="unauthorized",
                headers={"WWW-Authenticate": "Bearer"},
            )

    protected = [Depends(require_api_key)]

    @app.post("/score", response_model=ScoreResponse, response_model_exclude_none=True, dependencies=protected)
    async def score(body: ScoreRequest, request: Request, response: Response) -> ScoreResponse:
        """Score samples; scores come back in item order."""
        started = time.monotonic()
        async with state.admitted():
            if len(body.items) > settings.max_items:
                raise too_large(f"{len(body.items)} items; the limit is {settings.max_items}", param="items")
            encoded, errors = await run_in_threadpool(
                prepare_items,
                state.backend,
                body.items,
                state.media_policy,
                state.limits,
                body.truncate,
                body.on_error == "null",
            )
            valid = [e for e in encoded if e is not None]
            result = await _score_encoded(request, state, valid, body.timeout_s, started)
            scores: list[float | None] = []
            values = iter(result.scores)
            for item in encoded:
                scores.append(None if item is None else next(values))
            usage = _record(request, response, state, "/score", valid, result)
            item_errors = [ItemError(index=i, type=e.type, message=e.message, param=e.param) for i, e in errors]
            if errors:
                state.metrics.rejected.labels(reason="item_error").inc(len(errors))
            return ScoreResponse(
                model=state.backend.info()["model"], scores=scores, usage=usage, errors=item_errors or None
            )

    @app.post("/rank", response_model=RankResponse, dependencies=protected)
    async def rank(body: RankRequest, request: Request, response: Response) -> RankResponse:
        """Score several responses to one prompt and rank them (best first; ties keep input order)."""
        started = time.monotonic()
        async with state.admitted():
            if len(body.responses) > settings.max_responses:
                raise too_large(
                    f"{len(body.responses)} responses; the limit is {settings.max_responses}", param="responses"
                )
            encoded = await run_in_threadpool(
                prepare_rank, state.backend, body.candidates(), state.media_policy, state.limits
            )
            result = await _score_encoded(request, state, encoded, body.timeout_s, started, grouped=True)
            usage = _record(request, response, state, "/rank", encoded, result)
            ranking = sorted(range(len(result.scores)), key=lambda i: (-result.scores[i], i))
            return RankResponse(
                model=state.backend.info()["model"],
                scores=result.scores,
                ranking=ranking[: body.top_k] if body.top_k else ranking,
                best=ranking[0],
                usage=usage,
            )

    @app.post("/get_reward", response_model=GetRewardResponse, dependencies=protected)
    async def get_reward(body: GetRewardRequest, request: Request, response: Response) -> GetRewardResponse:
        """OpenRLHF's remote reward protocol: chat-templated queries in, raw rewards out."""
        started = time.monotonic()
        async with state.admitted():
            if len(body.query) > settings.max_items:
                raise too_large(f"{len(body.query)} queries; the limit is {settings.max_items}", param="query")
            encoded = await run_in_threadpool(
                prepare_templated, state.backend, body.query, body.images, state.media_policy, state.limits
            )
            result = await _score_encoded(request, state, encoded, body.timeout_s, started)
            _record(request, response, state, "/get_reward", encoded, result)
            return GetRewardResponse(rewards=result.scores, scores=result.scores, extra_logs={})

    @app.get("/health")
    async def health() -> JSONResponse:
        """Liveness: 200 while the process can serve or is still loading."""
        engine_ok = state.backend is None or state.backend.health()
        batcher_ok = state.batcher is None or state.batcher.healthy()
        if state.failure is not None or not engine_ok or not batcher_ok:
            reason = state.failure or "the scoring engine stopped"
            return _error_response(APIError(reason, status=503, type="unhealthy"))
        return JSONResponse({"status": "ok"})

    @app.get("/ready")
    async def ready() -> JSONResponse:
        """Readiness: 200 only when loaded, warmed up, probe passed and not draining."""
        if state.draining:
            return _error_response(APIError("draining", status=503, type="draining"))
        if not state.is_ready():
            return _error_response(APIError(state.failure or "loading", status=503, type="not_ready"))
        return JSONResponse({"status": "ready"})

    @app.get("/info", dependencies=protected)
    async def info() -> JSONResponse:
        """The served model and the limits in force."""
        if state.backend is None:
            raise APIError("model is still loading", status=503, type="not_ready")
        template = state.backend.processor.chat_template or ""
        facts = dict(state.backend.info())
        facts["chat_template_hash"] = hashlib.sha256(template.encode()).hexdigest()[:16]
        facts["version"] = VERSION
        facts["limits"] = {"max_tokens": state.limits.max_tokens} | {
            name: getattr(settings, name)
            for name in (
                "max_body_bytes",
                "max_items",
                "max_responses",
                "max_images",
                "max_image_pixels",
                "max_image_bytes",
                "max_batch_size",
                "max_batch_tokens",
                "max_wait_ms",
                "max_queue",
                "request_timeout_s",
            )
        }
        facts["media"] = {"allow_urls": settings.allow_urls, "file_paths": settings.media_root is not None}
        return JSONResponse(facts)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
