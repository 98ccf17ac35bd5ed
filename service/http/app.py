"""The FastAPI app, assembled: middleware, error handlers, routes and the lifespan.

Follow a request: route (``scoring_routes``) -> ``scoring`` pipeline -> ``prepare`` (media,
formatting, encoding, limits) -> ``admission`` -> scheduler (``batching``) -> backend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI

from vlreward import __version__
from vlreward.service.backends.base import Backend
from vlreward.service.catalog import ModelSpec
from vlreward.service.http import operations_routes, scoring_routes
from vlreward.service.http.errors import install_error_handlers
from vlreward.service.http.middleware import BodyLimitMiddleware, RequestContextMiddleware
from vlreward.service.lifecycle import ServiceState
from vlreward.service.metrics import Metrics
from vlreward.service.settings import Settings


def create_app(
    settings: Settings,
    backend: Backend | None = None,
    specs: Sequence[ModelSpec] | None = None,
    backends: Mapping[str | None, Backend] | None = None,
) -> FastAPI:
    """Build the service around its models: ``specs`` (default: the one model of ``settings.model``),
    loaded in the background unless already-loaded ``backends`` (by model name) or, for one model,
    ``backend`` are given."""
    metrics = Metrics()
    if backend is not None:
        backends = {None: backend, **(backends or {})}
    state = ServiceState(settings, metrics, specs, backends)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.start()
        yield
        await state.stop()

    app = FastAPI(
        title="vlreward",
        version=__version__,
        description="Scores (prompt, images, response) with a multimodal reward model.",
        lifespan=lifespan,
    )
    app.state.service = state
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes, metrics=metrics)
    app.add_middleware(RequestContextMiddleware, metrics=metrics, log_json=settings.log_json)  # outermost
    install_error_handlers(app)
    app.include_router(scoring_routes.router)
    app.include_router(operations_routes.router)

    def openapi() -> dict:
        schema = _with_deadline_bound(FastAPI.openapi(app), settings.max_request_timeout_s)
        return schema if state.api_keys else _without_auth(schema)

    app.openapi = openapi
    return app


def _with_deadline_bound(schema: dict, longest: float) -> dict:
    """Every request's ``timeout_s`` bounded by this server's ``max_request_timeout_s`` (the schemas carry
    the absolute bound; above this server's, it answers 422): clients see the deadline it accepts."""

    def bound(node: object) -> None:
        if isinstance(node, dict):
            timeout = node.get("properties", {}).get("timeout_s")
            if isinstance(timeout, dict):
                for option in timeout.get("anyOf", [timeout]):
                    if "maximum" in option:
                        option["maximum"] = min(option["maximum"], longest)
            for value in node.values():
                bound(value)
        elif isinstance(node, list):
            for value in node:
                bound(value)

    bound(schema)
    return schema


def _without_auth(schema: dict) -> dict:
    """The OpenAPI of a server without API keys: no security requirement and no 401 (the routes declare
    both once, for servers that have keys). Clients and schema checkers then see what this server does."""
    if schema.get("components", {}).pop("securitySchemes", None) is not None:
        for operations in schema["paths"].values():
            for operation in operations.values():
                operation.pop("security", None)
                operation.get("responses", {}).pop("401", None)
    return schema
