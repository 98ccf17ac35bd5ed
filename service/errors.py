"""The one error shape of the API: ``{"error": {"type", "message", "param"}}`` with an HTTP status."""

from __future__ import annotations


class APIError(Exception):
    """An error a client sees. ``param`` locates it in the request (``items[3].images[0]``)."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        type: str = "invalid_request",
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.param = param
        self.headers = headers or {}

    def at(self, param: str) -> APIError:
        """The same error, located at a request field; keeps the subclass."""
        located = type(self).__new__(type(self))
        APIError.__init__(located, self.message, status=self.status, type=self.type, param=param, headers=self.headers)
        return located

    def body(self) -> dict:
        return {"error": {"type": self.type, "message": self.message, "param": self.param}}


def too_large(message: str, param: str | None = None) -> APIError:
    return APIError(message, status=413, type="too_large", param=param)
