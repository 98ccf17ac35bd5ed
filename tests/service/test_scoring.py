"""Shared prefixes in /score and /rank: items that share prompt and images (a GRPO group) get exactly
their solo scores, and the vlreward_shared_prefix_runs counter shows each prefix ran once (so these
tests fail if sharing silently stops)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.helpers import LiveServer, shape_image, uri

PROMPT = "Look at the picture carefully and describe the main shape and its colour. " * 3
RED, BLUE = uri(shape_image("red")), uri(shape_image("blue", "square"))


def solo(url: str, item: dict) -> float:
    return httpx.post(url + "/score", json={"items": [item]}, timeout=60).json()["scores"][0]


@pytest.fixture(scope="module")
def server(hf_backend):
    with LiveServer(hf_backend, max_batch_size=64) as live:
        yield live


def test_score_runs_each_shared_prefix_once_and_gives_every_item_its_solo_score(server):
    group_a = [
        {"prompt": PROMPT, "image": RED, "response": r} for r in ("A red circle.", "Blue.", "It is a red round shape.")
    ]
    group_b = [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a fruit."},
                      {"role": "assistant", "content": r}]}
        for r in ("Apple.", "A banana, yellow and long.")
    ]  # fmt: skip
    loners = [
        {"prompt": PROMPT, "image": BLUE, "response": "A red circle."},  # same text, another image
        {"prompt": PROMPT + "Answer in one word.", "image": RED, "response": "Red."},  # same image, another prompt
    ]
    items = [group_a[0], loners[0], group_b[0], group_a[1], loners[1], group_a[2], group_b[1]]
    expected = [solo(server.url, item) for item in items]
    before = server.metric("vlreward_shared_prefix_runs_total")
    response = httpx.post(server.url + "/score", json={"items": items}, timeout=120)
    assert response.status_code == 200, response.text
    assert server.metric("vlreward_shared_prefix_runs_total") - before == 2  # group_a and group_b, once each
    assert response.json()["scores"] == pytest.approx(expected, abs=1e-5)
    assert response.json()["usage"]["images"] == 5


def test_a_bad_item_in_a_group_is_located_and_its_group_still_shares(server):
    big = {"prompt": PROMPT, "image": RED, "response": "word " * 5000}  # over the token limit
    items = [{"prompt": PROMPT, "image": RED, "response": r} for r in ("Red.", "Round.")] + [big]
    before = server.metric("vlreward_shared_prefix_runs_total")
    nulls = httpx.post(server.url + "/score", json={"items": items, "on_error": "null"}, timeout=120).json()
    assert nulls["scores"][2] is None and nulls["errors"][0]["param"] == "items[2]"
    assert nulls["scores"][:2] == pytest.approx([solo(server.url, i) for i in items[:2]], abs=1e-5)
    assert server.metric("vlreward_shared_prefix_runs_total") - before == 1
    failed = httpx.post(server.url + "/score", json={"items": items}, timeout=120)
    assert failed.status_code == 413 and failed.json()["error"]["param"] == "items[2]"


def test_rank_runs_its_prompt_and_images_once(server):
    responses = ["A red circle.", "A blue square.", "Nothing."]
    before = server.metric("vlreward_shared_prefix_runs_total")
    ranked = httpx.post(server.url + "/rank", json={"prompt": PROMPT, "image": RED, "responses": responses}).json()
    assert server.metric("vlreward_shared_prefix_runs_total") - before == 1
    expected = [solo(server.url, {"prompt": PROMPT, "image": RED, "response": r}) for r in responses]
    assert ranked["scores"] == pytest.approx(expected, abs=1e-5)


def test_a_group_sent_as_separate_requests_shares_its_prefix_across_them(hf_backend, server):
    """A GRPO group as G one-item requests (verl and OpenRLHF send one sample per call): the batch that
    takes them runs their image and prompt once. The batch fills with exactly these five requests."""
    items = [{"prompt": PROMPT, "image": RED, "response": r} for r in ("A red circle.", "Blue.", "Round and red.")]
    items += [
        {"prompt": PROMPT, "image": BLUE, "response": "A red circle."},  # same text, another image: alone
        {"prompt": "Is it red?", "response": "Yes."},  # no image: nothing costly to share
    ]
    expected = [solo(server.url, item) for item in items]

    async def send_together(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            return await asyncio.gather(*(client.post("/score", json={"items": [item]}) for item in items))

    with LiveServer(hf_backend, max_batch_size=len(items), max_wait_ms=60_000) as batching:
        before = batching.metric("vlreward_shared_prefix_runs_total")
        responses = asyncio.run(send_together(batching.url))
        assert [r.status_code for r in responses] == [200] * len(items)
        assert batching.metric("vlreward_shared_prefix_runs_total") - before == 1  # the three red ones, once
    assert [r.json()["scores"][0] for r in responses] == pytest.approx(expected, abs=1e-5)
