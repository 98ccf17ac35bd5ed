"""One server, several models: routing by `model`, the default model, /v1/models, /info, readiness, the
shared queue bound and per-model metrics (two transformers models in-process; the two-backend server is
in tests/service/backends/test_vllm.py)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.helpers import LiveServer, another_request_on_the_way, copy_with_tensors, shape_image, uri, wait_until
from vlreward.service.catalog import ModelSpec
from vlreward.service.media import MediaPolicy
from vlreward.service.model.checkpoint import HEAD_WEIGHT
from vlreward.service.prepare import prepare_sample
from vlreward.service.schemas import Sample

ITEMS = [
    {"prompt": "Which colour is it?", "response": "Red.", "image": uri(shape_image("red"))},
    {"prompt": "Which shape?", "response": "A square.", "image": uri(shape_image("blue", "square"))},
    {"prompt": "Say something.", "response": "Something."},
]


@pytest.fixture(scope="module")
def other_backend(other_reward):
    from vlreward.service.backends.transformers import TransformersBackend

    return TransformersBackend(other_reward, dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def two_models(hf_backend, other_backend):
    specs = [ModelSpec(name="helpful", source=str(hf_backend.model_dir)),
             ModelSpec(name="safety", source=str(other_backend.model_dir), default=True)]  # fmt: skip
    with LiveServer(specs=specs, backends={"helpful": hf_backend, "safety": other_backend}) as live:
        yield live


def alone(backend, items: list[dict]) -> list[float]:
    formatted = [prepare_sample(Sample.model_validate(item), backend.processor, MediaPolicy()) for item in items]
    return backend.score_sync(formatted)


def test_each_request_is_scored_by_the_model_it_names_exactly_as_that_model_alone(
    two_models, hf_backend, other_backend
):
    for name, backend in (("helpful", hf_backend), ("safety", other_backend)):
        body = httpx.post(two_models.url + "/score", json={"model": name, "items": ITEMS}, timeout=60).json()
        assert body["model"] == name and "details" not in body
        assert body["scores"] == pytest.approx(alone(backend, ITEMS), abs=1e-5)
    helpful = alone(hf_backend, ITEMS)
    assert max(abs(a - b) for a, b in zip(helpful, alone(other_backend, ITEMS), strict=True)) > 0.1  # they differ


def test_every_scoring_route_takes_model_and_without_it_goes_to_the_default(two_models, other_backend, hf_backend):
    url = two_models.url
    expected = alone(other_backend, ITEMS[2:])[0]
    assert httpx.post(url + "/score", json={"items": ITEMS[2:]}).json()["model"] == "safety"
    rank = httpx.post(url + "/rank", json={"model": "helpful", "prompt": "Say something.", "responses": ["Something."]})
    assert rank.json()["model"] == "helpful" and rank.json()["scores"] == pytest.approx(alone(hf_backend, ITEMS[2:]))
    template = other_backend.processor.apply_chat_template(
        [{"role": "user", "content": "Say something."}, {"role": "assistant", "content": "Something."}], tokenize=False
    )
    reward = httpx.post(url + "/get_reward", json={"model": "safety", "query": [template]}).json()
    assert reward["rewards"] == pytest.approx([expected], abs=1e-5)
    classify = httpx.post(url + "/classify", json={"model": "safety", "input": template}).json()
    assert classify["model"] == "safety" and classify["data"][0]["probs"] == pytest.approx([expected], abs=1e-5)


def test_an_unknown_model_is_a_404_listing_the_served_names(two_models):
    for route, body in (("/score", {"items": ITEMS[:1]}), ("/rank", {"prompt": "p", "responses": ["r"]}),
                        ("/get_reward", {"query": ["q"]}), ("/classify", {"input": "q"})):  # fmt: skip
        response = httpx.post(two_models.url + route, json={"model": "helpfull", **body})
        assert response.status_code == 404, route
        error = response.json()["error"]
        assert error["type"] == "not_found" and error["param"] == "model"
        assert "'helpfull'" in error["message"] and "'helpful', 'safety'" in error["message"]


def test_v1_models_and_info_list_every_model_with_its_kind(two_models, hf_backend):
    listed = httpx.get(two_models.url + "/v1/models").json()
    assert listed["object"] == "list"
    cards = {card["id"]: card for card in listed["data"]}
    assert list(cards) == ["helpful", "safety"]
    assert all(
        c["object"] == "model" and c["owned_by"] and c["kind"] == "scalar" and c["ready"] for c in cards.values()
    )
    assert (cards["helpful"]["default"], cards["safety"]["default"]) == (False, True)
    info = httpx.get(two_models.url + "/info").json()
    assert info["default_model"] == info["model"] == "safety" and set(info["models"]) == {"helpful", "safety"}
    helpful = info["models"]["helpful"]
    assert helpful["kind"]["name"] == "scalar" and helpful["checkpoint_hash"] == hf_backend.info()["checkpoint_hash"]
    assert helpful["limits"]["max_tokens"] == info["limits"]["max_tokens"]
    assert info["checkpoint_hash"] == info["models"]["safety"]["checkpoint_hash"] != helpful["checkpoint_hash"]


def test_metrics_carry_each_model(two_models):
    httpx.post(two_models.url + "/score", json={"model": "helpful", "items": ITEMS}, timeout=60)
    before = two_models.metric("vlreward_samples_total", model="safety", endpoint="/score")
    httpx.post(two_models.url + "/score", json={"model": "safety", "items": ITEMS[:2]}, timeout=60)
    assert two_models.metric("vlreward_samples_total", model="safety", endpoint="/score") == before + 2
    assert (
        two_models.metric("vlreward_ready", model="helpful") == two_models.metric("vlreward_ready", model="safety") == 1
    )
    assert two_models.metric("vlreward_requests_total", model="helpful", endpoint="/score", status="200") >= 1
    assert two_models.metric("vlreward_model_info", model="safety", kind="scalar", backend="transformers") == 1
    httpx.post(two_models.url + "/score", json={"model": "nope", "items": ITEMS[:1]})
    assert two_models.metric("vlreward_requests_total", model="", endpoint="/score", status="404") >= 1


def test_with_one_model_any_model_name_is_that_model(hf_backend):
    with LiveServer(hf_backend) as live:
        for name in ("whatever-the-client-calls-it", None):
            body = httpx.post(live.url + "/score", json={"model": name, "items": ITEMS[2:]}).json()
            assert body["scores"] == pytest.approx(alone(hf_backend, ITEMS[2:]), abs=1e-5)
        assert httpx.get(live.url + "/v1/models").json()["data"][0]["id"] == hf_backend.info()["model"]


def test_a_model_whose_probe_fails_keeps_the_server_unready_and_names_it(hf_backend, tiny_reward, tmp_path):
    from vlreward.service.backends.transformers import TransformersBackend

    shifted = copy_with_tensors(tiny_reward, tmp_path / "shifted", lambda t: t[HEAD_WEIGHT].mul_(1.5))
    specs = [ModelSpec(name="good", source=str(tiny_reward)), ModelSpec(name="broken", source=str(shifted))]
    backends = {"good": hf_backend, "broken": TransformersBackend(shifted)}
    with (
        pytest.raises(RuntimeError, match="start-up of model 'broken' failed: probe scored"),
        LiveServer(specs=specs, backends=backends),
    ):
        pass


def test_the_queue_bound_covers_every_model_together(hf_backend, other_backend):
    specs = [ModelSpec(name="a"), ModelSpec(name="b")]
    settings = {"max_queue": 5, "max_wait_ms": 1500, "max_batch_size": 64}
    with LiveServer(specs=specs, backends={"a": hf_backend, "b": other_backend}, **settings) as live:
        with ThreadPoolExecutor(1) as pool, another_request_on_the_way(live.state.model("a")):
            first = pool.submit(httpx.post, live.url + "/score", json={"model": "a", "items": ITEMS}, timeout=60)
            wait_until(lambda: live.state.queued() == 3, what="model a's samples waiting for their batch")
            refused = httpx.post(live.url + "/score", json={"model": "b", "items": ITEMS}, timeout=60)
            assert refused.status_code == 429 and "limit 5" in refused.json()["error"]["message"]
            assert first.result().status_code == 200
        assert live.metric("vlreward_rejected_total", model="b", reason="overloaded") == 1
        assert httpx.post(live.url + "/score", json={"model": "b", "items": ITEMS}, timeout=60).status_code == 200


def test_the_client_names_its_model_and_lists_the_served_ones(two_models, hf_backend):
    from vlreward.client import InvalidRequest, RewardClient

    with RewardClient(two_models.url, model="helpful") as client:
        assert client.models() == ["helpful", "safety"]
        scored = client.score(ITEMS)
        assert scored.model == "helpful" and scored.scores == pytest.approx(alone(hf_backend, ITEMS), abs=1e-5)
        assert client.rank("Say something.", ["Something."]).model == "helpful"
    with RewardClient(two_models.url, model="nope") as client, pytest.raises(InvalidRequest) as caught:
        client.score(ITEMS[:1])
    assert caught.value.status == 404 and caught.value.param == "model"


def test_the_verl_and_trl_adapters_name_their_model(two_models, hf_backend):
    import asyncio

    from vlreward.adapters.trl import VLRewardFunction
    from vlreward.adapters.verl import compute_score

    expected = alone(hf_backend, ITEMS[2:])[0]
    verl = asyncio.run(
        compute_score(solution_str="Something.", extra_info={"question": "Say something."}, base_url=two_models.url,
                      model="helpful")
    )  # fmt: skip
    assert verl["score"] == pytest.approx(expected, abs=1e-5)
    trl = VLRewardFunction(two_models.url, model="helpful")
    assert trl(prompts=["Say something."], completions=["Something."]) == pytest.approx([expected], abs=1e-5)
