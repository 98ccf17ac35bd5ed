"""ASGI middleware, written once for every route: the body-size limit, and the request context
(request id, request metrics, the JSON access log)."""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

from vlreward.service.errors import too_large
from vlreward.service.http.errors import error_response
from vlreward.service.metrics import SERVER, Metrics

access_log = logging.getLogger("vlreward.access")
KNOWN_ENDPOINTS = (
    "/score", "/rank", "/compare", "/get_reward", "/classify", "/health", "/ready", "/info", "/v1/models", "/metrics",
)  # fmt: skip


def _headers(scope: dict) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


class BodyLimitMiddleware:
    """Refuses a body over ``limit`` bytes with a 413 in the one error shape: at once when its
    Content-Length says so, else as soon as the bytes read pass the limit (chunked bodies)."""

    def __init__(self, app: Any, limit: int, metrics: Metrics):
        self.app = app
        self.limit = limit
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            declared = int(_headers(scope).get("content-length", "0") or 0)
        except ValueError:
            declared = 0
        over = declared > self.limit
        received = 0

        async def limited_receive() -> dict:
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def unless_over(message: dict) -> None:
            if not over:  # whatever the app made of a cut body is replaced by the 413
                await send(message)

        if not over:
            try:
                await self.app(scope, limited_receive, unless_over)
            except Exception:
                if not over:  # a cut body surfaces as a disconnect error: answered below
                    raise
        if over:
            self.metrics.reject("body_too_large")
            response = error_response(too_large(f"request body is over the {self.limit}-byte limit"))
            await response(scope, receive, send)


class RequestContextMiddleware:
    """Request ids (echoed or generated), request count and duration by endpoint and status, and one
    JSON access-log line per request when ``log_json`` is on (no prompt text, no image bytes)."""

    def __init__(self, app: Any, metrics: Metrics, log_json: bool):
        self.app = app
        self.metrics = metrics
        self.log_json = log_json

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _headers(scope).get("x-request-id") or uuid.uuid4().hex
        endpoint = scope["path"] if scope["path"] in KNOWN_ENDPOINTS else "other"
        status = 500  # unless a response starts: an exception escaped every handler
        scope.setdefault("state", {})

        async def send_with_id(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            model = scope["state"].get("model", SERVER)
            self.metrics.requests.labels(endpoint, str(status), model).inc()
            self.metrics.request_duration.labels(endpoint, model).observe(elapsed)
            if self.log_json:
                self._log(scope, request_id, status, elapsed)

    @staticmethod
    def _log(scope: dict, request_id: str, status: int, elapsed: float) -> None:
        info = scope["state"]
        line = {
            "id": request_id,
            "endpoint": scope["path"],
            "model": info.get("model"),
            "status": status,
            "samples": info.get("samples", 0),
            "tokens": info.get("tokens", 0),
            "queue_ms": round(info.get("queue_ms", 0.0), 3),
            "inference_ms": round(info.get("inference_ms", 0.0), 3),
            "duration_ms": round(elapsed * 1000, 3),
        }
        access_log.info(json.dumps(line))
