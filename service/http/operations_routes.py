"""GET /health, /ready, /info and /metrics: liveness, readiness, model facts and Prometheus."""

from __future__ import annotations

import hashlib

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from vlreward import __version__
from vlreward.service.errors import ErrorKind, ServiceError
from vlreward.service.http.dependencies import require_api_key, service_state
from vlreward.service.http.errors import documented_errors, error_response
from vlreward.service.lifecycle import ServiceState

router = APIRouter()


@router.get("/health", responses=documented_errors((ErrorKind.UNHEALTHY,)))
async def health(state: ServiceState = Depends(service_state)) -> JSONResponse:
    """Liveness: 200 while the process can serve or is still loading."""
    reason = state.unhealthy_reason()
    if reason is not None:
        return error_response(ServiceError(reason, kind=ErrorKind.UNHEALTHY))
    return JSONResponse({"status": "ok"})


@router.get("/ready", responses=documented_errors((ErrorKind.NOT_READY, ErrorKind.DRAINING)))
async def ready(state: ServiceState = Depends(service_state)) -> JSONResponse:
    """Readiness: 200 only when loaded, warmed up, probe passed and not draining."""
    if state.draining:
        return error_response(ServiceError("draining", kind=ErrorKind.DRAINING))
    if not state.is_ready():
        return error_response(ServiceError(state.failure or "loading", kind=ErrorKind.NOT_READY))
    return JSONResponse({"status": "ready"})


@router.get(
    "/info",
    dependencies=[Depends(require_api_key)],
    responses=documented_errors((ErrorKind.UNAUTHORIZED, ErrorKind.NOT_READY)),
)
async def info(state: ServiceState = Depends(service_state)) -> JSONResponse:
    """The served model and the limits in force."""
    if state.backend is None:
        raise ServiceError("model is still loading", kind=ErrorKind.NOT_READY)
    settings = state.settings
    template = state.backend.processor.chat_template or ""
    facts = dict(state.backend.info())
    facts["chat_template_hash"] = hashlib.sha256(template.encode()).hexdigest()[:16]
    facts["version"] = __version__
    # In force, not as set: the engine may lower max_tokens; an unset max_batch_tokens is the device's default.
    facts["limits"] = settings.limits() | {
        "max_tokens": state.limits.max_tokens,
        "max_batch_tokens": state.backend.max_batch_tokens,
    }
    facts["media"] = {"allow_urls": settings.allow_urls, "file_paths": settings.media_root is not None}
    return JSONResponse(facts)


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text"}},
)
async def prometheus_metrics(state: ServiceState = Depends(service_state)) -> Response:
    """The service's metrics (and the vLLM engine's) in Prometheus' text format."""
    engine = state.backend.engine_metrics() if state.backend is not None else b""
    return Response(generate_latest(state.metrics.registry) + engine, media_type=CONTENT_TYPE_LATEST)
