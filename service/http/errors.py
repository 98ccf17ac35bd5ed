"""Errors over HTTP: the one table from error kind to status, the one JSON shape, and the handlers.

Every error leaves the service as ``{"error": {"type", "message", "param"}}``; :class:`ErrorResponse`
is both that shape's schema (in ``/openapi.json``) and what builds it.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from vlreward.service.errors import ErrorKind, ServiceError

log = logging.getLogger("vlreward")

STATUS: dict[ErrorKind, int] = {
    ErrorKind.INVALID_REQUEST: 400,
    ErrorKind.UNAUTHORIZED: 401,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.METHOD_NOT_ALLOWED: 405,
    ErrorKind.TOO_LARGE: 413,
    ErrorKind.UNSUPPORTED_MEDIA: 415,
    ErrorKind.VALIDATION: 422,
    ErrorKind.OVERLOADED: 429,
    ErrorKind.CLIENT_CLOSED: 499,
    ErrorKind.INTERNAL: 500,
    ErrorKind.UNPARSED_VERDICT: 502,
    ErrorKind.NOT_READY: 503,
    ErrorKind.DRAINING: 503,
    ErrorKind.UNHEALTHY: 503,
    ErrorKind.TIMEOUT: 504,
    ErrorKind.READ_TIMEOUT: 408,
    ErrorKind.HEADERS_TOO_LARGE: 431,
}
"""The HTTP status of every error kind (a test checks that each kind has one)."""

_KIND_OF_STATUS = {404: ErrorKind.NOT_FOUND, 405: ErrorKind.METHOD_NOT_ALLOWED}


class ErrorDetail(BaseModel):
    type: ErrorKind
    message: str
    param: str | None = None


class ErrorResponse(BaseModel):
    """The JSON body of every error."""

    error: ErrorDetail

    @classmethod
    def of(cls, error: ServiceError) -> ErrorResponse:
        return cls(error=ErrorDetail(type=error.kind, message=error.message, param=error.param))


def error_response(error: ServiceError) -> JSONResponse:
    """The HTTP response of a service error: status from the table, the one body, and its headers."""
    headers = {}
    if error.retry_after is not None:
        headers["Retry-After"] = str(error.retry_after)
    if error.kind is ErrorKind.UNAUTHORIZED:
        headers["WWW-Authenticate"] = "Bearer"
    body = ErrorResponse.of(error).model_dump(mode="json")
    return JSONResponse(body, status_code=STATUS[error.kind], headers=headers)


def field_path(loc: tuple) -> str | None:
    """("body", "items", 3, "response") -> "items[3].response"."""
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


def validation_error(exc: RequestValidationError) -> ServiceError:
    """pydantic's first complaint, located at its field (bad JSON is a 400, the rest 422)."""
    errors = exc.errors()
    first = errors[0] if errors else {"msg": "invalid request", "loc": ()}
    if first.get("type") == "json_invalid":
        return ServiceError(f"body is not valid JSON: {first.get('msg')}")
    message = first["msg"].removeprefix("Value error, ")
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problems)"
    return ServiceError(message, kind=ErrorKind.VALIDATION, param=field_path(tuple(first["loc"])))


SCORING_ERRORS = tuple(k for k in ErrorKind if k not in (ErrorKind.NOT_FOUND, ErrorKind.METHOD_NOT_ALLOWED))
"""What a scoring route can answer besides its result."""


def documented_errors(kinds: tuple[ErrorKind, ...] = SCORING_ERRORS) -> dict[int | str, dict]:
    """The OpenAPI ``responses`` of a route that can fail with ``kinds``: each status, in the one shape."""
    statuses = sorted({STATUS[k] for k in kinds})
    return {
        status: {
            "model": ErrorResponse,
            "description": ", ".join(k.value for k in kinds if STATUS[k] == status),
        }
        for status in statuses
    }


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception to the one error shape."""

    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc)

    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc))

    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = _KIND_OF_STATUS.get(exc.status_code, ErrorKind.INVALID_REQUEST)
        response = error_response(ServiceError(str(exc.detail), kind=kind))
        response.headers.update(exc.headers or {})  # a 405's Allow header (RFC 9110) among them
        return response

    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        return error_response(ServiceError(f"internal error: {type(exc).__name__}", kind=ErrorKind.INTERNAL))

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, internal)
