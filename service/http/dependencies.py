"""What the routes share: the typed service state, API-key auth (an OpenAPI security scheme), and
cancellation of a handler whose client went away."""

from __future__ import annotations

import asyncio
import functools
import hmac
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from vlreward.service.errors import ClientDisconnected, ErrorKind, ServiceError
from vlreward.service.lifecycle import ServiceState

P = ParamSpec("P")
T = TypeVar("T")

bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <key>`, when the server has API keys.")


async def service_state(request: Request) -> ServiceState:
    """The service state the app was built around (async: FastAPI runs sync dependencies in its thread
    pool, a thread hop per request for nothing)."""
    return request.app.state.service


async def require_api_key(
    state: ServiceState = Depends(service_state),
    credentials: HTTPAuthorizationCredentials | None = Security(bearer),
) -> None:
    """Refuse a request without one of the server's keys (none configured: every request passes)."""
    if not state.api_keys:
        return
    presented = credentials.credentials.strip().encode() if credentials else b""
    matched = False
    for key in state.api_keys:  # compare with every key, in constant time each
        matched |= hmac.compare_digest(presented, key.encode())
    if not matched:
        state.metrics.reject("unauthorized")
        raise ServiceError("missing or invalid API key (send Authorization: Bearer <key>)", kind=ErrorKind.UNAUTHORIZED)


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def with_cancellation(handler: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Run the handler until its client disconnects; then cancel it (its queued samples are dropped)
    and answer 499 ``client_closed``. The handler must take ``request: Request``."""

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        request: Request = kwargs["request"]  # type: ignore[assignment]
        work = asyncio.ensure_future(handler(*args, **kwargs))
        watcher = asyncio.ensure_future(_disconnected(request))
        try:
            done, _ = await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            work.cancel()
            raise
        finally:
            watcher.cancel()
        if work in done:
            return work.result()
        work.cancel()
        request.app.state.service.metrics.reject("client_disconnected")
        raise ClientDisconnected()

    return wrapper
