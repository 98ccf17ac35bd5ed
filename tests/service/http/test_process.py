"""A process model served: step scores for every step, aggregates, the prefix property, batch
invariance, every route, and what is refused — beside a scalar model in the same server."""

from __future__ import annotations

import math

import httpx
import pytest

from tests.helpers import LiveServer, shape_image, uri
from vlreward.service.catalog import ModelSpec
from vlreward.service.kinds import DEFAULT_STEP_TAG, sigmoid

STEPS = ["I look at the picture.", "The circle is red.", "Red is a warm colour.", "So the answer is red."]
PROMPT = "Which colour is the circle?"
IMAGE = uri(shape_image("red"))


@pytest.fixture(scope="module")
def process_backend(tiny_process):
    from vlreward.service.backends.transformers import TransformersBackend

    return TransformersBackend(tiny_process, dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def server(process_backend, hf_backend):
    specs = [ModelSpec(name="steps", default=True), ModelSpec(name="scalar")]
    with LiveServer(specs=specs, backends={"steps": process_backend, "scalar": hf_backend}, max_steps=6,
                    max_step_tokens=40) as live:  # fmt: skip
        yield live


def alone(backend, steps: list[str], prompt: str = PROMPT, image: str | None = IMAGE) -> list[float]:
    """The item's step logits in process, scored alone."""
    sample = {"prompt": prompt, "steps": steps} | ({"image": image} if image else {})
    return backend.score_sync([backend.format_request_sample(sample)])[0]


def score(server, items: list[dict], **fields) -> httpx.Response:
    return httpx.post(server.url + "/score", json={"items": items, **fields}, timeout=60)


def test_every_step_gets_its_score_and_the_item_the_checkpoints_aggregate(server, process_backend):
    body = score(server, [{"prompt": PROMPT, "image": IMAGE, "steps": STEPS}]).json()
    expected = [sigmoid(logit) for logit in alone(process_backend, STEPS)]
    assert body["model"] == "steps"
    assert body["details"][0]["step_scores"] == pytest.approx(expected, abs=1e-5)
    assert body["scores"][0] == pytest.approx(min(expected), abs=1e-5)  # the checkpoint's default: min
    for aggregate, of in {"min": min, "last": lambda s: s[-1], "mean": lambda s: sum(s) / len(s),
                          "product": math.prod}.items():  # fmt: skip
        chosen = score(server, [{"prompt": PROMPT, "image": IMAGE, "steps": STEPS}], aggregate=aggregate).json()
        assert chosen["scores"][0] == pytest.approx(of(expected), abs=1e-5), aggregate


def test_the_first_k_step_scores_equal_the_first_k_steps_sent_alone(server):
    items = [{"prompt": PROMPT, "image": IMAGE, "steps": STEPS[:k]} for k in range(1, len(STEPS) + 1)]
    details = score(server, items).json()["details"]
    full = details[-1]["step_scores"]
    for k, item in enumerate(details, start=1):
        assert item["step_scores"] == pytest.approx(full[:k], abs=1e-5), k


def test_an_item_scores_the_same_whatever_it_is_batched_with(server, process_backend):
    others = [{"prompt": "Describe it. " * (1 + 8 * i), "steps": STEPS[: 1 + i % 4]} for i in range(6)]
    items = [*others[:3], {"prompt": PROMPT, "image": IMAGE, "steps": STEPS}, *others[3:]]
    body = score(server, items).json()
    expected = [sigmoid(logit) for logit in alone(process_backend, STEPS)]
    assert body["details"][3]["step_scores"] == pytest.approx(expected, abs=1e-5)
    for other, got in zip(others, body["details"][:3] + body["details"][4:], strict=True):
        own = [sigmoid(x) for x in alone(process_backend, other["steps"], other["prompt"], None)]
        assert got["step_scores"] == pytest.approx(own, abs=1e-5)


def test_the_messages_form_rank_get_reward_and_classify_return_the_aggregate(server, process_backend):
    expected = [sigmoid(logit) for logit in alone(process_backend, STEPS, image=None)]
    messages = [{"role": "user", "content": PROMPT}, {"role": "assistant", "steps": STEPS}]
    by_messages = score(server, [{"messages": messages}]).json()
    assert by_messages["details"][0]["step_scores"] == pytest.approx(expected, abs=1e-5)
    worse = ["I look at the picture.", "The circle is blue."]
    rank = httpx.post(server.url + "/rank", json={"prompt": PROMPT, "responses": [worse, STEPS], "aggregate": "last"})
    ranked = rank.json()
    assert ranked["scores"][1] == pytest.approx(expected[-1], abs=1e-5)
    assert ranked["details"][1]["step_scores"] == pytest.approx(expected, abs=1e-5)
    assert ranked["ranking"] == sorted([0, 1], key=lambda i: -ranked["scores"][i])
    template = process_backend.processor.apply_chat_template(
        [{"role": "user", "content": PROMPT},
         {"role": "assistant", "content": "\n".join(step + DEFAULT_STEP_TAG for step in STEPS)}],
        tokenize=False,
    )  # fmt: skip
    reward = httpx.post(server.url + "/get_reward", json={"query": [template]}).json()
    assert reward["rewards"] == pytest.approx([min(expected)], abs=1e-5)
    classify = httpx.post(server.url + "/classify", json={"input": template, "aggregate": "mean"}).json()
    assert classify["data"][0]["probs"] == pytest.approx([sum(expected) / len(expected)], abs=1e-5)


@pytest.mark.parametrize(
    ("items", "fields", "status", "param"),
    [
        ([{"prompt": PROMPT, "steps": []}], {}, 422, None),
        ([{"prompt": PROMPT + DEFAULT_STEP_TAG, "steps": STEPS}], {}, 400, "items[0].prompt"),
        ([{"prompt": PROMPT, "steps": ["a", "b" + DEFAULT_STEP_TAG]}], {}, 400, "items[0].steps[1]"),
        ([{"prompt": PROMPT, "steps": STEPS}, {"prompt": PROMPT, "response": "Red."}], {}, 400, "items[1].response"),
        ([{"prompt": PROMPT, "steps": ["s"] * 7}], {}, 413, "items[0].steps"),
        ([{"prompt": PROMPT, "steps": ["fine", "word " * 60]}], {}, 413, "items[0].steps[1]"),
        ([{"prompt": PROMPT, "steps": STEPS}], {"model": "scalar"}, 400, "items[0].steps"),
        ([{"prompt": PROMPT, "response": "Red."}], {"model": "scalar", "aggregate": "min"}, 400, "aggregate"),
    ],
    ids=["empty steps", "tag in the prompt", "tag in a step", "response without the flag", "too many steps",
         "too long a step", "steps to a scalar model", "aggregate to a scalar model"],
)  # fmt: skip
def test_what_a_process_model_cannot_score_is_refused_naming_the_field(server, items, fields, status, param):
    response = score(server, items, **fields)
    assert response.status_code == status, response.text
    if param is not None:
        assert response.json()["error"]["param"] == param


def test_a_response_is_one_step_when_the_request_says_so(server, process_backend):
    body = score(server, [{"prompt": PROMPT, "response": "Red."}], response_as_step=True).json()
    assert body["details"][0]["step_scores"] == pytest.approx(
        [sigmoid(x) for x in alone(process_backend, ["Red."], image=None)], abs=1e-5
    )


def test_a_bad_item_gets_null_with_on_error_null_and_the_steps_are_counted(server):
    before = server.metric("vlreward_steps_sum", model="steps")
    items = [{"prompt": PROMPT, "steps": STEPS}, {"prompt": PROMPT + DEFAULT_STEP_TAG, "steps": STEPS}]
    body = score(server, items, on_error="null").json()
    assert body["scores"][1] is None and body["details"][1] is None and body["errors"][0]["index"] == 1
    assert body["details"][0]["step_scores"] and server.metric("vlreward_steps_sum", model="steps") == before + 4


def test_v1_models_and_info_show_the_process_kind(server):
    cards = {card["id"]: card["kind"] for card in httpx.get(server.url + "/v1/models").json()["data"]}
    assert cards == {"steps": "process", "scalar": "scalar"}
    info = httpx.get(server.url + "/info").json()
    assert info["kind"]["name"] == "process" and info["kind"]["details"] == ["step_scores"]
    assert info["process"] == {"step_tag": DEFAULT_STEP_TAG, "activation": "sigmoid", "aggregate": "min"}
    assert "process" not in info["models"]["scalar"]
    assert info["limits"]["max_steps"] == 6


def test_steps_in_any_form_to_a_scalar_model_are_refused_where_they_are(server):
    messages = [{"role": "user", "content": PROMPT}, {"role": "assistant", "steps": STEPS}]
    for route, body, param in (
        ("/score", {"items": [{"messages": messages}]}, "items[0].messages[1].steps"),
        ("/classify", {"messages": messages}, "messages[1].steps"),
        ("/rank", {"prompt": PROMPT, "responses": ["Red.", STEPS]}, "responses[1].steps"),
    ):
        response = httpx.post(server.url + route, json={"model": "scalar", **body})
        assert response.status_code == 400, (route, response.text)
        assert response.json()["error"]["param"] == param and "'scalar' is a scalar model" in response.text


def test_a_grpo_group_of_step_lists_runs_its_prompt_and_image_once_and_scores_as_alone(server, process_backend):
    group = [STEPS[: 1 + i % 4] + [f"Attempt {i}."] for i in range(8)]
    before = server.metric("vlreward_shared_prefix_runs_total", model="steps")
    body = score(server, [{"prompt": PROMPT, "image": IMAGE, "steps": steps} for steps in group]).json()
    assert server.metric("vlreward_shared_prefix_runs_total", model="steps") > before
    for steps, got in zip(group, body["details"], strict=True):
        assert got["step_scores"] == pytest.approx([sigmoid(x) for x in alone(process_backend, steps)], abs=1e-5)
    ranked = httpx.post(server.url + "/rank", json={"prompt": PROMPT, "image": IMAGE, "responses": group}).json()
    assert ranked["scores"] == pytest.approx(body["scores"], abs=1e-5)


def test_the_verl_and_trl_adapters_split_a_rollout_into_steps_and_return_the_aggregate(server, process_backend):
    import asyncio
    import json

    from vlreward.adapters.trl import VLRewardFunction
    from vlreward.adapters.verl import compute_score

    rollout = "\n\n".join(STEPS)
    expected = [sigmoid(x) for x in alone(process_backend, STEPS, image=None)]
    verl = asyncio.run(
        compute_score(solution_str=rollout, extra_info={"question": PROMPT}, base_url=server.url, step_separator="\n\n")
    )
    assert verl["score"] == pytest.approx(min(expected), abs=1e-5) and verl["vlreward_scored"] == 1.0
    assert json.loads(verl["vlreward_step_scores"]) == pytest.approx(expected, abs=1e-5)
    trl = VLRewardFunction(server.url, step_separator="\n\n")
    conversation = [{"role": "user", "content": PROMPT}]
    completion = [{"role": "assistant", "content": rollout}]
    assert trl(prompts=[conversation], completions=[completion]) == pytest.approx([min(expected)], abs=1e-5)
