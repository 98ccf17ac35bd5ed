"""The Python client of a running vlreward server (httpx and tenacity; no torch, no transformers).

from vlreward.client import RewardClient
with RewardClient("http://127.0.0.1:8000") as client:
    client.score([{"prompt": "2+2?", "response": "4"}]).scores

Made for training loops that call it thousands of times: one pooled connection set per client, at most
``max_concurrency`` calls in flight, large calls cut into chunks of the server's ``max_items`` (read
from /info once) with scores returned in order, and retries with jittered exponential backoff on what
is transient only (429 and 503, honouring ``Retry-After``, and connection errors) within a total
``deadline_s`` per call. A 4xx validation error is raised at once. Images in items may be PIL images,
bytes, paths, data URIs or URLs: the client encodes the first three for the wire.

Several replicas: give ``base_url`` a list of URLs (or a comma-separated string; :func:`discover_replicas`
turns a headless Service's name into its pods' URLs). Each call goes to the replica with the fewest calls
in flight from this client; a replica that refuses the connection or answers 503 (draining, loading,
unhealthy) is set aside for a few seconds and the call moves to another one at once. Scoring is
idempotent, so a call cut off after a replica accepted it is sent again elsewhere: every call returns
its scores once, whatever replicas stop on the way.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import re
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)

from vlreward.service.errors import ErrorKind
from vlreward.service.schemas import (
    CompareResponse,
    GetRewardResponse,
    ItemError,
    RankResponse,
    ScoreResponse,
    Usage,
)

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


class UnparsedVerdict(VLRewardError):
    """502 ``unparsed_verdict``: a judge's generated answers had no verdict its rule reads (not retried: the
    same seed writes the same answers; ask with more ``max_new_tokens``, ``samples`` or another seed)."""


ERROR_CLASSES: dict[str, type[VLRewardError]] = {
    ErrorKind.INVALID_REQUEST: InvalidRequest,
    ErrorKind.VALIDATION: InvalidRequest,
    ErrorKind.TOO_LARGE: InvalidRequest,
    ErrorKind.UNSUPPORTED_MEDIA: InvalidRequest,
    ErrorKind.NOT_FOUND: InvalidRequest,
    ErrorKind.METHOD_NOT_ALLOWED: InvalidRequest,
    ErrorKind.READ_TIMEOUT: InvalidRequest,
    ErrorKind.HEADERS_TOO_LARGE: InvalidRequest,
    ErrorKind.CLIENT_CLOSED: InvalidRequest,
    ErrorKind.UNAUTHORIZED: Unauthorized,
    ErrorKind.OVERLOADED: Overloaded,
    ErrorKind.NOT_READY: Unavailable,
    ErrorKind.DRAINING: Unavailable,
    ErrorKind.UNHEALTHY: Unavailable,
    ErrorKind.TIMEOUT: Timeout,
    ErrorKind.INTERNAL: VLRewardError,
    ErrorKind.UNPARSED_VERDICT: UnparsedVerdict,
}
"""The exception for each error ``type`` the server sends (its ErrorKind values)."""


def error_class(status: int, type: str) -> type[VLRewardError]:
    """The exception for an error answer: by the ``type`` the server sent; by status only for an answer
    that is not the server's JSON error (a proxy's, a gateway's)."""
    if type in ERROR_CLASSES:
        return ERROR_CLASSES[type]
    by_status = {401: Unauthorized, 429: Overloaded, 502: Unavailable, 503: Unavailable, 504: Timeout}
    return by_status.get(status) or (InvalidRequest if status < 500 else VLRewardError)


@dataclass(frozen=True)
class RetryPolicy:
    """How a call retries what is transient (429, 503, connection errors); never a client's mistake."""

    attempts: int = 8
    """Tries per call, the first included."""
    backoff_s: float = 0.25
    """Scale of the jittered exponential backoff (full jitter; doubles per try)."""
    max_backoff_s: float = 15.0
    deadline_s: float | None = 600.0
    """Total time one call may take, retries and waits included (None: no limit)."""

    def stop(self) -> Any:
        stop = stop_after_attempt(self.attempts)
        return stop if self.deadline_s is None else stop | stop_before_delay(self.deadline_s)


SET_ASIDE_S = 5.0
"""How long a replica that refused a connection or answered 503 gets no new calls (unless all are set aside)."""


@dataclass
class Replica:
    """One server: its URL, this client's calls in flight there, and until when it is set aside."""

    url: str
    in_flight: int = 0
    set_aside_until: float = 0.0


class Replicas:
    """The servers one client spreads its calls over: the fewest calls in flight first (thread-safe)."""

    def __init__(self, urls: str | Sequence[str]):
        if isinstance(urls, str):
            urls = [u.strip() for u in urls.split(",") if u.strip()]
        if not urls:
            raise ValueError("base_url: at least one server URL")
        self.all = [Replica(url.rstrip("/")) for url in urls]
        self._lock = threading.Lock()
        self._turn = 0

    def available(self) -> int:
        """Replicas not set aside now."""
        now = time.monotonic()
        return sum(replica.set_aside_until <= now for replica in self.all)

    @contextlib.contextmanager
    def lease(self) -> Iterator[Replica]:
        """A replica for one attempt: among those not set aside (the one back soonest, when every one is),
        the one with the fewest calls in flight, ties taken in turn. An attempt that fails because of the
        replica (:func:`_replica_failed`) sets it aside."""
        with self._lock:
            self._turn = (self._turn + 1) % len(self.all)
            rotated = self.all[self._turn :] + self.all[: self._turn]
            now = time.monotonic()
            ready = [r for r in rotated if r.set_aside_until <= now] or [min(rotated, key=lambda r: r.set_aside_until)]
            chosen = min(ready, key=lambda r: r.in_flight)  # the first of the fewest: ties in turn
            chosen.in_flight += 1
        try:
            yield chosen
        except BaseException as error:
            if _replica_failed(error):
                self.set_aside(chosen)
            raise
        finally:
            with self._lock:
                chosen.in_flight -= 1

    def set_aside(self, replica: Replica) -> None:
        """No new calls for ``replica`` for :data:`SET_ASIDE_S` (unless every replica is set aside)."""
        with self._lock:
            replica.set_aside_until = time.monotonic() + SET_ASIDE_S


def discover_replicas(url: str) -> list[str]:
    """Every address a host name resolves to, as URLs with ``url``'s scheme, port and path: a Kubernetes
    headless Service's name (``http://rm-vlreward-pods.ml.svc:8000``) gives one URL per ready pod."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses = sorted({info[4][0] for info in socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)})
    return [
        urlunsplit((parts.scheme, f"{f'[{a}]' if ':' in a else a}:{port}", parts.path, parts.query, ""))
        for a in addresses
    ]


def _replica_failed(error: BaseException) -> bool:
    """The replica, not the request, is the problem: another replica may answer now."""
    return isinstance(error, (httpx.TransportError, Unavailable))


def _transient(error: BaseException) -> bool:
    """Worth another try: the server was busy or starting (429, 503), or the connection failed."""
    if isinstance(error, (Overloaded, Unavailable)):
        return True
    return isinstance(error, httpx.TransportError) and not isinstance(error, httpx.UnsupportedProtocol)


def _wait(policy: RetryPolicy, replicas: Replicas):
    backoff = wait_random_exponential(multiplier=policy.backoff_s, max=policy.max_backoff_s)

    def wait(state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if error is not None and _replica_failed(error) and replicas.available():
            return 0.0  # another replica is up: go there now
        retry_after = getattr(error, "retry_after", None)
        return min(float(retry_after), policy.max_backoff_s) if retry_after else backoff(state)

    return wait


def _retrying(policy: RetryPolicy, replicas: Replicas, kind: type = Retrying) -> Any:
    wait = _wait(policy, replicas)
    return kind(retry=retry_if_exception(_transient), wait=wait, stop=policy.stop(), reraise=True)


def encode_image(image: Any) -> str:
    """An image reference for the wire: PIL images, bytes, paths and the datasets library's
    ``{"bytes": ..., "path": ...}`` dicts become data URIs; strings (data URIs, URLs, base64) pass through."""
    if isinstance(image, dict):
        image = image.get("bytes") if image.get("bytes") is not None else image.get("path")
        if image is None:
            raise ValueError("an image dict needs `bytes` or `path`")
    if isinstance(image, str):
        return image
    if isinstance(image, Path):
        image = image.read_bytes()
    if isinstance(image, (bytes, bytearray)):
        from PIL import Image

        kind = (Image.open(io.BytesIO(image)).format or "png").lower()
        return f"data:image/{kind};base64," + base64.b64encode(image).decode()
    if hasattr(image, "save"):  # a PIL image
        from vlreward.service.media import image_to_data_uri

        return image_to_data_uri(image)
    raise TypeError(f"an image must be a PIL image, bytes, a path or a string, not {type(image).__name__}")


def encode_item(item: dict) -> dict:
    """A Sample dict with its images (``image``, ``images``) encoded for the wire."""
    if "image" not in item and "images" not in item:
        return item
    item = dict(item)
    if item.get("image") is not None:
        item["image"] = encode_image(item["image"])
    if item.get("images") is not None:
        item["images"] = [encode_image(i) for i in item["images"]]
    return item


def merge_scores(parts: list[ScoreResponse], sizes: list[int]) -> ScoreResponse:
    """One response from the responses of consecutive chunks (item indices shifted back)."""
    errors: list[ItemError] = []
    offset = 0
    for part, size in zip(parts, sizes, strict=True):
        errors += [_shifted(e, offset) for e in part.errors or []]
        offset += size
    details = [d for part in parts for d in (part.details or [None] * len(part.scores))]
    return ScoreResponse(
        model=parts[0].model,
        scores=[score for part in parts for score in part.scores],
        details=details if any(d is not None for d in details) else None,
        usage=Usage(
            input_tokens=sum(p.usage.input_tokens for p in parts),
            images=sum(p.usage.images for p in parts),
            output_tokens=None
            if parts[0].usage.output_tokens is None
            else sum(p.usage.output_tokens or 0 for p in parts),
        ),
        errors=errors or None,
        reference_version=parts[0].reference_version,
    )


def _shifted(error: ItemError, offset: int) -> ItemError:
    """An item error of a chunk, re-addressed to the whole call (index and ``items[i]`` in its param)."""
    param = error.param
    if param is not None:
        param = re.sub(r"^items\[(\d+)\]", lambda m: f"items[{int(m.group(1)) + offset}]", param)
    return error.model_copy(update={"index": error.index + offset, "param": param})


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)] or [[]]


def _raise_for_error(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        error = {"type": "http_error", "message": response.text[:500], "param": None}
    retry_after = response.headers.get("retry-after")
    raise error_class(response.status_code, error.get("type", ""))(
        response.status_code,
        error.get("type", "error"),
        error.get("message", ""),
        error.get("param"),
        float(retry_after) if retry_after else None,
    )


def _score_body(
    items: list[dict], on_error: str, truncate: str, timeout_s: float | None, normalize: str | None = None,
    head: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    body: dict[str, Any] = {"items": items, "on_error": on_error, "truncate": truncate}
    return body | _set(timeout_s=timeout_s, normalize=normalize, head=head)


def _set(**fields: Any) -> dict[str, Any]:
    """The optional fields a call set (the server's defaults apply to the rest)."""
    return {name: value for name, value in fields.items() if value is not None}


Prompt = str | list[dict]
"""A prompt: text, or chat messages without the final assistant turn."""
Images = list[Any] | None
"""Images as PIL images, bytes, paths, data URIs or URLs (:func:`encode_image`)."""


def _rank_body(
    prompt: Prompt, responses: list[str], images: Images, top_k: int | None, normalize: str | None = None,
    head: str | None = None,
) -> dict:  # fmt: skip
    body: dict[str, Any] = {"responses": responses} | _set(normalize=normalize, head=head)
    body["messages" if isinstance(prompt, list) else "prompt"] = prompt
    if images:
        body["images"] = [encode_image(image) for image in images]
    if top_k is not None:
        body["top_k"] = top_k
    return body


def _compare_body(pairs: list[dict], debias: bool) -> dict[str, Any]:
    return {"pairs": [encode_item(pair) for pair in pairs], "debias": debias}


def merge_compares(parts: list[CompareResponse]) -> CompareResponse:
    """One /compare response from those of consecutive chunks of pairs."""
    usage = Usage(input_tokens=sum(p.usage.input_tokens for p in parts), images=sum(p.usage.images for p in parts))
    return CompareResponse(model=parts[0].model, results=[r for p in parts for r in p.results], usage=usage)


def _reward_body(queries: list[str], images: list[list[str]] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"query": queries}
    if images is not None:
        body["images"] = images
    return body


def _with_model(body: dict, model: str | None) -> dict:
    return body if model is None else {"model": model, **body}


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class _ClientOptions:
    """What both clients are configured with (one signature for the sync and async clients)."""

    def __init__(
        self,
        base_url: str | Sequence[str],
        api_key: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy = RetryPolicy(),
        max_concurrency: int = 16,
        max_items: int | None = None,
        model: str | None = None,
    ):
        self._replicas = Replicas(base_url)
        self._model = model
        """The served model every call names (GET /v1/models lists them); None: the server's default."""
        self._timeout_s = timeout_s
        self._retry = retry
        self._max_concurrency = max_concurrency
        self._max_items = max_items
        """Items per /score call (default: the server's max_items, read from /info once)."""
        limits = httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency)
        self._http_options: dict[str, Any] = {
            "headers": _headers(api_key),
            "timeout": timeout_s,
            "limits": limits,
        }


class RewardClient(_ClientOptions):
    """Synchronous client; safe to share between threads (at most ``max_concurrency`` calls in flight)."""

    def __init__(self, base_url: str | Sequence[str], **options: Any):
        super().__init__(base_url, **options)
        self._http = httpx.Client(**self._http_options)
        self._slots = threading.BoundedSemaphore(self._max_concurrency)

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, body: dict | None = None) -> httpx.Response:
        started = time.monotonic()
        for attempt in _retrying(self._retry, self._replicas):
            with attempt, self._slots, self._replicas.lease() as replica:
                timeout = _remaining(self._timeout_s, self._retry.deadline_s, started)
                response = self._http.request(method, replica.url + path, json=body, timeout=timeout)
                _raise_for_error(response)
        return response

    def _post(self, path: str, body: dict) -> dict:
        return self._request("POST", path, _with_model(body, self._model)).json()

    def max_items(self) -> int:
        """Items per /score call: the server's limit, read from /info on first use."""
        if self._max_items is None:
            self._max_items = int(self.info()["limits"]["max_items"])
        return self._max_items

    def score(
        self,
        items: list[dict],
        on_error: str = "fail",
        truncate: str = "none",
        timeout_s: float | None = None,
        normalize: str | None = None,
        head: str | None = None,
    ) -> ScoreResponse:
        """Score samples (dicts in the Sample shape), in chunks of the server's ``max_items``; scores in
        order. ``on_error="null"``: items the server cannot score get None (see ``errors``);
        ``normalize="zscore"``: z-scores with the model's reference statistics (``reference_version``);
        ``head``: a multi-head model's head ``scores`` holds (``details[i]["heads"]`` has every head's)."""
        items = [encode_item(item) for item in items]
        chunks = _chunks(items, self.max_items()) if len(items) > 1 else [items]
        bodies = [_score_body(chunk, on_error, truncate, timeout_s, normalize, head) for chunk in chunks]
        parts = [ScoreResponse.model_validate(self._post("/score", body)) for body in bodies]
        return merge_scores(parts, [len(c) for c in chunks])

    def rank(
        self,
        prompt: Prompt,
        responses: list[str],
        images: Images = None,
        top_k: int | None = None,
        normalize: str | None = None,
        head: str | None = None,
    ) -> RankResponse:
        """Rank responses to one prompt (a string, or messages without the final assistant turn)."""
        body = _rank_body(prompt, responses, images, top_k, normalize, head)
        return RankResponse.model_validate(self._post("/rank", body))

    def compare(self, pairs: list[dict], debias: bool = True) -> CompareResponse:
        """P(A > B) per pair (dicts with ``prompt`` or ``messages``, images, ``a`` and ``b``), in chunks of
        half the server's ``max_items`` (each pair is two samples); results in order."""
        size = max(1, self.max_items() // 2)
        chunks = _chunks(pairs, size)
        return merge_compares([CompareResponse.model_validate(self._post("/compare", _compare_body(c, debias)))
                               for c in chunks])  # fmt: skip

    def get_reward(self, queries: list[str], images: list[list[Any]] | None = None) -> GetRewardResponse:
        """OpenRLHF's protocol: chat-templated texts -> rewards."""
        images = [[encode_image(i) for i in row] for row in images] if images is not None else None
        return GetRewardResponse.model_validate(self._post("/get_reward", _reward_body(queries, images)))

    def info(self) -> dict:
        return self._request("GET", "/info").json()

    def models(self) -> list[str]:
        """The names of the served models (GET /v1/models), the default one marked there."""
        return [card["id"] for card in self._request("GET", "/v1/models").json()["data"]]

    def ready(self) -> bool:
        """Whether some replica is ready."""
        for replica in self._replicas.all:
            with contextlib.suppress(httpx.TransportError):
                if self._http.get(replica.url + "/ready").status_code == 200:
                    return True
        return False


class AsyncRewardClient(_ClientOptions):
    """Asynchronous client (the same calls, awaited); chunks of one call run concurrently, all calls
    together at most ``max_concurrency`` at a time."""

    def __init__(self, base_url: str | Sequence[str], **options: Any):
        super().__init__(base_url, **options)
        self._http = httpx.AsyncClient(**self._http_options)
        self._slots = asyncio.Semaphore(self._max_concurrency)

    async def __aenter__(self) -> AsyncRewardClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, body: dict | None = None) -> httpx.Response:
        started = time.monotonic()
        async for attempt in _retrying(self._retry, self._replicas, AsyncRetrying):
            with attempt, self._replicas.lease() as replica:
                async with self._slots:
                    timeout = _remaining(self._timeout_s, self._retry.deadline_s, started)
                    response = await self._http.request(method, replica.url + path, json=body, timeout=timeout)
                _raise_for_error(response)
        return response

    async def _post(self, path: str, body: dict) -> dict:
        return (await self._request("POST", path, _with_model(body, self._model))).json()

    async def max_items(self) -> int:
        if self._max_items is None:
            self._max_items = int((await self.info())["limits"]["max_items"])
        return self._max_items

    async def score(
        self,
        items: list[dict],
        on_error: str = "fail",
        truncate: str = "none",
        timeout_s: float | None = None,
        normalize: str | None = None,
        head: str | None = None,
    ) -> ScoreResponse:
        items = [encode_item(item) for item in items]
        chunks = _chunks(items, await self.max_items()) if len(items) > 1 else [items]
        bodies = [_score_body(chunk, on_error, truncate, timeout_s, normalize, head) for chunk in chunks]
        answers = await asyncio.gather(*(self._post("/score", body) for body in bodies))
        return merge_scores([ScoreResponse.model_validate(a) for a in answers], [len(c) for c in chunks])

    async def rank(
        self,
        prompt: Prompt,
        responses: list[str],
        images: Images = None,
        top_k: int | None = None,
        normalize: str | None = None,
        head: str | None = None,
    ) -> RankResponse:
        body = _rank_body(prompt, responses, images, top_k, normalize, head)
        return RankResponse.model_validate(await self._post("/rank", body))

    async def compare(self, pairs: list[dict], debias: bool = True) -> CompareResponse:
        chunks = _chunks(pairs, max(1, await self.max_items() // 2))
        answers = await asyncio.gather(*(self._post("/compare", _compare_body(c, debias)) for c in chunks))
        return merge_compares([CompareResponse.model_validate(answer) for answer in answers])

    async def get_reward(self, queries: list[str], images: list[list[Any]] | None = None) -> GetRewardResponse:
        images = [[encode_image(i) for i in row] for row in images] if images is not None else None
        return GetRewardResponse.model_validate(await self._post("/get_reward", _reward_body(queries, images)))

    async def info(self) -> dict:
        return (await self._request("GET", "/info")).json()

    async def models(self) -> list[str]:
        """The names of the served models (GET /v1/models)."""
        return [card["id"] for card in (await self._request("GET", "/v1/models")).json()["data"]]

    async def ready(self) -> bool:
        """Whether some replica is ready."""
        for replica in self._replicas.all:
            with contextlib.suppress(httpx.TransportError):
                if (await self._http.get(replica.url + "/ready")).status_code == 200:
                    return True
        return False


def _remaining(timeout_s: float, deadline_s: float | None, started: float) -> float:
    """One attempt's timeout: the client's, cut to what is left of the call's deadline."""
    if deadline_s is None:
        return timeout_s
    return max(0.001, min(timeout_s, deadline_s - (time.monotonic() - started)))
