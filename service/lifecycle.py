"""The service's state over its life: load -> warm up (probe) -> ready -> draining -> stopped.

A server holds one or more :class:`ServedModel` (each its own backend, scheduler, admission, limits and
probe); :class:`ServiceState` holds them, the server-wide parts (settings, metrics, auth, media policy,
the queue bound) and the lifecycle flags. The server is ready when every model is.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager

from vlreward.service.admission import Admission
from vlreward.service.backends.base import Backend
from vlreward.service.batching import CoreLanes, DirectScheduler, DynamicBatcher, ModelErrorHook, Scheduler
from vlreward.service.capture import TrafficCapture
from vlreward.service.catalog import ModelSpec, default_index, model_settings
from vlreward.service.ensemble import Ensemble, member_parts
from vlreward.service.errors import EngineBroken, ErrorKind, ServiceError
from vlreward.service.judge import JudgeDeclaration
from vlreward.service.kinds import JUDGE, Heads, ModelKind, ProcessHead, checkpoint_heads, checkpoint_kind, process_head
from vlreward.service.media import ImageMemory, ImageMemoryFull, MediaPolicy
from vlreward.service.metrics import Metrics, ModelMetrics
from vlreward.service.prepare import Limits
from vlreward.service.reference import Reference, read_references
from vlreward.service.settings import Settings

log = logging.getLogger("vlreward")


def scheduler_for(
    backend: Backend, settings: Settings, metrics: ModelMetrics, on_model_error: ModelErrorHook | None = None,
    requests_in_flight: Callable[[], int] | None = None,
) -> Scheduler:  # fmt: skip
    """Engines that batch continuously get requests as they come; the others get dynamic batches, which
    wait to fill only while ``requests_in_flight`` (the model's admitted requests) says more are coming."""
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
        lanes=CoreLanes(backend.lanes, backend.cores, backend.lone_threads),
        requests_in_flight=requests_in_flight,
    )


class ServedModel:
    """One named model of the server: its settings, backend, scheduler, admission, limits and probe."""

    def __init__(self, name: str, settings: Settings, metrics: ModelMetrics, backend: Backend | None = None):
        self.name = name
        self.settings = settings
        self.metrics = metrics
        self.backend: Backend | None = backend
        self.kind: ModelKind | None = None
        self.scheduler: Scheduler | None = None
        self.admission: Admission | None = None
        self.limits = Limits(
            max_tokens=settings.max_tokens,
            max_images=settings.max_images,
            max_steps=settings.max_steps,
            max_step_tokens=settings.max_step_tokens,
        )
        self.process: ProcessHead | None = None
        """A process model's head (step tag, activation, default aggregate); None for other kinds."""
        self.judge: JudgeDeclaration | None = None
        """A judge's declaration (prompts, verdict tokens); None for other kinds."""
        self.heads: Heads | None = None
        """A multi-head model's heads (names, default); None: one head."""
        self.references: dict[str | None, Reference] = {}
        """The checkpoint's reference statistics and pairwise temperature (``vlreward calibrate``) by head (None:
        a one-head model's); empty: none."""
        self.base: ServedModel | None = None
        """A LoRA adapter's base model (its backend serves the adapter too); None: a model of its own."""
        self.adapter_dirs: list[str] = []
        """The folders of the LoRA adapters served on this model (its engine is started for them)."""
        self.ready = False
        """Loaded, warmed up and the probe passed."""
        self.requests_in_flight = 0
        """Scoring requests admitted to this model and not yet answered (preparing, queued or running)."""
        self._owns_backend = backend is None

    @property
    def reference(self) -> Reference | None:
        """The reference statistics of the default head (a one-head model's: its own)."""
        return self.reference_of(None)

    def reference_of(self, head: str | None) -> Reference | None:
        """The reference statistics of ``head`` (None: the default head)."""
        if self.heads is None:
            return self.references.get(None)
        return self.references.get(head or self.heads.default)

    async def load(self, queued: Callable[[], int], on_model_error: ModelErrorHook) -> None:
        """Load the backend (unless given), start its scheduler behind the server's queue bound, and run
        its probe. Raises what went wrong; the caller names the model."""
        settings = self.settings
        if self.backend is None and self.base is not None:  # a LoRA adapter on a model loaded before it
            from vlreward.service.backends.adapter import AdapterBackend

            log.info("loading adapter %s (%s) on %s", self.name, settings.model, self.base.name)
            self.backend = AdapterBackend(self.base.backend, settings.model, self.name)
        elif self.backend is None:
            from vlreward.service.backends import load_backend

            log.info("loading %s (%s) with the %s backend", self.name, settings.model, settings.backend)
            self.backend = await asyncio.to_thread(load_backend, settings, None, self.adapter_dirs)
        backend = self.backend
        # An adapter has its base's kind; its own folder holds its weights, probe and statistics.
        checkpoint = backend.model_dir if self.base is None else self.base.backend.model_dir
        self.judge = backend.judge
        self.kind = JUDGE if self.judge is not None else checkpoint_kind(checkpoint)
        self.process = process_head(checkpoint)
        self.heads = checkpoint_heads(checkpoint)
        self.references = read_references(backend.model_dir)
        if backend.max_tokens is not None and backend.max_tokens < self.limits.max_tokens:
            log.info("%s: token limit lowered to the engine's context length, %d", self.name, backend.max_tokens)
            self.limits = dataclasses.replace(self.limits, max_tokens=backend.max_tokens)
        self.scheduler = scheduler_for(
            backend, settings, self.metrics, on_model_error, requests_in_flight=lambda: self.requests_in_flight
        )
        self.admission = Admission(self.scheduler, self.metrics, settings.max_queue, queued)
        self.scheduler.start()
        probe_score = await backend.warm_up()
        self.metrics.describe(self.kind.name, backend.info())
        self.metrics.watch_backend(backend)
        self.ready = True
        self.metrics.ready.set(1)
        log.info("ready: %s (probe %s)", self.name, "none" if probe_score is None else f"{probe_score:.6f}")

    async def stop(self) -> None:
        if self.scheduler is not None:
            await self.scheduler.close()
        if self.backend is not None and self._owns_backend:
            await self.backend.close()


class ServiceState:
    """Everything the routes share: the served models, settings, metrics and the lifecycle flags.

    ``specs`` name the models (default: one, ``settings.model``); ``backends`` are already-loaded
    backends by model name (tests, benchmarks, notebooks), which the state then does not close.
    """

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        specs: Sequence[ModelSpec] | None = None,
        backends: Mapping[str | None, Backend] | None = None,
    ):
        self.settings = settings
        self.metrics = metrics
        specs = list(specs or [ModelSpec(source=settings.model)])
        self.ensembles: dict[str, Ensemble] = {
            spec.name: Ensemble(spec.name, spec.ensemble) for spec in specs if spec.ensemble is not None
        }
        """Ensembles of the served models, by name (:mod:`vlreward.service.ensemble`)."""
        specs = [spec for spec in specs if spec.ensemble is None]
        backends = dict(backends or {})
        self.models: dict[str, ServedModel] = {}
        for spec in specs:
            backend = backends.get(spec.name, backends.get(None) if len(specs) == 1 else None)
            name = spec.name or served_name(spec.source, backend)
            self.models[name] = ServedModel(name, model_settings(settings, spec), metrics.for_model(name), backend)
        for model in self.models.values():
            if model.settings.base is not None:
                model.base = self.models[model.settings.base]
                model.base.adapter_dirs.append(model.settings.model)
        self.default_model = list(self.models.values())[default_index(specs)]
        self.started = int(time.time())
        """When the server started (the ``created`` of /v1/models)."""
        self.draining = False
        """SIGTERM received: no new scoring requests."""
        self.failure: str | None = None
        """Why the service cannot serve (load failed, engine died); /health turns 503."""
        self.inflight = 0
        """Scoring requests being handled now."""
        self.on_fatal: Callable[[str], None] | None = None
        """Called when the service can no longer serve (the server runner exits non-zero)."""
        self.api_keys = settings.api_key_set()
        self.media_policy = MediaPolicy.from_settings(settings)
        self.image_memory = ImageMemory(settings.max_request_image_pixels, settings.max_total_image_pixels)
        self.capture = TrafficCapture.from_settings(settings)
        """A sampled copy of /score and /rank traffic (:mod:`vlreward.service.capture`); None: off."""
        metrics.queue_limit.set(settings.max_queue)
        self._task: asyncio.Task | None = None
        self._watchdog: asyncio.Task | None = None
        self._engine_checks: dict[str, asyncio.Task] = {}

    # -- the default model (what a single-model server's callers know as the model) ---------------------

    @property
    def backend(self) -> Backend | None:
        return self.default_model.backend

    @property
    def scheduler(self) -> Scheduler | None:
        return self.default_model.scheduler

    @property
    def admission(self) -> Admission | None:
        return self.default_model.admission

    @property
    def limits(self) -> Limits:
        return self.default_model.limits

    @property
    def ready(self) -> bool:
        """Every model loaded, warmed up and its probe passed."""
        return all(model.ready for model in self.models.values())

    def model(self, name: str | None) -> ServedModel:
        """The model a request names. One model served: any name is it (clients written against other
        servers send their own names). Several: None is the default model; an unknown name is a 404."""
        if name in self.ensembles:
            raise ServiceError(
                f"model {name!r} is an ensemble: it answers /score and /rank", kind=ErrorKind.INVALID_REQUEST,
                param="model",
            )  # fmt: skip
        if len(self.models) == 1 or name is None:
            return self.default_model
        if name not in self.models:
            raise ServiceError(
                f"model {name!r} is not served here; this server serves {', '.join(map(repr, self.models))}",
                kind=ErrorKind.NOT_FOUND,
                param="model",
            )
        return self.models[name]

    def queued(self) -> int:
        """Samples waiting in the whole server (the bound ``max_queue`` covers every model)."""
        return sum(model.scheduler.queued for model in self.models.values() if model.scheduler is not None)

    # -- start and stop -------------------------------------------------------------------------------

    def start(self) -> None:
        """Begin loading in the background, so /health and /ready answer while the models load."""
        self._task = asyncio.get_running_loop().create_task(self._load_and_warm_up(), name="vlreward-load")

    async def wait_ready(self) -> None:
        if self._task is not None:
            await self._task

    async def _load_and_warm_up(self) -> None:
        """Load the models one after the other (each engine sizes its memory against what the ones before
        left), then watch their engines. A model that cannot load or fails its probe stops the server."""
        for model in sorted(self.models.values(), key=lambda m: m.base is not None):  # adapters after bases
            try:
                await model.load(self.queued, lambda exc, model=model: self.model_error(model, exc))
            except Exception as exc:  # a model that cannot load or fails its probe must never serve
                log.exception("start-up of model %s failed", model.name)
                self.fail(f"start-up of model {model.name!r} failed: {exc}")
                return
        for ensemble in self.ensembles.values():  # its members' scores are z-scores: each needs its statistics
            for member in ensemble.members:
                name, head = member_parts(member)
                model = self.models[name]
                if head is not None and (model.heads is None or head not in model.heads.names):
                    heads = "one head" if model.heads is None else f"heads {', '.join(model.heads.names)}"
                    self.fail(f"ensemble {ensemble.name!r}: member {member!r}: model {name!r} has {heads}")
                    return
                if model.reference_of(head) is None:
                    self.fail(f"ensemble {ensemble.name!r}: member {member!r} has no reference statistics "
                              "(run `vlreward calibrate` on it)")  # fmt: skip
                    return
        self._watchdog = asyncio.get_running_loop().create_task(self._watch_engines(), name="vlreward-watchdog")

    async def _watch_engines(self, interval_s: float = 0.5) -> None:
        """An engine that dies while serving makes the service fail (and the process exit non-zero)."""
        while self.failure is None:
            await asyncio.sleep(interval_s)
            for model in self.models.values():
                if not model.backend.health():
                    self.fail(f"the scoring engine of model {model.name!r} died")

    def model_error(self, model: ServedModel, exc: Exception) -> None:
        """The model failed on a sample alone, or the engine broke. A broken engine (a CUDA error, its
        process gone) ends serving at once; after any other failure the checkpoint's probe (or the
        warm-up sample) runs again: an engine that fails on it cannot serve at all (every sample would
        fail the same way), so serving ends too; one that passes keeps serving (the sample was the cause)."""
        check = self._engine_checks.get(model.name)
        if isinstance(exc, EngineBroken):
            self.fail(f"the scoring engine of model {model.name!r} broke: {exc}")
        elif self.failure is None and (check is None or check.done()):
            self._engine_checks[model.name] = asyncio.get_running_loop().create_task(
                self._recheck_engine(model), name=f"vlreward-recheck-{model.name}"
            )

    async def _recheck_engine(self, model: ServedModel) -> None:
        try:
            await model.backend.warm_up()
        except Exception as exc:
            log.exception("the engine of model %s fails its own probe", model.name)
            self.fail(f"the scoring engine of model {model.name!r} fails its own probe ({type(exc).__name__}: {exc})")
        else:
            log.info("the engine of model %s still passes its probe: the failure was the sample's", model.name)

    def fail(self, reason: str) -> None:
        """The service can no longer serve: /ready and /health turn 503 and the runner exits non-zero."""
        self.failure = reason
        self.metrics.set_ready(False)
        if self.on_fatal is not None:
            self.on_fatal(reason)

    def begin_drain(self) -> None:
        """SIGTERM: /ready turns 503 and new scoring requests get 503 draining."""
        self.draining = True
        self.metrics.set_ready(False)

    async def stop(self) -> None:
        for task in (self._task, self._watchdog, *self._engine_checks.values()):
            if task is not None and not task.done():
                task.cancel()
        for model in self.models.values():
            await model.stop()
        if self.capture is not None:
            await asyncio.to_thread(self.capture.close)

    # -- health and admission -------------------------------------------------------------------------

    def is_ready(self) -> bool:
        return self.ready and not self.draining and self.failure is None

    def not_ready_reason(self) -> str:
        """Why /ready is 503 (not draining): the failure, or the models still loading."""
        if self.failure is not None:
            return self.failure
        loading = [name for name, model in self.models.items() if not model.ready]
        return f"loading: {', '.join(loading)}" if len(self.models) > 1 else "loading"

    def unhealthy_reason(self) -> str | None:
        """Why the process cannot serve any more (None while healthy or still loading)."""
        if self.failure is not None:
            return self.failure
        for model in self.models.values():
            engine_ok = model.backend is None or model.backend.health()
            scheduler_ok = model.scheduler is None or model.scheduler.healthy()
            if not (engine_ok and scheduler_ok):
                which = "" if len(self.models) == 1 else f" of model {model.name!r}"
                return f"the scoring engine{which} stopped"
        return None

    @asynccontextmanager
    async def admitted(self, model: ServedModel) -> AsyncIterator[MediaPolicy]:
        """Admit a scoring request to ``model`` (or refuse it: draining, not ready) and count it as in
        flight; yields the media policy that charges its decoded images to the service's image memory."""
        if self.draining:
            model.metrics.reject("draining")
            raise ServiceError("server is shutting down; retry on another replica", kind=ErrorKind.DRAINING)
        if not self.ready or self.failure is not None:
            model.metrics.reject("not_ready")
            raise ServiceError(self.failure or "model is still loading", kind=ErrorKind.NOT_READY)
        self.inflight += 1
        model.requests_in_flight += 1
        self.metrics.inflight.inc()
        try:
            with self.image_memory.request() as images:
                yield self.media_policy.counting(images)
        except ImageMemoryFull:
            model.metrics.reject("image_memory")
            raise
        finally:
            self.inflight -= 1
            model.requests_in_flight -= 1
            self.metrics.inflight.dec()


def served_name(source: str | None, backend: Backend | None) -> str:
    """The name of a model given without one: its checkpoint's (the loaded backend's, or the folder's)."""
    if backend is not None:
        return backend.info()["model"]
    if source is None:
        return "default"
    from vlreward.service.model.checkpoint import model_name

    return model_name(source)
