"""Faults inside the model, through a live server: a sample that makes the model raise fails alone, an
out-of-memory batch is halved until it fits, an engine that cannot serve any more ends serving
(/ready 503, exit code 1); a deadline passing in the queue or the model is a 504; decoded images in
flight are bounded (429). The hooks replace the model's forward on a backend of these tests' own;
the scheduler, admission, scoring pipeline and HTTP layer are the real ones."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
import uvicorn

from tests.helpers import LiveServer, shape_image, uri, wait_until
from vlreward.service.backends.transformers import TransformersBackend
from vlreward.service.http.app import create_app
from vlreward.service.http.server import DrainingServer
from vlreward.service.settings import Settings

POISON = "POISON"


@pytest.fixture()
def backend(tiny_reward):
    """A backend these tests may break (the session's shared one stays intact)."""
    backend = TransformersBackend(tiny_reward, dtype="float32", device="cpu")
    yield backend
    backend._executor.shutdown(wait=False)


def hook_forward(backend: TransformersBackend, fail) -> list[int]:
    """Make the model's batch forward raise ``fail(batch)`` when that returns an exception; returns the
    list of batch sizes it was called with."""
    real, sizes = backend.model.score_batch, []

    def score_batch(batch, padding_side):
        sizes.append(len(batch))
        error = fail(batch)
        if error is not None:
            raise error
        return real(batch, padding_side)

    backend.model.score_batch = score_batch
    return sizes


def is_poisoned(backend: TransformersBackend, sample) -> bool:
    return POISON in backend.processor.tokenizer.decode(sample.input_ids)


def item(i: int, poisoned: bool = False) -> dict:
    return {"prompt": f"Question {i}: what is {i} plus {i}?", "response": POISON if poisoned else f"It is {2 * i}."}


def test_a_poisoned_sample_fails_only_its_own_request_among_16_concurrent_ones(backend):
    with LiveServer(backend, max_wait_ms=500, max_batch_size=64) as server:
        bodies = [{"items": [item(i), item(100 + i)]} for i in range(16)]
        bodies[5] = {"items": [item(5), item(105, poisoned=True)]}
        solo = [httpx.post(server.url + "/score", json=b, timeout=60).json() for b in bodies]
        solo.pop(5)
        neighbour = httpx.post(server.url + "/score", json={"items": [item(5)]}, timeout=60).json()["scores"][0]
        hook_forward(
            backend, lambda batch: ValueError("bad sample") if any(is_poisoned(backend, s) for s in batch) else None
        )
        splits = server.metric("vlreward_batch_splits_total", reason="error")
        with ThreadPoolExecutor(16) as pool:
            replies = list(pool.map(lambda b: httpx.post(server.url + "/score", json=b, timeout=120), bodies))
        assert server.metric("vlreward_batch_splits_total", reason="error") > splits  # it shared a batch
        poisoned = replies.pop(5)
        assert poisoned.status_code == 500 and poisoned.headers["content-type"] == "application/json"
        assert poisoned.json()["error"]["type"] == "internal" and poisoned.json()["error"]["param"] == "items[1]"
        for reply, alone in zip(replies, solo, strict=True):
            assert reply.status_code == 200, reply.text
            assert reply.json()["scores"] == pytest.approx(alone["scores"], abs=1e-5)
        # with on_error "null" the poisoned item gets null and an error; its neighbour its score
        nulls = httpx.post(server.url + "/score", json={**bodies[5], "on_error": "null"}, timeout=60).json()
        assert nulls["scores"][1] is None and nulls["errors"] == [
            {"index": 1, "type": "internal", "param": "items[1]", "message": nulls["errors"][0]["message"]}
        ]
        assert nulls["scores"][0] == pytest.approx(neighbour, abs=1e-5)
        checks = server.state._engine_checks  # the model's probe, rerun after the failure
        wait_until(lambda: len(checks) == 1 and all(check.done() for check in checks.values()))
        assert server.state.is_ready()  # the probe still passes: the sample was the cause, serving goes on


def test_out_of_memory_halves_the_batch_until_it_fits(backend):
    items = [item(i) for i in range(16)]
    with LiveServer(backend, max_batch_size=64) as server:
        alone = [httpx.post(server.url + "/score", json={"items": [i]}, timeout=60).json()["scores"][0] for i in items]
        sizes = hook_forward(
            backend, lambda batch: torch.OutOfMemoryError("CUDA out of memory") if len(batch) > 4 else None
        )
        splits = server.metric("vlreward_batch_splits_total", reason="out_of_memory")
        reply = httpx.post(server.url + "/score", json={"items": items}, timeout=120)
        assert reply.status_code == 200, reply.text
        assert reply.json()["scores"] == pytest.approx(alone, abs=1e-5)
        assert sizes[0] == 16 and max(sizes[1:]) <= 8 and sum(s for s in sizes if s <= 4) == 16
        assert server.metric("vlreward_batch_splits_total", reason="out_of_memory") - splits == 3  # 16 -> 8 -> 4


def test_a_deadline_passing_while_running_or_queued_is_504_and_serving_goes_on(backend):
    release = threading.Event()
    with LiveServer(backend, max_wait_ms=0) as server:
        hook_forward(backend, lambda batch: None if release.wait(timeout=120) else None)
        timeouts = server.metric("vlreward_rejected_total", reason="timeout")
        with ThreadPoolExecutor(2) as pool:
            running = pool.submit(
                httpx.post, server.url + "/score", json={"items": [item(1)], "timeout_s": 1}, timeout=60
            )
            wait_until(lambda: server.state.metrics.inflight._value.get() == 1, what="the first request running")
            wait_until(lambda: server.state.scheduler.queued == 0, what="its batch started")
            queued = pool.submit(
                httpx.post, server.url + "/score", json={"items": [item(2)], "timeout_s": 1}, timeout=60
            )
            for reply in (running.result(), queued.result()):
                assert reply.status_code == 504 and reply.json()["error"]["type"] == "timeout", reply.text
        assert server.metric("vlreward_rejected_total", reason="timeout") - timeouts == 2
        release.set()
        assert httpx.post(server.url + "/score", json={"items": [item(3)]}, timeout=60).status_code == 200


def test_decoded_images_in_flight_are_bounded_429_then_served_again(backend):
    image = uri(shape_image(size=(100, 100)))  # 10,000 pixels
    release = threading.Event()
    with LiveServer(backend, max_request_image_pixels=20_000, max_total_image_pixels=25_000) as server:
        hook_forward(backend, lambda batch: None if release.wait(timeout=120) else None)
        holding = {"items": [{"prompt": "Two shapes?", "images": [image, image], "response": "Yes."}]}
        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(httpx.post, server.url + "/score", json=holding, timeout=60)
            wait_until(lambda: server.state.image_memory.in_use == 20_000, what="the first request's images held")
            one_more = {"items": [{"prompt": "A shape?", "image": image, "response": "Yes."}] * 2}
            busy = httpx.post(server.url + "/score", json=one_more, timeout=60)
            assert busy.status_code == 429 and busy.json()["error"]["type"] == "overloaded", busy.text
            assert busy.headers["retry-after"] == "1"
            release.set()
            assert held.result().status_code == 200
        three = {"items": [{"prompt": "Three?", "images": [image] * 3, "response": "Yes."}]}  # over one request's
        over = httpx.post(server.url + "/score", json=three, timeout=60)
        assert over.status_code == 413 and over.json()["error"]["param"] == "items[0].images[2]", over.text
        assert (
            server.state.image_memory.in_use == 0
            and server.metric("vlreward_rejected_total", reason="image_memory") == 1
        )
        assert httpx.post(server.url + "/score", json=one_more, timeout=60).status_code == 200


@pytest.mark.parametrize(
    "error", [torch.AcceleratorError("CUDA error: an illegal memory access"), ValueError("fails on everything")],
    ids=["cuda-error", "same-failure-every-time"],
)  # fmt: skip
def test_an_engine_that_cannot_serve_turns_ready_503_and_the_process_exits_1(backend, error):
    settings = Settings(host="127.0.0.1", port=0)
    app = create_app(settings, backend)
    server = DrainingServer(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"), app.state.service)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    state = app.state.service
    wait_until(lambda: state.is_ready(), what="ready")
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    hook_forward(backend, lambda batch: error)  # every forward, the probe's too
    reply = httpx.post(url + "/score", json={"items": [item(1), item(2)]}, timeout=60)
    if isinstance(error, torch.AcceleratorError):
        assert reply.status_code == 503 and reply.json()["error"]["type"] == "unhealthy"
    else:
        assert reply.status_code == 500 and reply.json()["error"]["param"] == "items[0]"
    assert httpx.get(url + "/ready").status_code == 503 and httpx.get(url + "/health").status_code == 503
    thread.join(timeout=30)
    assert not thread.is_alive() and server.exit_code == 1
