"""The load generator against a real HTTP server on loopback: warm-up calls are never sent twice."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

import pytest
import uvicorn
from fastapi import FastAPI

from loadtest.loadgen import closed_loop, score_call
from loadtest.servers import free_port


@pytest.fixture(scope="module")
def counting_server():
    """A /score that answers each item with its prompt's length and counts every prompt it sees."""
    seen: Counter = Counter()
    app = FastAPI()

    @app.post("/score")
    async def score(body: dict) -> dict:
        prompts = [item["prompt"] for item in body["items"]]
        seen.update(prompts)
        return {"scores": [float(len(p)) for p in prompts], "usage": {"input_tokens": len(prompts)}}

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield url, seen
    server.should_exit = True
    thread.join(timeout=10)


@pytest.mark.parametrize(("calls", "warm_up", "timed"), [(10, 3, 7), (4, 0, 4), (2, 5, 1)])
def test_warm_up_calls_are_sent_once_and_left_out_of_the_timing(counting_server, calls, warm_up, timed):
    url, seen = counting_server
    seen.clear()
    prompts = [f"prompt {'x' * i}" for i in range(calls)]
    run = asyncio.run(
        closed_loop(url, [score_call([{"prompt": p, "response": "r"}]) for p in prompts], 2, warm_up, quiet=True)
    )
    assert seen == Counter(prompts)  # every call once: a timed call never finds its sample in a warm cache
    assert run.statuses[200] == calls and run.flat_scores() == [float(len(p)) for p in prompts]
    summary = run.summary()
    assert len(run.latencies_ms) == timed and run.samples == timed and summary["total_input_tokens"] == timed
