"""POST /compare on scalar and process models: P(A > B) = sigmoid(s_a - s_b) of the scores /score gives,
antisymmetric, with the pair's side named in every error."""

from __future__ import annotations

import math

import httpx
import pytest

from tests.helpers import LiveServer, shape_image, uri
from vlreward.service.catalog import ModelSpec

RED = uri(shape_image("red"))


@pytest.fixture(scope="module")
def server(hf_backend, tiny_process):
    from vlreward.service.backends.transformers import TransformersBackend

    steps = TransformersBackend(tiny_process, dtype="float32", device="cpu")
    specs = [ModelSpec(name="scalar", default=True), ModelSpec(name="steps")]
    with LiveServer(specs=specs, backends={"scalar": hf_backend, "steps": steps}, max_items=8) as live:
        yield live


def post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=60)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


PAIRS = [
    {"prompt": "What colour is the circle?", "image": RED, "a": "It is red.", "b": "It is blue."},
    {"prompt": "Say hello.", "a": "Hello!", "b": "Goodbye."},
    {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": RED}},
                                               {"type": "text", "text": "Colour?"}]}],
     "a": "Red.", "b": "Green."},
]  # fmt: skip


def as_items(pair: dict) -> list[dict]:
    """The pair's two responses as /score items."""
    if "messages" in pair:
        return [{"messages": [*pair["messages"], {"role": "assistant", "content": pair[side]}]} for side in "ab"]
    shared = {k: v for k, v in pair.items() if k not in ("a", "b")}
    return [{**shared, "response": pair[side]} for side in "ab"]


def test_a_scalar_models_probability_is_the_sigmoid_of_its_score_difference(server):
    body = post(server, "/compare", {"pairs": PAIRS}).json()
    scores = post(server, "/score", {"items": [item for pair in PAIRS for item in as_items(pair)]}).json()["scores"]
    assert body["model"] == "scalar" and body["usage"]["images"] == 4
    for result, a, b in zip(body["results"], scores[0::2], scores[1::2], strict=True):
        assert result["prob_a"] == pytest.approx(sigmoid(a - b), abs=1e-6)
        assert result["verdict"] == ("a" if a > b else "b")
    swapped = [{**pair, "a": pair["b"], "b": pair["a"]} for pair in PAIRS]
    back = post(server, "/compare", {"pairs": swapped, "debias": False}).json()["results"]
    for forward, backward in zip(body["results"], back, strict=True):
        # antisymmetric up to the batch tolerance (a sample's score moves by ~1e-7 with its batch position)
        assert forward["prob_a"] + backward["prob_a"] == pytest.approx(1.0, abs=1e-6)


def test_a_process_model_compares_the_aggregates_of_its_step_lists(server):
    pair = {"prompt": "Which colour?", "image": RED, "a": ["I look.", "It is red."], "b": ["I look.", "It is blue."]}
    items = [{"prompt": pair["prompt"], "image": RED, "steps": pair[side]} for side in "ab"]
    for aggregate in ("min", "last"):
        got = post(server, "/compare", {"model": "steps", "pairs": [pair], "aggregate": aggregate}).json()
        a, b = post(server, "/score", {"model": "steps", "items": items, "aggregate": aggregate}).json()["scores"]
        assert got["results"][0]["prob_a"] == pytest.approx(sigmoid(a - b), abs=1e-6), aggregate


def test_the_same_response_twice_is_a_tie(server):
    result = post(server, "/compare", {"pairs": [{**PAIRS[0], "b": PAIRS[0]["a"]}]}).json()["results"][0]
    assert result == {"prob_a": 0.5, "verdict": "tie"}


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"pairs": []}, 422, "pairs"),
        ({"pairs": PAIRS[1:2], "extra": 1}, 422, "extra"),
        ({"pairs": [{"prompt": "x", "a": "y"}]}, 422, "pairs[0].b"),
        ({"pairs": PAIRS[1:2] * 5}, 413, "pairs"),  # 5 pairs are 10 items; the limit is 8
        ({"pairs": [PAIRS[1], {**PAIRS[0], "b": "fine", "image": "data:image/png;base64,AAAA"}]}, 400, "pairs[1].a"),
        ({"pairs": [PAIRS[1], {**PAIRS[1], "b": ["a step"]}]}, 400, "pairs[1].b.steps"),
        ({"model": "steps", "pairs": [{**PAIRS[1], "a": "one", "b": "two"}]}, 400, "pairs[0].a.response"),
        ({"model": "nope", "pairs": PAIRS[1:2]}, 404, "model"),
    ],
)  # fmt: skip
def test_what_compare_refuses_names_the_pair_and_side(server, body, status, param):
    response = post(server, "/compare", body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"].startswith(param), response.json()["error"]
