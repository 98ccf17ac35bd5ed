"""Servers the benchmarks (and the tests that share them) start as processes: ours and ``vllm serve``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from vlreward.service.backends.vllm import RESERVED_CPU_ENV

CPU_ENGINE = {"VLREWARD_VLLM_GPU_MEMORY_UTILIZATION": "0.2"}
"""vLLM's CPU build sizes its KV cache from this share of memory (two engines fit side by side)."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def vllm_serve_command(model: Path, port: int, max_images: int = 2, runner: str = "pooling") -> list[str]:
    """vLLM's own OpenAI server: for a reward checkpoint the classify runner with raw scores; with ``runner``
    ``generate``, for a generative checkpoint (a judge writing its answers)."""
    pooling = ["--pooler-config", json.dumps({"use_activation": False})] if runner == "pooling" else []
    return [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
        "--runner", runner, "--dtype", "float32", "--enforce-eager", "--gpu-memory-utilization", "0.2",
        "--limit-mm-per-prompt", json.dumps({"image": max_images, "video": 0}), *pooling, "--port", str(port),
    ]  # fmt: skip


def vlreward_serve_command(model: Path | dict[str, Path], port: int, backend: str) -> list[str]:
    """``vlreward serve`` on one model, or on several (a dict name -> checkpoint: one ``--model`` each)."""
    models = [str(model)] if isinstance(model, Path) else [f"{name}={path}" for name, path in model.items()]
    flags = [part for value in models for part in ("--model", value)]
    return [sys.executable, "-m", "vlreward", "serve", *flags, "--port", str(port), "--backend", backend]


@dataclass
class ServerProcess:
    """A server started by :func:`start`; stop it with :meth:`stop`."""

    url: str
    process: subprocess.Popen
    log: Path
    ready_path: str = "/health"
    deadline: float = 0.0
    """When :meth:`wait_ready` gives up (``time.monotonic()``)."""

    def wait_ready(self) -> ServerProcess:
        """Wait until ``ready_path`` answers 200 (stops the server and raises when it exits or times out)."""
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited during start-up:\n{self.log.read_text()[-3000:]}")
            if time.monotonic() > self.deadline:
                self.stop()
                raise TimeoutError(f"server not ready in time:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + self.ready_path, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def start(
    command: list[str], port: int, ready_path: str, env: dict | None = None, timeout_s: float = 600, wait: bool = True
) -> ServerProcess:
    """Start ``command`` in its own process group and wait until ``ready_path`` answers 200 (``wait=False``:
    return at once; :func:`all_ready` waits for several started side by side)."""
    log = Path(tempfile.mkdtemp(prefix="server-")) / "server.log"
    with log.open("w") as handle:
        process = subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True
        )
    server = ServerProcess(f"http://127.0.0.1:{port}", process, log, ready_path, time.monotonic() + timeout_s)
    return server.wait_ready() if wait else server


def all_ready(*servers: ServerProcess) -> list[ServerProcess]:
    """Wait for servers started with ``wait=False`` (their start-ups overlap); if one fails, all are stopped."""
    try:
        return [server.wait_ready() for server in servers]
    except BaseException:
        for server in servers:
            server.stop()
        raise


ALL_CORES = {RESERVED_CPU_ENV: "0"}
"""vLLM's CPU build keeps one core for its scheduler and server by default; this gives its worker every core,
as our engine worker has them on a host of 4 cores or fewer."""


def start_vllm_serve(model: Path, all_cores: bool = False, runner: str = "pooling", wait: bool = True) -> ServerProcess:
    """``vllm serve`` as a user starts it, or with ``all_cores`` (:data:`ALL_CORES`)."""
    port = free_port()
    env = ALL_CORES if all_cores else None
    return start(vllm_serve_command(model, port, runner=runner), port, "/health", env, wait=wait)


def start_vlreward(
    model: Path | dict[str, Path], backend: str, wait: bool = True, **settings: str | int | float
) -> ServerProcess:
    """``vlreward serve`` (one model, or several by name) with extra settings as VLREWARD_* environment
    variables (``wait=False``: see :func:`start`)."""
    port = free_port()
    env = {**CPU_ENGINE, **{f"VLREWARD_{k.upper()}": str(v) for k, v in settings.items()}}
    return start(vlreward_serve_command(model, port, backend), port, "/ready", env, wait=wait)
