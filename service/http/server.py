"""Run the app under uvicorn with Kubernetes-friendly shutdown.

SIGTERM starts a drain instead of an immediate stop: /ready turns 503, new scoring requests get 503
``draining``, in-flight requests finish (up to the drain, ``Settings.drain_s``), then the process exits 0. A model
that fails to load or an engine that dies makes the process exit 1, so the orchestrator restarts it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import Any

import uvicorn

from vlreward.service.backends.base import Backend
from vlreward.service.catalog import ModelSpec
from vlreward.service.http.app import create_app
from vlreward.service.http.connection import guarded_protocol
from vlreward.service.lifecycle import ServiceState
from vlreward.service.settings import Settings

log = logging.getLogger("vlreward")


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose SIGTERM drains in-flight requests first and whose exit code reflects failures."""

    def __init__(self, config: uvicorn.Config, state: ServiceState):
        super().__init__(config)
        self.state = state
        self.exit_code = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        state.on_fatal = self._fatal

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def _fatal(self, reason: str) -> None:
        log.error("exiting: %s", reason)
        self.exit_code = 1
        if self._loop is None:
            self.should_exit = True
        else:  # keep answering /ready with 503 for a moment, so probes see the failure, then exit
            self._loop.call_later(1.0, setattr, self, "should_exit", True)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not uvicorn's handler: it re-raises the signal after shutdown, which would make the exit code 143.
        if sig == signal.SIGTERM and not self.state.draining and self._loop is not None:
            log.info("SIGTERM: draining %d in-flight requests", self.state.inflight)
            self.state.begin_drain()
            self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._drain()))
            return
        if self.should_exit:
            self.force_exit = True
        self.should_exit = True

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.state.settings.drain_s
        while self.state.inflight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.state.inflight:
            log.warning("drain timeout: %d requests still in flight", self.state.inflight)
        self.should_exit = True


SHUTDOWN_S = 5
"""uvicorn's own graceful shutdown, after the drain has let every in-flight request finish: closing idle
connections takes this at most. A pod's grace period covers preStop + the drain + this (the Helm chart
derives it; its ``serverShutdownSeconds`` must equal this, a test checks)."""


def uvicorn_config(app: Any, settings: Settings, **options: Any) -> uvicorn.Config:
    """uvicorn's config for the app: its address, and the guarded HTTP protocol (read timeouts, header
    and connection limits; :mod:`vlreward.service.http.connection`)."""
    protocol = guarded_protocol(settings, app.state.service.metrics)
    return uvicorn.Config(app, host=settings.host, port=settings.port, http=protocol, **options)


def run(settings: Settings, specs: Sequence[ModelSpec] | None = None) -> int:
    """Serve ``specs`` (default: the one model of ``settings.model``) until SIGTERM/SIGINT; returns the
    process exit code."""
    logging.basicConfig(level=logging.INFO, format="%(message)s" if settings.log_json else "%(levelname)s %(message)s")
    app = create_app(settings, specs=specs)
    config = uvicorn_config(
        app,
        settings,
        log_level="info",
        access_log=not settings.log_json,
        timeout_graceful_shutdown=SHUTDOWN_S,
    )
    server = DrainingServer(config, app.state.service)
    server.run()
    return server.exit_code


if __name__ == "__main__":
    sys.exit(run(Settings()))


class BackgroundServer:
    """The app under uvicorn on a free loopback port, in a background thread: for embedding the service
    around an already-loaded backend (tests, benchmarks, notebooks), or several models (``specs`` and
    their loaded ``backends`` by name). ``with`` waits until /ready."""

    def __init__(
        self,
        backend: Backend | None = None,
        ready_timeout_s: float = 300.0,
        specs: Sequence[ModelSpec] | None = None,
        backends: Mapping[str, Backend] | None = None,
        **settings: Any,
    ):
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.settings = Settings(host="127.0.0.1", port=self.port, **settings)
        self.backend = backend
        self.specs, self.backends = specs, backends
        self.url = f"http://127.0.0.1:{self.port}"
        self.ready_timeout_s = ready_timeout_s

    def __enter__(self) -> BackgroundServer:
        import threading

        import httpx

        self.app = create_app(self.settings, self.backend, self.specs, self.backends)
        self.state: ServiceState = self.app.state.service
        config = uvicorn_config(self.app, self.settings, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="vlreward-background-server")
        self.thread.start()
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.state.failure or not self.thread.is_alive():
                self.__exit__()
                raise RuntimeError(self.state.failure or "the server thread stopped")
            time.sleep(0.05)
        self.__exit__()
        raise TimeoutError(f"the server did not become ready in {self.ready_timeout_s} s")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)
