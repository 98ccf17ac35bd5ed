"""Admission and lifecycle under load: overload (429), disconnects, SIGTERM drain, start-up failures."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.helpers import (
    VLREWARD,
    LiveServer,
    another_request_on_the_way,
    free_port,
    post_and_leave,
    shape_image,
    uri,
    wait_ready,
    wait_until,
)
from vlreward.service.backends.transformers import TransformersBackend
from vlreward.service.media import MediaPolicy
from vlreward.service.prepare import prepare_sample
from vlreward.service.schemas import Sample


def test_burst_over_a_small_queue_gets_429_with_retry_after_then_recovers(hf_backend):
    with LiveServer(hf_backend, max_queue=4, max_wait_ms=300, max_batch_size=64) as live:
        body = {"items": [{"prompt": f"q{i}", "response": "r"} for i in range(2)]}

        def send(_):
            return httpx.post(live.url + "/score", json=body, timeout=60)

        with ThreadPoolExecutor(max_workers=12) as pool:
            responses = list(pool.map(send, range(12)))
        statuses = [r.status_code for r in responses]
        assert 200 in statuses and 429 in statuses and set(statuses) <= {200, 429}
        for response in responses:
            if response.status_code == 429:
                assert response.json()["error"]["type"] == "overloaded"
                assert int(response.headers["retry-after"]) >= 1
        assert httpx.get(live.url + "/health").status_code == 200
        assert httpx.get(live.url + "/ready").status_code == 200
        assert all(send(i).status_code == 200 for i in range(3))
        assert live.metric("vlreward_rejected_total", reason="overloaded") >= 1


def test_a_client_that_disconnects_has_its_queued_samples_dropped(hf_backend):
    with LiveServer(hf_backend, max_wait_ms=1500, max_batch_size=64) as live:
        batches_before = live.metric("vlreward_batch_size_count")
        body = {"items": [{"prompt": "a", "response": "b"}, {"prompt": "c", "response": "d"}]}
        queued = lambda: live.state.scheduler.queued == 2  # noqa: E731  (the batch is filling)
        with another_request_on_the_way(live.state.default_model):  # so the batch waits to fill
            post_and_leave(live.port, "/score", body, queued, "both samples queued")
        wait_until(lambda: live.metric("vlreward_rejected_total", reason="dropped_from_queue") == 2, what="dropped")
        assert live.metric("vlreward_rejected_total", reason="cancelled") == 1
        assert live.metric("vlreward_batch_size_count") == batches_before
        assert live.metric("vlreward_inflight_requests") == 0
        assert httpx.post(live.url + "/score", json={"items": [{"prompt": "a", "response": "b"}]}).status_code == 200


@pytest.mark.slow
def test_sigterm_during_load_completes_every_accepted_request_then_exits_0(tiny_reward, tmp_path, processes):
    """`vlreward serve` with no --model serves the default model found in its home; drains on SIGTERM."""
    home = tmp_path / "home"
    shutil.copytree(tiny_reward, home / "models" / "default")
    port = free_port()
    env = {**os.environ, "VLREWARD_HOME": str(home), "VLREWARD_MAX_WAIT_MS": "150"}
    process = processes.start([VLREWARD, "serve", "--port", str(port)], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
        samples = [{"prompt": f"q{i}", "response": "yes " * (i % 5 + 1), "image": uri(shape_image())} for i in range(6)]
        results: list[tuple[float, float, int | None, list | None]] = []
        stop = threading.Event()

        def client(worker: int) -> None:
            with httpx.Client(base_url=url, timeout=60) as http:
                while not stop.is_set():
                    started = time.monotonic()
                    try:
                        response = http.post("/score", json={"items": samples[worker % 3 : worker % 3 + 3]})
                    except httpx.ConnectError:  # refused once the listener closed: never accepted
                        results.append((started, time.monotonic(), None, None))
                        return
                    except httpx.TransportError as exc:  # accepted, then cut off: what must never happen
                        results.append((started, time.monotonic(), type(exc).__name__, None))
                        return
                    body, status = response.json(), response.status_code
                    if status == 503 and body["error"]["type"] != "draining":  # 503 only as "not accepted"
                        status = f"503 {body['error']['type']}"
                    scores = body.get("scores") if status == 200 else None
                    results.append((started, time.monotonic(), status, scores))
                    if status != 200:
                        return

        threads = [threading.Thread(target=client, args=(w,)) for w in range(12)]
        for thread in threads:
            thread.start()
        wait_until(lambda: len(results) >= 12, what="the load running")
        sigterm_at = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()

    statuses = {status for _, _, status, _ in results}
    assert statuses <= {200, 503, None}, statuses  # no request cut off, no other error
    accepted = [(start, end, scores) for start, end, status, scores in results if status == 200]
    assert all(scores is not None and len(scores) == 3 for _, _, scores in accepted)
    in_flight_at_sigterm = [1 for start, end, _ in accepted if start < sigterm_at < end]
    assert in_flight_at_sigterm, "no request was in flight at SIGTERM; the test proved nothing"

    backend = TransformersBackend(home / "models" / "default", device="cpu")
    expected = [
        backend.score_sync([prepare_sample(Sample.model_validate(s), backend.processor, MediaPolicy())])[0]
        for s in samples
    ]
    for _, _, scores in accepted:
        windows = [expected[k : k + 3] for k in range(3)]
        assert any(all(abs(a - b) <= 1e-5 for a, b in zip(scores, w, strict=True)) for w in windows)


@pytest.mark.slow
def test_a_checkpoint_without_head_makes_serve_exit_1(tiny_base):
    port = free_port()
    result = subprocess.run(
        [VLREWARD, "serve", "--model", str(tiny_base), "--port", str(port)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert "start-up of model" in result.stderr and "architectures" in result.stderr


@pytest.mark.parametrize("asynchronous", [False, True])
def test_python_client_returns_typed_results_and_raises_typed_errors(hf_backend, asynchronous):
    import asyncio

    from vlreward.client import AsyncRewardClient, InvalidRequest, RewardClient, Unauthorized

    with LiveServer(hf_backend, api_keys="secret") as live:
        sample = {"prompt": "Colour?", "response": "Red.", "image": uri(shape_image())}
        if not asynchronous:
            with RewardClient(live.url, api_key="secret") as client:
                scored = client.score([sample])
                ranked = client.rank("Colour?", ["Red.", "Blue."], images=[uri(shape_image())])
                rewards = client.get_reward(["<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n"])
                with pytest.raises(InvalidRequest) as error:
                    client.score([{"prompt": "p"}])
                with RewardClient(live.url, api_key="wrong") as bad, pytest.raises(Unauthorized):
                    bad.score([sample])
        else:

            async def run():
                async with AsyncRewardClient(live.url, api_key="secret") as client:
                    scored = await client.score([sample])
                    ranked = await client.rank("Colour?", ["Red.", "Blue."], images=[uri(shape_image())])
                    rewards = await client.get_reward(
                        ["<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n"]
                    )
                    with pytest.raises(InvalidRequest) as error:
                        await client.score([{"prompt": "p"}])
                    return scored, ranked, rewards, error

            scored, ranked, rewards, error = asyncio.run(run())
    assert len(scored.scores) == 1 and abs(scored.scores[0] - ranked.scores[0]) <= 1e-5
    assert ranked.best in (0, 1) and sorted(ranked.ranking) == [0, 1]
    assert len(rewards.rewards) == 1
    assert error.value.status == 422 and error.value.param == "items[0]"


def test_client_module_imports_neither_torch_nor_transformers():
    code = "import sys, vlreward.client; sys.exit(int('torch' in sys.modules or 'transformers' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
