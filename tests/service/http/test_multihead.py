"""A multi-head model answers every head in one forward pass: ``scores`` holds the head a request names (else
the default), ``details[i].heads`` every head's, each equal to the one-head model whose head it carries served
alone; every head has its own reference statistics and temperature; an ensemble of its heads asks it once."""

from __future__ import annotations

import math
import shutil

import httpx
import pytest

from tests.helpers import LiveServer, shape_image, uri
from vlreward.service.catalog import ModelSpec
from vlreward.service.reference import Reference, statistics_of, write_reference

RED = uri(shape_image("red"))
ITEMS = [
    {"prompt": "What colour is the circle?", "image": RED, "response": "It is red."},
    {"prompt": "What colour is the circle?", "image": RED, "response": "It is blue."},
    {"prompt": "Say hello.", "response": "Hello!"},
]
HEADS = ("helpful", "safety")
WEIGHTS = {"multi:helpful": 0.7, "multi:safety": 0.3}
SEPARATE = {"helpful": 0.7, "safety": 0.3}


@pytest.fixture(scope="module")
def multihead(tiny_multihead, tmp_path_factory):
    """Heads `helpful` (tiny_reward's head) and `safety` (other_reward's), each head with its own statistics."""
    model = shutil.copytree(tiny_multihead, tmp_path_factory.mktemp("multihead") / "multi")
    stats = {"helpful": statistics_of([-1.0, 0.5, 2.0], "h"), "safety": statistics_of([3.0, 4.5], "s")}
    stats["safety"] = Reference(**(stats["safety"].__dict__ | {"temperature": 2.5}))
    write_reference(model, stats)
    return model, stats


@pytest.fixture(scope="module")
def server(multihead, tiny_reward, other_reward, tmp_path_factory):
    from vlreward.service.backends.transformers import TransformersBackend

    model, stats = multihead
    root = tmp_path_factory.mktemp("separate")
    backends = {"multi": TransformersBackend(model, dtype="float32", device="cpu")}
    for name, checkpoint in (("helpful", tiny_reward), ("safety", other_reward)):
        copy = shutil.copytree(checkpoint, root / name)
        write_reference(copy, stats[name])
        backends[name] = TransformersBackend(copy, dtype="float32", device="cpu")
    specs = [ModelSpec(name="multi", default=True), ModelSpec(name="helpful"), ModelSpec(name="safety"),
             ModelSpec(name="heads", ensemble=WEIGHTS), ModelSpec(name="separate", ensemble=SEPARATE)]  # fmt: skip
    with LiveServer(specs=specs, backends=backends) as live:
        yield live


def post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=120)


def test_every_head_in_one_pass_equals_the_model_served_alone(server):
    alone = {h: post(server, "/score", {"model": h, "items": ITEMS}).json()["scores"] for h in HEADS}
    body = post(server, "/score", {"model": "multi", "items": ITEMS}).json()
    assert body["scores"] == pytest.approx(alone["helpful"], abs=1e-5)  # the default head
    for i, detail in enumerate(body["details"]):
        assert detail["heads"] == pytest.approx({h: alone[h][i] for h in HEADS}, abs=1e-5)
    safety = post(server, "/score", {"model": "multi", "items": ITEMS, "head": "safety"}).json()
    assert safety["scores"] == pytest.approx(alone["safety"], abs=1e-5)
    ranked = post(server, "/rank", {"model": "multi", "head": "safety", "prompt": ITEMS[0]["prompt"], "image": RED,
                                    "responses": ["It is red.", "It is blue."]}).json()  # fmt: skip
    assert ranked["scores"] == pytest.approx(alone["safety"][:2], abs=1e-5)
    info = httpx.get(server.url + "/info").json()["models"]["multi"]
    assert info["heads"]["names"] == list(HEADS) and info["heads"]["default"] == "helpful"
    assert info["kind"]["name"] == "scalar"


def test_each_head_normalises_and_compares_on_its_own_statistics(server, multihead):
    _, stats = multihead
    info = httpx.get(server.url + "/info").json()["models"]["multi"]["heads"]["references"]
    raw = post(server, "/score", {"model": "multi", "items": ITEMS}).json()
    for head in HEADS:
        assert info[head]["version"] == stats[head].version
        body = post(server, "/score", {"model": "multi", "items": ITEMS, "head": head, "normalize": "zscore"}).json()
        assert body["reference_version"] == stats[head].version
        expected = [(d["heads"][head] - info[head]["mean"]) / info[head]["std"] for d in raw["details"]]
        assert body["scores"] == pytest.approx(expected, abs=1e-6)
        assert [d["heads"][head] for d in body["details"]] == pytest.approx(expected, abs=1e-6)
    pair = {"prompt": ITEMS[0]["prompt"], "image": RED, "a": "It is red.", "b": "It is blue."}
    compared = post(server, "/compare", {"model": "multi", "head": "safety", "pairs": [pair]}).json()
    a, b = (d["heads"]["safety"] for d in raw["details"][:2])
    assert compared["results"][0]["prob_a"] == pytest.approx(1 / (1 + math.exp(-(a - b) / 2.5)), abs=1e-6)


def test_an_ensemble_of_heads_asks_the_model_once_and_equals_the_ensemble_of_separate_models(server):
    before = server.metric("vlreward_samples_total", model="multi", endpoint="/score")
    heads = post(server, "/score", {"model": "heads", "items": ITEMS}).json()
    assert server.metric("vlreward_samples_total", model="multi", endpoint="/score") - before == len(ITEMS)
    separate = post(server, "/score", {"model": "separate", "items": ITEMS}).json()
    assert heads["scores"] == pytest.approx(separate["scores"], abs=1e-5)
    for mine, theirs in zip(heads["details"], separate["details"], strict=True):
        assert mine["disagreement"] == pytest.approx(theirs["disagreement"], abs=1e-5)
        assert [mine["members"][f"multi:{h}"] for h in HEADS] == pytest.approx(
            [theirs["members"][h] for h in HEADS], abs=1e-5
        )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "helpful", "items": ITEMS[2:], "head": "safety"}, "head"),  # a one-head model
        ({"model": "multi", "items": ITEMS[2:], "head": "correct"}, "head"),  # no such head
        ({"model": "heads", "items": ITEMS[2:], "head": "safety"}, "head"),  # an ensemble
    ],
)
def test_a_head_the_model_does_not_have_is_a_400_naming_the_field(server, body, param):
    response = post(server, "/score", body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_an_ensemble_member_naming_a_head_its_model_lacks_stops_the_server(multihead):
    from vlreward.service.backends.transformers import TransformersBackend

    model, _ = multihead
    backends = {"multi": TransformersBackend(model, dtype="float32", device="cpu")}
    specs = [ModelSpec(name="multi"), ModelSpec(name="e", ensemble={"multi:helpful": 1.0, "multi:correct": 1.0})]
    stopped = pytest.raises(Exception, match="'multi:correct': model 'multi' has heads helpful, safety")
    with stopped, LiveServer(specs=specs, backends=backends):
        pass


def test_verls_reward_function_passes_the_head_and_returns_every_heads_score(server):
    import asyncio

    from vlreward.adapters.verl import compute_score

    body = post(server, "/score", {"model": "multi", "items": ITEMS[2:]}).json()
    answer = asyncio.run(
        compute_score(solution_str=ITEMS[2]["response"], extra_info={"question": ITEMS[2]["prompt"]},
                      base_url=server.url, model="multi", head="safety")
    )  # fmt: skip
    assert answer["score"] == pytest.approx(body["details"][0]["heads"]["safety"], abs=1e-6)
    assert {k: v for k, v in answer.items() if k.startswith("vlreward_head_")} == pytest.approx(
        {f"vlreward_head_{h}": v for h, v in body["details"][0]["heads"].items()}, abs=1e-6
    )
