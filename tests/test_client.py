"""The Python client against a live server: retries only what is transient, chunks to max_items in
order, a total deadline, sync = async, per-item None, and images given as PIL images, bytes or paths."""

from __future__ import annotations

import asyncio
import io
import math
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.helpers import LiveServer, shape_image, uri
from vlreward.client import AsyncRewardClient, InvalidRequest, RetryPolicy, RewardClient

FAST = RetryPolicy(attempts=30, backoff_s=0.05, max_backoff_s=0.3, deadline_s=120)


def text_items(n: int) -> list[dict]:
    return [{"prompt": f"Question {i}?", "response": f"Answer number {i}."} for i in range(n)]


def test_a_burst_that_gets_429s_completes_with_every_score_after_retries(hf_backend):
    with LiveServer(hf_backend, max_queue=4, max_wait_ms=100, max_batch_size=64) as live:
        items = text_items(64)
        with RewardClient(live.url, retry=RetryPolicy(attempts=1)) as single:
            expected = [single.score([item]).scores[0] for item in items]
        refused_before = live.metric("vlreward_rejected_total", reason="overloaded")
        with RewardClient(live.url, retry=FAST, max_concurrency=32) as client, ThreadPoolExecutor(32) as pool:
            scores = list(pool.map(lambda i: client.score(items[i : i + 2]).scores, range(0, 64, 2)))
        assert live.metric("vlreward_rejected_total", reason="overloaded") > refused_before  # there were 429s
        flat = [s for pair in scores for s in pair]
        assert max(abs(a - b) for a, b in zip(flat, expected, strict=True)) <= 1e-5


def test_a_thousand_items_are_chunked_to_max_items_and_come_back_in_order(hf_backend):
    with LiveServer(hf_backend, max_items=64) as live:
        items = text_items(1000)
        before = live.metric("vlreward_requests_total", endpoint="/score", status="200")
        with RewardClient(live.url) as client:
            result = client.score(items)
            assert len(result.scores) == 1000 and result.usage.input_tokens > 0
            assert live.metric("vlreward_requests_total", endpoint="/score", status="200") - before == 16
            for index in (0, 63, 64, 500, 999):
                assert abs(result.scores[index] - client.score([items[index]]).scores[0]) <= 1e-5


def test_a_validation_error_is_raised_at_once_and_never_retried(hf_backend):
    with LiveServer(hf_backend) as live, RewardClient(live.url, retry=FAST) as client:
        before = live.metric("vlreward_requests_total", endpoint="/score", status="422")
        with pytest.raises(InvalidRequest) as error:
            client.score([{"prompt": "no response"}])
        assert error.value.status == 422  # and one request only (a retry would be a second):
        assert live.metric("vlreward_requests_total", endpoint="/score", status="422") == before + 1


def test_a_server_that_stops_answering_hits_the_calls_deadline():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted = []
    threading.Thread(target=lambda: [accepted.append(listener.accept()) for _ in range(16)], daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    policy = RetryPolicy(attempts=100, backoff_s=0.05, max_backoff_s=0.2, deadline_s=1.5)
    try:
        with RewardClient(url, timeout_s=60, retry=policy, max_items=8) as client:
            started = time.monotonic()
            with pytest.raises(httpx.TimeoutException):
                client.score(text_items(1))
            assert 1.4 <= time.monotonic() - started < 30  # waited for the deadline, and not for ever
    finally:
        listener.close()


def test_sync_and_async_clients_give_the_same_results_and_none_for_an_item_that_fails(hf_backend):
    items = text_items(100)
    items[70] = {"prompt": "Look.", "response": "Red.", "image": "data:image/png;base64,bm90IGFuIGltYWdl"}
    with LiveServer(hf_backend, max_items=32) as live:
        with RewardClient(live.url) as client:
            sync = client.score(items, on_error="null")

        async def run():
            async with AsyncRewardClient(live.url) as client:
                return await client.score(items, on_error="null")

        asynchronous = asyncio.run(run())
    assert len(sync.scores) == len(asynchronous.scores) == 100
    pairs = [(a, b) for a, b in zip(sync.scores, asynchronous.scores, strict=True) if a is not None]
    assert max(abs(a - b) for a, b in pairs) <= 1e-5  # chunks sent at once may share forward passes
    assert sync.scores[70] is None and sum(s is None for s in sync.scores) == 1
    assert [(e.index, e.param) for e in sync.errors] == [(70, "items[70].image")]


def test_images_may_be_pil_images_bytes_or_paths(hf_backend, tmp_path):
    image = shape_image("blue")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    (tmp_path / "blue.png").write_bytes(buffer.getvalue())
    forms = [uri(image), image, buffer.getvalue(), tmp_path / "blue.png"]
    with LiveServer(hf_backend) as live, RewardClient(live.url) as client:
        scores = [client.score([{"prompt": "Colour?", "response": "Blue.", "image": f}]).scores[0] for f in forms]
        ranked = client.rank("Colour?", ["Blue.", "Red."], images=[image]).scores
    assert max(scores) - min(scores) <= 1e-6
    assert abs(ranked[0] - scores[0]) <= 1e-4


def test_compare_is_chunked_to_half_of_max_items_in_order_sync_and_async(hf_backend):
    image = shape_image("red")  # a PIL image: the client encodes it
    pairs = [{"prompt": f"Question {i}?", "a": f"Answer {i}.", "b": f"Reply number {i}."} for i in range(5)]
    pairs.append({"prompt": "Colour?", "image": image, "a": "Red.", "b": "Blue."})
    with LiveServer(hf_backend, max_items=4) as live, RewardClient(live.url) as client:
        compared = client.compare(pairs)  # 6 pairs in 3 calls of 2
        scores = client.score([{**{k: v for k, v in p.items() if k not in "ab"}, "response": p[side]}
                               for p in pairs for side in "ab"]).scores  # fmt: skip

        async def run():
            async with AsyncRewardClient(live.url) as async_client:
                return await async_client.compare(pairs)

        async_compared = asyncio.run(run())
    expected = [1 / (1 + math.exp(b - a)) for a, b in zip(scores[0::2], scores[1::2], strict=True)]
    assert [r.prob_a for r in compared.results] == pytest.approx(expected, abs=1e-6)
    assert [r.prob_a for r in async_compared.results] == pytest.approx(expected, abs=1e-6)
    assert compared.usage.images == 2 and len(compared.results) == 6


def test_errors_are_told_apart_by_the_type_the_server_sends_and_by_status_only_without_one():
    from vlreward.client import ERROR_CLASSES, InvalidRequest, Overloaded, Unavailable, VLRewardError, error_class
    from vlreward.service.errors import ErrorKind
    from vlreward.service.http.errors import STATUS

    assert set(ERROR_CLASSES) == set(ErrorKind)  # a new kind must say how clients see it
    for kind in ErrorKind:  # 4xx kinds are the client's mistake, except the retryable ones
        if STATUS[kind] < 500 and kind not in (ErrorKind.OVERLOADED, ErrorKind.UNAUTHORIZED):
            assert ERROR_CLASSES[kind] is InvalidRequest, kind
    assert error_class(500, "overloaded") is Overloaded  # the type wins over a status a proxy rewrote
    assert error_class(503, "draining") is Unavailable and error_class(502, "") is Unavailable
    assert error_class(500, "") is VLRewardError and error_class(418, "") is InvalidRequest


@pytest.mark.slow
def test_three_replicas_one_drained_and_one_killed_mid_run_every_score_returned_once(
    tiny_reward, hf_backend, processes
):
    """The client spreads calls over replicas and moves off one that drains (503, then refused) or dies."""
    import signal

    from tests.helpers import VLREWARD, free_port, wait_ready
    from vlreward.client import RetryPolicy, RewardClient
    from vlreward.service.media import MediaPolicy
    from vlreward.service.prepare import prepare_request_sample

    urls, servers = [], []
    for _ in range(3):
        port = free_port()
        urls.append(f"http://127.0.0.1:{port}")
        servers.append(processes.start([VLREWARD, "serve", "--model", str(tiny_reward), "--port", str(port)]))
    for url, server in zip(urls, servers, strict=True):
        wait_ready(url, server)
    samples = [
        {"prompt": f"Question {i}: what is shown?", "response": "A red circle." if i % 2 else f"Answer {i}."}
        | ({"image": uri(shape_image("red" if i % 3 else "blue"))} if i % 4 == 0 else {})
        for i in range(90)
    ]
    expected = [hf_backend.score_sync([prepare_request_sample(s, hf_backend.processor, MediaPolicy())])[0]
                for s in samples]  # fmt: skip
    results: dict[int, list[float]] = {}
    with RewardClient(urls, max_concurrency=9, retry=RetryPolicy(deadline_s=120)) as client:

        def call(i: int) -> None:
            results[i] = client.score([samples[i]]).scores

        with ThreadPoolExecutor(max_workers=9) as pool:
            futures = [pool.submit(call, i) for i in range(len(samples))]
            while len(results) < 20:
                time.sleep(0.01)
            servers[0].send_signal(signal.SIGTERM)  # drains: in-flight calls finish, new ones get 503
            while len(results) < 40:
                time.sleep(0.01)
            servers[1].kill()  # dies with calls in flight
            for future in futures:
                future.result()
        assert servers[0].wait(timeout=60) == 0
        assert sorted(results) == list(range(len(samples)))
        for i, scores in results.items():
            assert len(scores) == 1 and scores[0] == pytest.approx(expected[i], abs=1e-5), i
        served_last = httpx.get(urls[2] + "/metrics").text
        assert re.search(r'vlreward_requests_total\{endpoint="/score",model="[^"]+",status="200"\}', served_last)


def test_replicas_take_the_fewest_in_flight_skip_set_aside_ones_and_a_name_resolves_to_its_addresses(monkeypatch):
    from vlreward import client as client_module
    from vlreward.client import Replicas, discover_replicas

    replicas = Replicas("http://a:1, http://b:2,http://c:3")
    with replicas.lease() as first, replicas.lease() as second, replicas.lease() as third:
        assert {first.url, second.url, third.url} == {"http://a:1", "http://b:2", "http://c:3"}
        with replicas.lease() as fourth:
            assert fourth.in_flight == 2
    replicas.set_aside(replicas.all[0])
    assert replicas.available() == 2
    picked = set()
    for _ in range(6):
        with replicas.lease() as replica:
            picked.add(replica.url)
    assert picked == {"http://b:2", "http://c:3"}
    monkeypatch.setattr(client_module.socket, "getaddrinfo", lambda host, port, type: [
        (None, None, None, "", ("10.1.0.7", port)), (None, None, None, "", ("10.1.0.3", port)),
        (None, None, None, "", ("fd00::5", port, 0, 0))])  # fmt: skip
    assert discover_replicas("http://rm-vlreward-pods.ml.svc:8000") == [
        "http://10.1.0.3:8000", "http://10.1.0.7:8000", "http://[fd00::5]:8000"]  # fmt: skip
    with pytest.raises(ValueError, match="at least one"):
        Replicas("")
