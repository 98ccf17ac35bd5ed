"""LoRA reward adapters on one base (transformers backend): each adapter served as a model of its own scores
what the merged-weights model scores (1e-4, float32), the base's own scores do not move, a batch may mix
adapters, concurrent requests to different adapters each get their own model's scores, and the adapters'
ensemble and a multi-head model on the same server answer as their formula and the models alone say.
(The same on the vLLM backend: tests/service/backends/test_vllm.py.)"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.helpers import LiveServer, check_ensemble_formula, shape_image, uri
from vlreward.service.catalog import CatalogError, ModelSpec, check_specs
from vlreward.service.model.lora import AdapterError
from vlreward.training.lora import merge_adapter, random_adapter, stamp_adapter_probe

RED = uri(shape_image("red"))
ITEMS = [
    {"prompt": "What colour is the circle?", "image": RED, "response": "It is red."},
    {"prompt": "What colour is the circle?", "image": RED, "response": "It is blue."},
    {"prompt": "Say hello.", "response": "Hello!"},
]
TOLERANCE = 1e-4
WEIGHTS = {"helpful": 0.7, "safety": 0.3}


@pytest.fixture(scope="module")
def server(tiny_reward, tiny_multihead, lora_adapters):
    """The base, its two adapters, each adapter's merged model, the multi-head model and an ensemble of the two
    adapters, on one server."""
    from vlreward.service.backends.transformers import TransformersBackend

    backends = {"rm": TransformersBackend(tiny_reward, dtype="float32", device="cpu"),
                "multi": TransformersBackend(tiny_multihead, dtype="float32", device="cpu")}  # fmt: skip
    specs = [ModelSpec(name="rm", default=True), ModelSpec(name="multi"), ModelSpec(name="pair", ensemble=WEIGHTS)]
    for name, (adapter, merged) in lora_adapters.items():
        specs.append(ModelSpec(name=name, source=str(adapter), settings={"base": "rm"}))
        specs.append(ModelSpec(name=f"{name}-merged"))
        backends[f"{name}-merged"] = TransformersBackend(merged, dtype="float32", device="cpu")
    with LiveServer(specs=specs, backends=backends) as live:
        yield live


def post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=120)


def test_an_adapter_scores_what_its_merged_model_scores_and_the_base_does_not_move(server, hf_backend):
    from vlreward.service.prepare import prepare_request_sample

    for name in ("helpful", "safety"):
        got = post(server, "/score", {"model": name, "items": ITEMS}).json()["scores"]
        merged = post(server, "/score", {"model": f"{name}-merged", "items": ITEMS}).json()["scores"]
        assert got == pytest.approx(merged, abs=TOLERANCE)
        ranked = post(server, "/rank", {"model": name, "prompt": ITEMS[0]["prompt"], "image": RED,
                                        "responses": ["It is red.", "It is blue."]}).json()  # fmt: skip
        assert ranked["scores"] == pytest.approx(merged[:2], abs=TOLERANCE)  # the shared prefix runs the adapter
    base = post(server, "/score", {"model": "rm", "items": ITEMS}).json()["scores"]
    alone = hf_backend.score_sync([prepare_request_sample(item, hf_backend.processor) for item in ITEMS])
    assert base == pytest.approx(alone, abs=1e-5)
    info = httpx.get(server.url + "/info").json()["models"]["helpful"]
    assert info["adapter"]["path"].endswith("helpful") and info["ready"]


def test_the_multi_head_model_and_the_adapters_ensemble_beside_them_answer_as_served_alone(server, hf_backend):
    from vlreward.service.prepare import prepare_request_sample

    multi = post(server, "/score", {"model": "multi", "items": ITEMS}).json()["scores"]
    alone = hf_backend.score_sync([prepare_request_sample(item, hf_backend.processor) for item in ITEMS])
    assert multi == pytest.approx(alone, abs=1e-5)  # its default head is tiny_reward's
    check_ensemble_formula(server.url, "pair", WEIGHTS, ITEMS)


def test_concurrent_requests_to_different_adapters_each_get_their_own_scores(server):
    expected = {name: post(server, "/score", {"model": name, "items": ITEMS}).json()["scores"]
                for name in ("rm", "helpful", "safety")}  # fmt: skip
    calls = [name for name in expected for _ in range(6)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(lambda name: (name, post(server, "/score", {"model": name, "items": ITEMS})), calls))
    for name, response in answers:
        assert response.json()["scores"] == pytest.approx(expected[name], abs=1e-5), name


def test_one_batch_mixes_adapters_and_each_row_gets_its_own(tiny_reward, lora_adapters):
    from vlreward.service.backends.adapter import AdapterBackend
    from vlreward.service.backends.transformers import TransformersBackend
    from vlreward.service.prepare import prepare_request_sample

    base = TransformersBackend(tiny_reward, dtype="float32", device="cpu")
    views = [AdapterBackend(base, path, name) for name, (path, _) in lora_adapters.items()]
    formatted = [prepare_request_sample(item, base.processor) for item in ITEMS]
    alone = [view.score_sync(formatted) for view in views] + [base.score_sync(formatted)]
    rows = [(k, i) for i in range(len(ITEMS)) for k in range(3)]  # every item under both adapters and the base
    encoded = [(views[k].encode if k < 2 else base.encode)(formatted[i]) for k, i in rows]
    mixed = base.model.score_batch(encoded)
    assert mixed == pytest.approx([alone[k][i] for k, i in rows], abs=1e-5)


def test_a_process_models_adapter_reads_its_own_head_at_every_step_as_its_merged_model_does(tiny_process, tmp_path):
    """LoRA process models are served here (vLLM's token_classify adapters cannot carry a head): the adapter is
    a process model (its base's kind and step tag), and its step scores equal the merged model's."""
    from vlreward.service.backends.transformers import TransformersBackend

    adapter = random_adapter(tiny_process, tmp_path / "steps-adapter", seed=7)
    merged = merge_adapter(tiny_process, adapter, tmp_path / "steps-merged")
    stamp_adapter_probe(tiny_process, adapter)
    backends = {name: TransformersBackend(path, dtype="float32", device="cpu")
                for name, path in (("prm", tiny_process), ("merged", merged))}  # fmt: skip
    specs = [ModelSpec(name="prm", default=True), ModelSpec(name="merged"),
             ModelSpec(name="adapter", source=str(adapter), settings={"base": "prm"})]  # fmt: skip
    item = {"prompt": "What colour is the circle?", "image": RED, "steps": ["I look.", "It is red.", "So: red."]}
    with LiveServer(specs=specs, backends=backends) as live:
        got = {name: post(live, "/score", {"model": name, "items": [item]}).json() for name in ("adapter", "merged")}
        assert httpx.get(live.url + "/info").json()["models"]["adapter"]["kind"]["name"] == "process"
    steps = {name: body["details"][0]["step_scores"] for name, body in got.items()}
    assert len(steps["adapter"]) == 3 and steps["adapter"] == pytest.approx(steps["merged"], abs=TOLERANCE)
    assert got["adapter"]["scores"] == pytest.approx(got["merged"]["scores"], abs=TOLERANCE)


def test_what_cannot_be_an_adapter_is_refused(tiny_multihead, lora_adapters, tmp_path):
    from vlreward.service.backends.adapter import AdapterBackend
    from vlreward.service.backends.transformers import TransformersBackend

    path, _ = lora_adapters["helpful"]
    with pytest.raises(AdapterError, match="one-head scalar or process"):
        AdapterBackend(TransformersBackend(tiny_multihead, dtype="float32", device="cpu"), path, "x")
    specs = [ModelSpec(name="a", source=str(path), settings={"base": "missing"})]
    with pytest.raises(CatalogError, match="its base 'missing' is not a served model"):
        check_specs(specs)
