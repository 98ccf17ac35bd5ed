"""The service's own errors: a kind, a message and the request field they concern (no HTTP here).

Media, formatting, limits, admission and the backends raise :class:`ServiceError` (or a subclass);
the HTTP layer turns each kind into a status code in one table (``vlreward.service.http.errors``),
so training and offline scoring use the same errors without depending on HTTP.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorKind(StrEnum):
    """What went wrong, as the client sees it (the ``type`` of the JSON error)."""

    INVALID_REQUEST = "invalid_request"
    """Input that cannot be used: undecodable image, bad base64, a refused URL."""
    VALIDATION = "validation"
    """The request's shape or values break the schema."""
    TOO_LARGE = "too_large"
    """Over a limit: body, items, candidates, tokens, images, pixels, bytes."""
    UNSUPPORTED_MEDIA = "unsupported_media"
    """An image format the service does not decode."""
    UNAUTHORIZED = "unauthorized"
    """Missing or wrong API key."""
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    OVERLOADED = "overloaded"
    """The queue is full; retry after ``retry_after`` seconds."""
    NOT_READY = "not_ready"
    """Still loading, or start-up failed."""
    DRAINING = "draining"
    """Shutting down; retry on another replica."""
    UNHEALTHY = "unhealthy"
    """The scoring engine stopped."""
    TIMEOUT = "timeout"
    """The request's deadline passed."""
    READ_TIMEOUT = "read_timeout"
    """The request's headers or body did not arrive within the read timeout (a slow or stalled client)."""
    HEADERS_TOO_LARGE = "headers_too_large"
    """The request line and headers are over the header limit."""
    CLIENT_CLOSED = "client_closed"
    """The client went away before its scores were ready."""
    UNPARSED_VERDICT = "unparsed_verdict"
    """A judge's generated answers gave no verdict its declaration's rule could read (the request was fine;
    another seed, more samples or more new tokens may succeed)."""
    INTERNAL = "internal"
    """A fault of the service, never a client's mistake."""


class ServiceError(Exception):
    """An error a client sees. ``param`` locates it in the request (``items[3].images[0]``)."""

    kind: ErrorKind = ErrorKind.INVALID_REQUEST

    def __init__(
        self, message: str, *, kind: ErrorKind | None = None, param: str | None = None, retry_after: int | None = None
    ):
        super().__init__(message)
        self.message = message
        self.kind = kind or type(self).kind
        self.param = param
        self.retry_after = retry_after

    def at(self, param: str) -> ServiceError:
        """The same error located at a request field (same class, kind and message)."""
        located = type(self).__new__(type(self), *self.args)
        located.__dict__.update(self.__dict__, param=param)
        return located


def too_large(message: str, param: str | None = None) -> ServiceError:
    return ServiceError(message, kind=ErrorKind.TOO_LARGE, param=param)


class Overloaded(ServiceError):
    """The queue is full; retry after ``retry_after`` seconds."""

    kind = ErrorKind.OVERLOADED

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message, retry_after=retry_after)

    @classmethod
    def queue_full(cls, queued: int, limit: int) -> Overloaded:
        return cls(f"server overloaded: {queued} samples queued (limit {limit}); retry later")

    @classmethod
    def connections(cls) -> Overloaded:
        """Too many open connections (the connection limit of the HTTP protocol)."""
        return cls("server overloaded: too many open connections; retry later")


class DeadlineExceeded(ServiceError):
    """The request's deadline passed before all its samples were scored."""

    kind = ErrorKind.TIMEOUT


class ClientDisconnected(ServiceError):
    """The client went away before its scores were ready."""

    kind = ErrorKind.CLIENT_CLOSED

    def __init__(self, message: str = "client disconnected"):
        super().__init__(message)


class OutOfMemory(Exception):
    """The engine ran out of memory on a batch; a smaller batch may fit (the schedulers halve it)."""


class EngineBroken(Exception):
    """The engine cannot serve any more (a CUDA error poisons the context; the engine process is gone):
    no retry helps, the service stops serving and exits non-zero."""
