"""An ensemble of two served reward models answers /score and /rank as one model: each score is the weighted
sum of its members' z-scores and its disagreement their weighted standard deviation, recomputed here from the
members served alone and the statistics /info reports; what it cannot do is refused naming the field."""

from __future__ import annotations

import shutil

import httpx
import pytest

from tests.helpers import LiveServer, check_ensemble_formula, shape_image, uri
from vlreward.service.catalog import CatalogError, ModelSpec, check_specs
from vlreward.service.reference import statistics_of, write_reference

RED = uri(shape_image("red"))
ITEMS = [
    {"prompt": "What colour is the circle?", "image": RED, "response": "It is red."},
    {"prompt": "What colour is the circle?", "image": RED, "response": "It is blue."},
    {"prompt": "Say hello.", "response": "Hello!"},
]
WEIGHTS = {"helpful": 0.7, "safety": 0.3}


@pytest.fixture(scope="module")
def server(tiny_reward, other_reward, tmp_path_factory):
    from vlreward.service.backends.transformers import TransformersBackend

    root = tmp_path_factory.mktemp("ensemble")
    backends = {}
    for name, checkpoint, scores in (("helpful", tiny_reward, [-1.0, 0.5, 2.0]), ("safety", other_reward, [3.0, 4.5])):
        copy = shutil.copytree(checkpoint, root / name)
        write_reference(copy, statistics_of(scores, name))
        backends[name] = TransformersBackend(copy, dtype="float32", device="cpu")
    specs = [ModelSpec(name="helpful", default=True), ModelSpec(name="safety"),
             ModelSpec(name="guarded", ensemble=WEIGHTS)]  # fmt: skip
    with LiveServer(specs=specs, backends=backends) as live:
        yield live


def post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=120)


def test_the_ensemble_score_is_the_weighted_sum_of_member_zscores_and_disagreement_their_spread(server):
    body = check_ensemble_formula(server.url, "guarded", WEIGHTS, ITEMS)
    assert server.metric("vlreward_ensemble_disagreement_count", model="guarded") >= len(ITEMS)
    ranked = post(server, "/rank", {"model": "guarded", "prompt": ITEMS[0]["prompt"], "image": RED,
                                    "responses": ["It is red.", "It is blue."]}).json()  # fmt: skip
    assert ranked["scores"] == pytest.approx(body["scores"][:2], abs=1e-5)
    assert ranked["best"] == (0 if body["scores"][0] >= body["scores"][1] else 1)
    models = httpx.get(server.url + "/v1/models").json()["data"]
    assert {m["id"]: m["kind"] for m in models}["guarded"] == "ensemble"


def test_a_bad_item_is_located_and_what_an_ensemble_cannot_do_is_refused(server):
    bad = {"prompt": "x", "image": "data:image/png;base64,AAAA", "response": "y"}
    nulls = post(server, "/score", {"model": "guarded", "items": [ITEMS[2], bad], "on_error": "null"}).json()
    assert nulls["scores"][0] is not None and nulls["scores"][1] is None
    assert [e["index"] for e in nulls["errors"]] == [1] and nulls["details"][1] is None
    failed = post(server, "/score", {"model": "guarded", "items": [ITEMS[2], bad]})
    assert failed.status_code == 400 and failed.json()["error"]["param"].startswith("items[1]")
    raw = post(server, "/score", {"model": "guarded", "items": ITEMS, "normalize": "none"})
    assert raw.status_code == 400 and raw.json()["error"]["param"] == "normalize"
    compare = post(server, "/compare", {"model": "guarded", "pairs": [{"prompt": "p", "a": "x", "b": "y"}]})
    assert compare.status_code == 400 and compare.json()["error"]["param"] == "model"


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        ([ModelSpec(name="a", source="x"), ModelSpec(name="e", ensemble={"a": 1.0, "b": 1.0})], "'b' is not a served"),
        ([ModelSpec(name="a", source="x"), ModelSpec(name="e", ensemble={"a": 1.0})], "at least two members"),
        ([ModelSpec(name="a", source="x"), ModelSpec(name="b", source="y"),
          ModelSpec(name="e", ensemble={"a": 1.0, "b": 0.0})], "must be a number > 0"),
        ([ModelSpec(name="a", source="x"), ModelSpec(name="b", source="y"),
          ModelSpec(name="e", ensemble={"a": 1.0, "b": 1.0}, default=True)], "cannot be the default"),
    ],
)  # fmt: skip
def test_an_ensemble_that_cannot_be_served_is_refused_at_start_up(specs, message):
    with pytest.raises(CatalogError, match=message):
        check_specs(specs)


def test_an_ensemble_whose_member_has_no_reference_statistics_stops_the_server(tiny_reward, other_reward):
    from vlreward.service.backends.transformers import TransformersBackend

    backends = {"a": TransformersBackend(tiny_reward, dtype="float32", device="cpu"),
                "b": TransformersBackend(other_reward, dtype="float32", device="cpu")}  # fmt: skip
    specs = [ModelSpec(name="a"), ModelSpec(name="b"), ModelSpec(name="e", ensemble={"a": 1.0, "b": 1.0})]
    with pytest.raises(Exception, match="has no reference statistics"), LiveServer(specs=specs, backends=backends):
        pass


def test_verls_reward_function_returns_the_ensembles_components_for_its_metrics(server):
    """verl logs every extra key of the reward function's answer: the disagreement and each member's z-score."""
    import asyncio

    from vlreward.adapters.verl import compute_score

    body = post(server, "/score", {"model": "guarded", "items": ITEMS[2:]}).json()
    answer = asyncio.run(
        compute_score(solution_str=ITEMS[2]["response"], extra_info={"question": ITEMS[2]["prompt"]},
                      base_url=server.url, model="guarded")
    )  # fmt: skip
    assert answer["score"] == pytest.approx(body["scores"][0], abs=1e-6)
    assert answer["vlreward_disagreement"] == pytest.approx(body["details"][0]["disagreement"], abs=1e-6)
    assert {k: v for k, v in answer.items() if k.startswith("vlreward_member_")} == pytest.approx(
        {f"vlreward_member_{m}": z for m, z in body["details"][0]["members"].items()}, abs=1e-6
    )
    z = asyncio.run(compute_score(solution_str="Hello!", extra_info={"question": "Say hello."}, base_url=server.url,
                                  model="helpful", normalize="zscore"))  # fmt: skip
    assert z["score"] == pytest.approx(body["details"][0]["members"]["helpful"], abs=1e-6)
