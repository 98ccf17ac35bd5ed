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
    command: list[str], port: int, ready_path: str, env: dict | None = None, timeout_s: float = 600
) -> ServerProcess:
    """Start ``command`` in its own process group and wait until ``ready_path`` answers 200."""
    log = Path(tempfile.mkdtemp(prefix="server-")) / "server.log"
    with log.open("w") as handle:
        process = subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True
        )
    server = ServerProcess(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"server exited during start-up:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            server.stop()
            raise TimeoutError(f"server not ready in {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(server.url + ready_path, timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)


ALL_CORES = {RESERVED_CPU_ENV: "0"}
"""vLLM's CPU build keeps one core for its scheduler and server by default; this gives its worker every core,
as our engine worker has them on a host of 4 cores or fewer."""


def start_vllm_serve(model: Path, all_cores: bool = False, runner: str = "pooling") -> ServerProcess:
    """``vllm serve`` as a user starts it, or with ``all_cores`` (:data:`ALL_CORES`)."""
    port = free_port()
    return start(vllm_serve_command(model, port, runner=runner), port, "/health", ALL_CORES if all_cores else None)


def start_vlreward(model: Path | dict[str, Path], backend: str, **settings: str) -> ServerProcess:
    """``vlreward serve`` (one model, or several by name) with extra settings as VLREWARD_* environment
    variables."""
    port = free_port()
    env = {**CPU_ENGINE, **{f"VLREWARD_{k.upper()}": str(v) for k, v in settings.items()}}
    return start(vlreward_serve_command(model, port, backend), port, "/ready", env)
