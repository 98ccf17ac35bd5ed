"""GET /health, /ready, /info, /v1/models and /metrics: liveness, readiness, model facts and Prometheus."""

from __future__ import annotations

import hashlib

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from vlreward import __version__
from vlreward.service.errors import ErrorKind, ServiceError
from vlreward.service.http.dependencies import require_api_key, service_state
from vlreward.service.http.errors import documented_errors, error_response
from vlreward.service.lifecycle import ServedModel, ServiceState
from vlreward.service.schemas import ModelCard, ModelList

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
    """Readiness: 200 only when every model is loaded, warmed up and passed its probe, and not draining."""
    if state.draining:
        return error_response(ServiceError("draining", kind=ErrorKind.DRAINING))
    if not state.is_ready():
        return error_response(ServiceError(state.not_ready_reason(), kind=ErrorKind.NOT_READY))
    return JSONResponse({"status": "ready"})


def model_facts(state: ServiceState, model: ServedModel) -> dict:
    """What /info shows of one model: its backend's facts, kind, hashes and the limits in force."""
    backend = model.backend
    template = backend.processor.chat_template or ""
    facts = {"name": model.name, **backend.info()}
    facts["kind"] = model.kind.describe() if model.kind is not None else None
    if model.process is not None:  # what the checkpoint declares: step tag, activation, default aggregate
        facts["process"] = model.process.declaration()
    if model.judge is not None:  # its declaration's name, source, forms and verdict tokens
        facts["judge"] = model.judge.describe()
    facts["reference"] = None if model.reference is None else model.reference.describe()
    if model.heads is not None:  # every head's name, the default, and each head's own reference statistics
        facts["heads"] = model.heads.declaration() | {
            "references": {h: None if (r := model.reference_of(h)) is None else r.describe() for h in model.heads.names}
        }
    facts["chat_template_hash"] = hashlib.sha256(template.encode()).hexdigest()[:16]
    # In force, not as set: the engine may lower max_tokens; an unset max_batch_tokens is the device's default.
    facts["limits"] = model.settings.limits() | {
        "max_tokens": model.limits.max_tokens,
        "max_batch_tokens": backend.max_batch_tokens,
        "max_queue": state.settings.max_queue,  # the server's bound, over every model
    }
    facts["ready"] = model.ready
    return facts


@router.get(
    "/info",
    dependencies=[Depends(require_api_key)],
    responses=documented_errors((ErrorKind.UNAUTHORIZED, ErrorKind.NOT_READY)),
)
async def info(state: ServiceState = Depends(service_state)) -> JSONResponse:
    """The served models and the limits in force; the top-level fields describe the default model."""
    loaded = {name: model for name, model in state.models.items() if model.backend is not None}
    if state.default_model.name not in loaded:
        raise ServiceError("model is still loading", kind=ErrorKind.NOT_READY)
    models = {name: model_facts(state, model) for name, model in loaded.items()}
    facts = dict(models[state.default_model.name])
    facts["model"] = facts.pop("name")  # the default model's name, where single-model clients read it
    facts["version"] = __version__
    facts["media"] = {"allow_urls": state.settings.allow_urls, "file_paths": state.settings.media_root is not None}
    facts["default_model"] = state.default_model.name
    facts["models"] = models
    facts["ensembles"] = {name: ensemble.describe() for name, ensemble in state.ensembles.items()}
    return JSONResponse(facts)


@router.get(
    "/v1/models",
    response_model=ModelList,
    dependencies=[Depends(require_api_key)],
    responses=documented_errors((ErrorKind.UNAUTHORIZED,)),
)
async def list_models(state: ServiceState = Depends(service_state)) -> ModelList:
    """The served models in OpenAI's shape, each with its kind, backend and readiness."""
    return ModelList(
        data=[
            ModelCard(
                id=name,
                created=state.started,
                kind=model.kind.name if model.kind is not None else "unknown",
                backend=model.settings.backend,
                default=model is state.default_model,
                ready=model.ready,
            )
            for name, model in state.models.items()
        ]
        + [
            ModelCard(
                id=name,
                created=state.started,
                kind="ensemble",
                backend="ensemble",
                default=False,
                ready=all(state.models[member].ready for member in ensemble.members),
            )
            for name, ensemble in state.ensembles.items()
        ]
    )


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text"}},
)
async def prometheus_metrics(state: ServiceState = Depends(service_state)) -> Response:
    """The service's metrics (and the vLLM engines') in Prometheus' text format."""
    # An engine's metrics are its process-wide registry: one backend of each class exports them.
    engines = {type(m.backend): m.backend for m in state.models.values() if m.backend is not None}
    engine = b"".join(backend.engine_metrics() for backend in engines.values())
    return Response(generate_latest(state.metrics.registry) + engine, media_type=CONTENT_TYPE_LATEST)
