"""uvicorn's HTTP protocol (httptools), guarded against slow and hostile clients.

uvicorn with httptools has no limit on header size and no read timeouts: a client that sends its
headers or body one byte at a time, or opens a connection and sends nothing, holds it (and the
memory of what it sent) for ever, and its ``limit_concurrency`` answers a plain-text 503. Here, per
connection, with answers in the service's one JSON error shape:

- the request line and headers must arrive within ``header_timeout_s`` of the connection opening (or of
  the previous response) and stay under ``max_header_bytes``: else 408 / 431 and the connection closes;
- the body must arrive within ``body_timeout_s`` of the headers (of its turn, for a pipelined request):
  else 408, the handler sees a disconnect (its work is cancelled) and the connection closes;
- beyond ``max_connections`` open connections a request is answered 429 with ``Retry-After`` and its
  connection closed.

Everything else is uvicorn's own code; :func:`guarded_protocol` gives the class ``uvicorn.Config(http=)``
takes.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from vlreward.service.errors import ErrorKind, Overloaded, ServiceError
from vlreward.service.http.errors import STATUS, error_response
from vlreward.service.metrics import Metrics
from vlreward.service.settings import Settings

log = logging.getLogger("vlreward")

LINGER_S = 2.0
"""After refusing a request, the connection's write side is shut (the client reads the answer and an
end of stream) and whatever the client still sends is read and dropped for this long before the
connection closes: closing at once with unread bytes makes the kernel send a reset, which can destroy
the answer before the client reads it (nginx's lingering close)."""


@dataclass(frozen=True)
class ConnectionGuards:
    """The limits of every connection (settings of the same names)."""

    header_timeout_s: float
    body_timeout_s: float
    max_header_bytes: int
    max_connections: int
    metrics: Metrics

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics) -> ConnectionGuards:
        return cls(
            header_timeout_s=settings.header_timeout_s,
            body_timeout_s=settings.body_timeout_s,
            max_header_bytes=settings.max_header_bytes,
            max_connections=settings.max_connections,
            metrics=metrics,
        )


def _raw_response(error: ServiceError) -> bytes:
    """An error response as bytes on the wire (HTTP/1.1, the one JSON shape, then the connection closes)."""
    response = error_response(error)
    headers = [(b"connection", b"close"), *((k, v) for k, v in response.raw_headers if k != b"connection")]
    head = STATUS_LINE[STATUS[error.kind]] + b"".join(k + b": " + v + b"\r\n" for k, v in headers)
    return head + b"\r\n" + response.body


async def _too_many_connections(scope: dict, receive: Any, send: Any) -> None:
    """The ASGI answer to a request over the connection limit: 429, Retry-After, close."""
    response = error_response(Overloaded.connections())
    response.headers["connection"] = "close"
    await response(scope, receive, send)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with read timeouts, a header limit and a connection limit."""

    guards: ConnectionGuards

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_bytes = 0
        self._refused = False
        self._read_timer: asyncio.TimerHandle | None = None
        self._arm(self.guards.header_timeout_s, "headers")  # an idle new connection is a slow client too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    # -- read deadlines --------------------------------------------------------------------------------

    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        self._read_timer = self.loop.call_later(seconds, self._read_timed_out, what, seconds)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self, what: str, seconds: float) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        self.guards.metrics.reject("read_timeout")
        error = ServiceError(f"the request {what} did not arrive within {seconds:g} s", kind=ErrorKind.READ_TIMEOUT)
        self._refuse(error)

    def _refuse(self, error: ServiceError) -> None:
        """Answer ``error`` (unless a response already started), stop reading, close the connection; a
        handler waiting for the body sees a disconnect."""
        self._refused = True
        cycle = self.cycle
        running = cycle is not None and not cycle.response_complete
        if not (running and cycle.response_started):
            self.transport.write(_raw_response(error))
        if running:  # what its handler sends from now on is dropped; a wait for the body ends
            cycle.response_started = cycle.response_complete = cycle.disconnected = True
            cycle.message_event.set()
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.flow.resume_reading()  # drain what the client still sends (dropped: the parser is refused)
            self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()

    # -- parser callbacks ------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        idle = self.cycle is None or self.cycle.response_complete  # not behind a request still running
        if self._read_timer is None and idle:  # a keep-alive connection's next request
            self._arm(self.guards.header_timeout_s, "headers")

    def on_url(self, url: bytes) -> None:
        if not self._count_header_bytes(len(url)):
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._count_header_bytes(len(name) + len(value) + 4):
            super().on_header(name, value)

    def _count_header_bytes(self, size: int) -> bool:
        """Add to the header size; True when the request is (now) refused."""
        if self._refused:
            return True
        self._header_bytes += size
        if self._header_bytes > self.guards.max_header_bytes:
            self.guards.metrics.reject("headers_too_large")
            limit = self.guards.max_header_bytes
            self._refuse(ServiceError(f"request headers are over {limit} bytes", kind=ErrorKind.HEADERS_TOO_LARGE))
            return True
        return False

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._disarm()
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._disarm()
        super().on_message_complete()

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        if len(self.connections) > self.guards.max_connections:
            self.guards.metrics.reject("connections")
            app = _too_many_connections
        if cycle.more_body:  # the body is still coming: from now on it has body_timeout_s (a pipelined
            self._arm(self.guards.body_timeout_s, "body")  # request's clock starts when it is its turn)
        super()._start_asgi_task(cycle, app)


def guarded_protocol(settings: Settings, metrics: Metrics) -> type[GuardedHttpToolsProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)`` with the settings' guards."""
    guards = ConnectionGuards.from_settings(settings, metrics)
    return type("VLRewardHttpProtocol", (GuardedHttpToolsProtocol,), {"guards": guards})
