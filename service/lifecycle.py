"""The service's state over its life: load -> warm up (probe) -> ready -> draining -> stopped."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

from vlreward.service.batching import Batcher
from vlreward.service.errors import APIError
from vlreward.service.media import MediaPolicy
from vlreward.service.metrics import Metrics
from vlreward.service.prepare import Limits
from vlreward.service.settings import Settings

log = logging.getLogger("vlreward")


class ServiceState:
    """Everything the routes share: settings, backend, batcher, metrics and the lifecycle flags."""

    def __init__(self, settings: Settings, metrics: Metrics, backend: Any | None = None):
        self.settings = settings
        self.metrics = metrics
        self.backend = backend
        self.batcher: Batcher | None = None
        self.ready = False
        """Loaded, warmed up and the probe passed."""
        self.draining = False
        """SIGTERM received: no new scoring requests."""
        self.failure: str | None = None
        """Why the service cannot serve (load failed, engine died); /health turns 503."""
        self.inflight = 0
        """Scoring requests being handled now."""
        self.on_fatal: Callable[[str], None] | None = None
        """Called when the service can no longer serve (the server runner exits non-zero)."""
        self.api_keys = settings.api_key_set()
        self.limits = Limits(max_tokens=settings.max_tokens, max_images=settings.max_images)
        self.media_policy = MediaPolicy(
            max_image_bytes=settings.max_image_bytes,
            max_image_pixels=settings.max_image_pixels,
            media_root=settings.media_root,
            allow_urls=settings.allow_urls,
            url_hosts=settings.url_hosts(),
            url_allow_private=settings.url_allow_private,
            url_timeout_s=settings.url_timeout_s,
        )
        self._task: asyncio.Task | None = None
        self._watchdog: asyncio.Task | None = None
        self._owns_backend = backend is None

    # -- start and stop -------------------------------------------------------------------------------

    def start(self) -> None:
        """Begin loading in the background, so /health and /ready answer while the model loads."""
        self._task = asyncio.get_running_loop().create_task(self._load_and_warm_up(), name="vlreward-load")

    async def wait_ready(self) -> None:
        if self._task is not None:
            await self._task

    async def _load_and_warm_up(self) -> None:
        settings = self.settings
        try:
            if self.backend is None:
                from vlreward.service.backends import backend_options, create_backend

                log.info("loading %s with the %s backend", settings.model, settings.backend)
                self.backend = await asyncio.to_thread(
                    create_backend, settings.backend, str(settings.model), **backend_options(settings)
                )
            engine_limit = getattr(self.backend, "max_tokens", None)
            if engine_limit is not None and engine_limit < self.limits.max_tokens:
                log.info("token limit lowered to the engine's context length, %d", engine_limit)
                self.limits = Limits(max_tokens=engine_limit, max_images=self.limits.max_images)
            self.batcher = Batcher(
                self.backend.run_batch,
                self.metrics,
                run_group=getattr(self.backend, "run_shared_prefix", None),
                passthrough=self.backend.name == "vllm",  # the engine batches continuously itself
                max_batch_size=settings.max_batch_size,
                max_batch_tokens=settings.max_batch_tokens,
                max_wait_ms=settings.max_wait_ms,
                max_queue=settings.max_queue,
            )
            self.batcher.start()
            probe_score = await self.backend.warm_up()
            info = self.backend.info()
            self.metrics.model_info.labels(info["model"], info["backend"], info["dtype"], info["device"]).set(1)
            self.ready = True
            self.metrics.ready.set(1)
            self._watchdog = asyncio.get_running_loop().create_task(self._watch_engine(), name="vlreward-watchdog")
            log.info("ready: %s (probe %s)", info["model"], "none" if probe_score is None else f"{probe_score:.6f}")
        except Exception as exc:  # a model that cannot load or fails its probe must never serve
            log.exception("start-up failed")
            self.fail(f"start-up failed: {exc}")

    async def _watch_engine(self, interval_s: float = 0.5) -> None:
        """An engine that dies while serving makes the service fail (and the process exit non-zero)."""
        while self.failure is None:
            await asyncio.sleep(interval_s)
            if not self.backend.health():
                self.fail("the scoring engine died")

    def fail(self, reason: str) -> None:
        """The service can no longer serve: /ready and /health turn 503 and the runner exits non-zero."""
        self.failure = reason
        self.ready = False
        self.metrics.ready.set(0)
        if self.on_fatal is not None:
            self.on_fatal(reason)

    def begin_drain(self) -> None:
        """SIGTERM: /ready turns 503 and new scoring requests get 503 draining."""
        self.draining = True
        self.metrics.ready.set(0)

    async def stop(self) -> None:
        for task in (self._task, self._watchdog):
            if task is not None and not task.done():
                task.cancel()
        if self.batcher is not None:
            await self.batcher.close()
        if self.backend is not None and self._owns_backend:
            await self.backend.close()

    # -- per request ----------------------------------------------------------------------------------

    def is_ready(self) -> bool:
        return self.ready and not self.draining and self.failure is None

    @asynccontextmanager
    async def admitted(self):
        """Admit a scoring request (or refuse it: draining, not ready) and count it as in flight."""
        if self.draining:
            self.metrics.rejected.labels(reason="draining").inc()
            raise APIError("server is shutting down; retry on another replica", status=503, type="draining")
        if not self.ready or self.failure is not None:
            self.metrics.rejected.labels(reason="not_ready").inc()
            raise APIError(self.failure or "model is still loading", status=503, type="not_ready")
        self.inflight += 1
        self.metrics.inflight.inc()
        try:
            yield
        finally:
            self.inflight -= 1
            self.metrics.inflight.dec()
