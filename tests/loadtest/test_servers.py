"""How the benchmarks start `vllm serve`: as a user starts it, or with every core for our engine's share."""

from __future__ import annotations

from pathlib import Path

from loadtest import servers


def test_vllm_serve_gets_every_core_only_when_asked(monkeypatch):
    started: list[dict | None] = []
    monkeypatch.setattr(servers, "start", lambda command, port, path, env=None, wait=True: started.append(env))
    servers.start_vllm_serve(Path("model"))
    servers.start_vllm_serve(Path("model"), all_cores=True)
    assert started == [None, {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}]
