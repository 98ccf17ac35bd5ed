"""A small Python client for a running vlreward server (httpx only; no torch, no transformers).

from vlreward.service.client import RewardClient
with RewardClient("http://127.0.0.1:8000") as client:
    client.score([{"prompt": "2+2?", "response": "4"}]).scores
"""

from __future__ import annotations

from typing import Any

import httpx

from vlreward.service.schemas import GetRewardResponse, RankResponse, ScoreResponse

DEFAULT_TIMEOUT_S = 180.0


class VLRewardError(Exception):
    """An error answered by the server, in its JSON error shape."""

    def __init__(
        self, status: int, type: str, message: str, param: str | None = None, retry_after: float | None = None
    ):
        super().__init__(f"{status} {type}: {message}" + (f" (at {param})" if param else ""))
        self.status = status
        self.type = type
        self.message = message
        self.param = param
        self.retry_after = retry_after


class InvalidRequest(VLRewardError):
    """400/413/415/422: the request is wrong; retrying it will not help."""


class Unauthorized(VLRewardError):
    """401: missing or wrong API key."""


class Overloaded(VLRewardError):
    """429: the server's queue is full; retry after ``retry_after`` seconds."""


class Unavailable(VLRewardError):
    """503: loading or draining; another replica (or a later try) may answer."""


class Timeout(VLRewardError):
    """504: the request's deadline passed."""


def _raise_for_error(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        error = {"type": "http_error", "message": response.text[:500], "param": None}
    kind = {401: Unauthorized, 429: Overloaded, 503: Unavailable, 504: Timeout}.get(response.status_code)
    if kind is None:
        kind = InvalidRequest if response.status_code < 500 else VLRewardError
    retry_after = response.headers.get("retry-after")
    raise kind(
        response.status_code,
        error.get("type", "error"),
        error.get("message", ""),
        error.get("param"),
        float(retry_after) if retry_after else None,
    )


def _score_body(items: list[dict], on_error: str, truncate: str, timeout_s: float | None) -> dict[str, Any]:
    body: dict[str, Any] = {"items": items, "on_error": on_error, "truncate": truncate}
    if timeout_s is not None:
        body["timeout_s"] = timeout_s
    return body


def _rank_body(prompt: str | list[dict], responses: list[str], images: list[str] | None, top_k: int | None) -> dict:
    body: dict[str, Any] = {"responses": responses}
    body["messages" if isinstance(prompt, list) else "prompt"] = prompt
    if images:
        body["images"] = images
    if top_k is not None:
        body["top_k"] = top_k
    return body


def _reward_body(queries: list[str], images: list[list[str]] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"query": queries}
    if images is not None:
        body["images"] = images
    return body


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class RewardClient:
    """Synchronous client."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S):
        self._http = httpx.Client(base_url=base_url, headers=_headers(api_key), timeout=timeout_s)

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _post(self, path: str, body: dict) -> dict:
        response = self._http.post(path, json=body)
        _raise_for_error(response)
        return response.json()

    def score(
        self, items: list[dict], on_error: str = "fail", truncate: str = "none", timeout_s: float | None = None
    ) -> ScoreResponse:
        """Score samples (dicts in the Sample shape)."""
        return ScoreResponse.model_validate(self._post("/score", _score_body(items, on_error, truncate, timeout_s)))

    def rank(
        self,
        prompt: str | list[dict],
        responses: list[str],
        images: list[str] | None = None,
        top_k: int | None = None,
    ) -> RankResponse:
        """Rank responses to one prompt (a string, or messages without the final assistant turn)."""
        return RankResponse.model_validate(self._post("/rank", _rank_body(prompt, responses, images, top_k)))

    def get_reward(self, queries: list[str], images: list[list[str]] | None = None) -> GetRewardResponse:
        """OpenRLHF's protocol: chat-templated texts -> rewards."""
        return GetRewardResponse.model_validate(self._post("/get_reward", _reward_body(queries, images)))

    def info(self) -> dict:
        response = self._http.get("/info")
        _raise_for_error(response)
        return response.json()

    def ready(self) -> bool:
        return self._http.get("/ready").status_code == 200


class AsyncRewardClient:
    """Asynchronous client (the same calls, awaited)."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S):
        self._http = httpx.AsyncClient(base_url=base_url, headers=_headers(api_key), timeout=timeout_s)

    async def __aenter__(self) -> AsyncRewardClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def _post(self, path: str, body: dict) -> dict:
        response = await self._http.post(path, json=body)
        _raise_for_error(response)
        return response.json()

    async def score(
        self, items: list[dict], on_error: str = "fail", truncate: str = "none", timeout_s: float | None = None
    ) -> ScoreResponse:
        body = _score_body(items, on_error, truncate, timeout_s)
        return ScoreResponse.model_validate(await self._post("/score", body))

    async def rank(
        self,
        prompt: str | list[dict],
        responses: list[str],
        images: list[str] | None = None,
        top_k: int | None = None,
    ) -> RankResponse:
        return RankResponse.model_validate(await self._post("/rank", _rank_body(prompt, responses, images, top_k)))

    async def get_reward(self, queries: list[str], images: list[list[str]] | None = None) -> GetRewardResponse:
        return GetRewardResponse.model_validate(await self._post("/get_reward", _reward_body(queries, images)))

    async def info(self) -> dict:
        response = await self._http.get("/info")
        _raise_for_error(response)
        return response.json()

    async def ready(self) -> bool:
        return (await self._http.get("/ready")).status_code == 200
