"""The service's state over its life: load -> warm up (probe) -> ready -> draining -> stopped."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from vlreward.service.admission import Admission
from vlreward.service.backends.base import Backend
from vlreward.service.batching import CoreLanes, DirectScheduler, DynamicBatcher, ModelErrorHook, Scheduler
from vlreward.service.errors import EngineBroken, ErrorKind, ServiceError
from vlreward.service.media import ImageMemory, ImageMemoryFull, MediaPolicy
from vlreward.service.metrics import Metrics
from vlreward.service.prepare import Limits
from vlreward.service.settings import Settings

log = logging.getLogger("vlreward")


def scheduler_for(
    backend: Backend, settings: Settings, metrics: Metrics, on_model_error: ModelErrorHook | None = None
) -> Scheduler:
    """Engines that batch continuously get requests as they come; the others get dynamic batches."""
    if backend.continuous_batching:
        return DirectScheduler(backend.run_batch, backend.run_shared_prefix, metrics, on_model_error)
    return DynamicBatcher(
        backend.run_batch,
        backend.run_shared_prefix,
        metrics,
        max_batch_size=settings.max_batch_size,
        max_batch_tokens=backend.max_batch_tokens,
        max_wait_ms=settings.max_wait_ms,
        on_model_error=on_model_error,
        lanes=CoreLanes(backend.lanes, backend.cores),
    )


class ServiceState:
    """Everything the routes share: settings, backend, admission, metrics and the lifecycle flags."""

    def __init__(self, settings: Settings, metrics: Metrics, backend: Backend | None = None):
        self.settings = settings
        self.metrics = metrics
        self.backend: Backend | None = backend
        self.scheduler: Scheduler | None = None
        self.admission: Admission | None = None
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
        self.media_policy = MediaPolicy.from_settings(settings)
        self.image_memory = ImageMemory(settings.max_request_image_pixels, settings.max_total_image_pixels)
        metrics.queue_limit.set(settings.max_queue)
        self._task: asyncio.Task | None = None
        self._watchdog: asyncio.Task | None = None
        self._engine_check: asyncio.Task | None = None
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
                from vlreward.service.backends import load_backend

                log.info("loading %s with the %s backend", settings.model, settings.backend)
                self.backend = await asyncio.to_thread(load_backend, settings)
            backend = self.backend
            if backend.max_tokens is not None and backend.max_tokens < self.limits.max_tokens:
                log.info("token limit lowered to the engine's context length, %d", backend.max_tokens)
                self.limits = Limits(max_tokens=backend.max_tokens, max_images=self.limits.max_images)
            self.scheduler = scheduler_for(backend, settings, self.metrics, self.model_error)
            self.admission = Admission(self.scheduler, self.metrics, settings.max_queue)
            self.scheduler.start()
            probe_score = await backend.warm_up()
            info = backend.info()
            self.metrics.model_info.labels(info["model"], info["backend"], info["dtype"], info["device"]).set(1)
            self.metrics.watch_backend(backend)
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

    def model_error(self, exc: Exception) -> None:
        """The model failed on a sample alone, or the engine broke. A broken engine (a CUDA error, its
        process gone) ends serving at once; after any other failure the checkpoint's probe (or the
        warm-up sample) runs again: an engine that fails on it cannot serve at all (every sample would
        fail the same way), so serving ends too; one that passes keeps serving (the sample was the cause)."""
        if isinstance(exc, EngineBroken):
            self.fail(f"the scoring engine broke: {exc}")
        elif self.failure is None and (self._engine_check is None or self._engine_check.done()):
            self._engine_check = asyncio.get_running_loop().create_task(self._recheck_engine(), name="vlreward-recheck")

    async def _recheck_engine(self) -> None:
        try:
            await self.backend.warm_up()
        except Exception as exc:
            log.exception("the engine fails its own probe")
            self.fail(f"the scoring engine fails its own probe ({type(exc).__name__}: {exc})")
        else:
            log.info("the engine still passes its probe: the failure was the sample's")

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
        for task in (self._task, self._watchdog, self._engine_check):
            if task is not None and not task.done():
                task.cancel()
        if self.scheduler is not None:
            await self.scheduler.close()
        if self.backend is not None and self._owns_backend:
            await self.backend.close()

    # -- health and admission -------------------------------------------------------------------------

    def is_ready(self) -> bool:
        return self.ready and not self.draining and self.failure is None

    def unhealthy_reason(self) -> str | None:
        """Why the process cannot serve any more (None while healthy or still loading)."""
        if self.failure is not None:
            return self.failure
        engine_ok = self.backend is None or self.backend.health()
        scheduler_ok = self.scheduler is None or self.scheduler.healthy()
        return None if engine_ok and scheduler_ok else "the scoring engine stopped"

    @asynccontextmanager
    async def admitted(self) -> AsyncIterator[MediaPolicy]:
        """Admit a scoring request (or refuse it: draining, not ready) and count it as in flight; yields
        the media policy that charges its decoded images to the service's image memory."""
        if self.draining:
            self.metrics.reject("draining")
            raise ServiceError("server is shutting down; retry on another replica", kind=ErrorKind.DRAINING)
        if not self.ready or self.failure is not None:
            self.metrics.reject("not_ready")
            raise ServiceError(self.failure or "model is still loading", kind=ErrorKind.NOT_READY)
        self.inflight += 1
        self.metrics.inflight.inc()
        try:
            with self.image_memory.request() as images:
                yield self.media_policy.counting(images)
        except ImageMemoryFull:
            self.metrics.reject("image_memory")
            raise
        finally:
            self.inflight -= 1
            self.metrics.inflight.dec()
