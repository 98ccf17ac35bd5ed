"""A generative judge through the HTTP routes: its pointwise score on /score, /rank, /get_reward and
/classify; its pairwise verdict on /compare, debiased exactly antisymmetrically, deterministic and batch-
invariant; and the errors a judge gives for what it cannot answer."""

from __future__ import annotations

import httpx
import pytest

from tests.helpers import LiveServer, shape_image, uri
from vlreward.service.catalog import ModelSpec
from vlreward.service.judge import debiased

RED, BLUE = uri(shape_image("red")), uri(shape_image("blue", "square"))
PAIRS = [
    {"prompt": "What colour is the circle?", "image": RED, "a": "It is red.", "b": "It is blue."},
    {"prompt": "Say hello.", "a": "Hello!", "b": "Goodbye, and good luck with everything."},
    {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": BLUE}},
                                               {"type": "text", "text": "Which shape?"}]}],
     "a": "A square.", "b": "A circle."},
]  # fmt: skip


@pytest.fixture(scope="module")
def compares_only(published_judge):
    """A published judge served with a built-in declaration that only compares (the `judge` setting)."""
    from vlreward.service.backends.transformers import TransformersBackend

    return TransformersBackend(published_judge, dtype="float32", device="cpu", judge="unifiedreward-qwen")


@pytest.fixture(scope="module")
def server(judge_backend, compares_only, hf_backend):
    specs = [ModelSpec(name="judge", default=True), ModelSpec(name="pairwise"), ModelSpec(name="scalar")]
    backends = {"judge": judge_backend, "pairwise": compares_only, "scalar": hf_backend}
    with LiveServer(specs=specs, backends=backends, max_items=8) as live:
        yield live


def post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=120)


def alone(backend, sample: dict) -> list[float]:
    """The judge's verdict logits for one sample, scored alone in process."""
    return backend.score_sync([backend.format_request_sample(sample)])[0]


def pair_alone(backend, pair: dict, swap: bool = False) -> float:
    """P(first better) of one pair asked alone in process (``swap``: B first)."""
    from vlreward.service.media import MediaPolicy
    from vlreward.service.model.formatting import format_judged_pair
    from vlreward.service.prepare import load_images
    from vlreward.service.schemas import ComparePair

    a, b = ComparePair.model_validate(pair).samples()
    images = load_images(a.image_refs(), a.image_params(), MediaPolicy(), 8, None)
    first, second = (b, a) if swap else (a, b)
    question = format_judged_pair(first, second, images, backend.processor, backend.judge)
    return backend.judge.prob_first(backend.score_sync([question])[0])


ITEMS = [
    {"prompt": "What colour is the circle?", "image": RED, "response": "It is red."},
    {"prompt": "What colour is the circle?", "image": RED, "response": "It is blue, I think."},
    {"prompt": "Say hello.", "response": "Hello!"},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Colour of the sky?"},
                  {"role": "assistant", "content": "Blue."}]},
]  # fmt: skip


def test_score_is_the_expected_rating_whatever_the_batch(server, judge_backend):
    expected = [judge_backend.judge.rating(alone(judge_backend, item)) for item in ITEMS]
    body = post(server, "/score", {"items": ITEMS}).json()
    assert body["model"] == "judge" and "details" not in body
    assert body["scores"] == pytest.approx(expected, abs=1e-5)  # batch-invariant: alone == in a batch
    assert all(1.0 <= score <= 5.0 for score in body["scores"])
    again = post(server, "/score", {"items": ITEMS}).json()
    assert again["scores"] == body["scores"]  # the same request always gets the same score
    reordered = post(server, "/score", {"items": ITEMS[::-1]}).json()["scores"][::-1]
    assert reordered == pytest.approx(body["scores"], abs=1e-5)


def test_rank_get_reward_and_classify_give_the_pointwise_score(server, judge_backend):
    responses = ["It is red.", "It is blue, I think.", "Green."]
    ranked = post(
        server, "/rank", {"prompt": "What colour is the circle?", "image": RED, "responses": responses}
    ).json()
    expected = [judge_backend.judge.rating(alone(judge_backend, {**ITEMS[0], "response": r})) for r in responses]
    assert ranked["scores"] == pytest.approx(expected, abs=1e-5)
    assert ranked["ranking"] == sorted(range(3), key=lambda i: -ranked["scores"][i])
    messages = ITEMS[3]["messages"]
    query = judge_backend.processor.apply_chat_template(messages, tokenize=False)  # what a policy's rollout is
    want = post(server, "/score", {"items": [ITEMS[3]]}).json()["scores"]
    assert post(server, "/get_reward", {"query": [query]}).json()["rewards"] == pytest.approx(want, abs=1e-5)
    classify = post(server, "/classify", {"messages": messages}).json()
    assert classify["data"][0]["probs"] == pytest.approx(want, abs=1e-5)


def test_compare_debiases_antisymmetrically_and_counts_disagreeing_orders(server, judge_backend):
    before = {orders: server.metric("vlreward_judge_debiased_pairs_total", model="judge", orders=orders)
              for orders in ("agree", "disagree")}  # fmt: skip
    shared_before = server.metric("vlreward_shared_prefix_runs_total", model="judge")
    body = post(server, "/compare", {"pairs": PAIRS}).json()
    assert body["model"] == "judge" and body["usage"]["images"] == 4  # each pair's image, in both orders
    disagreements = 0
    for pair, result in zip(PAIRS, body["results"], strict=True):
        ab, ba = pair_alone(judge_backend, pair), pair_alone(judge_backend, pair, swap=True)
        assert result["prob_a"] == pytest.approx(debiased(ab, ba), abs=1e-5)
        assert result["verdict"] == ("a" if result["prob_a"] > 0.5 else "b")
        disagreements += (ab > 0.5) == (ba > 0.5)
    swapped = post(server, "/compare", {"pairs": [{**p, "a": p["b"], "b": p["a"]} for p in PAIRS]}).json()
    for forward, backward in zip(body["results"], swapped["results"], strict=True):
        # the same two questions in the other roles: 1 - P to the backend's batch tolerance (a question may run
        # on another CPU lane's thread count, ~1e-8 off); the formula's exactness is tests/service/test_judge.py's
        assert backward["prob_a"] == pytest.approx(1.0 - forward["prob_a"], abs=1e-5)
    after = {orders: server.metric("vlreward_judge_debiased_pairs_total", model="judge", orders=orders)
             for orders in ("agree", "disagree")}  # fmt: skip
    assert after["disagree"] - before["disagree"] == 2 * disagreements
    assert after["agree"] - before["agree"] == 2 * (len(PAIRS) - disagreements)
    # a pair's two orders share the prompt and images: computed once for both questions
    assert server.metric("vlreward_shared_prefix_runs_total", model="judge") - shared_before >= len(PAIRS)


def test_without_debias_compare_asks_once_in_the_given_order(server, judge_backend):
    body = post(server, "/compare", {"pairs": PAIRS, "debias": False}).json()
    assert body["usage"]["images"] == 2
    for pair, result in zip(PAIRS, body["results"], strict=True):
        assert result["prob_a"] == pytest.approx(pair_alone(judge_backend, pair), abs=1e-5)


def test_a_published_judge_that_only_compares_answers_compare_and_refuses_scores(server, compares_only):
    body = post(server, "/compare", {"model": "pairwise", "pairs": PAIRS[:2]}).json()
    for pair, result in zip(PAIRS[:2], body["results"], strict=True):
        ab, ba = pair_alone(compares_only, pair), pair_alone(compares_only, pair, swap=True)
        assert result["prob_a"] == pytest.approx(debiased(ab, ba), abs=1e-5)
    for path, request in [
        ("/score", {"items": ITEMS[:1]}),
        ("/rank", {"prompt": "x", "responses": ["a", "b"]}),
        ("/get_reward", {"query": ["<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\ny"]}),
    ]:
        response = post(server, path, {"model": "pairwise", **request})
        assert response.status_code == 400, (path, response.text)
        error = response.json()["error"]
        assert error["param"] == "model" and "only compares" in error["message"] and "/compare" in error["message"]


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/score", {"items": [{"prompt": "x", "steps": ["a"]}]}, 400, "items[0].steps"),
        ("/score", {"items": ITEMS[:1], "aggregate": "min"}, 400, "aggregate"),
        ("/compare", {"pairs": []}, 422, "pairs"),
        ("/compare", {"pairs": PAIRS[1:2] * 5}, 413, "pairs"),
        ("/compare", {"pairs": PAIRS[1:2], "critique": True}, 422, "critique"),  # logits mode writes nothing
        ("/compare", {"pairs": [PAIRS[1], {**PAIRS[0], "image": "data:image/png;base64,AAAA"}]}, 400, "pairs[1]"),
        ("/get_reward", {"query": ["<|im_start|>user\nno response turn<|im_end|>\n"]}, 400, "query[0]"),
    ],
)  # fmt: skip
def test_what_a_judge_cannot_answer_is_refused_naming_the_field(server, path, body, status, param):
    response = post(server, path, body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"].startswith(param), response.json()["error"]


def test_info_and_models_show_the_judge_and_its_declaration(server):
    cards = {card["id"]: card["kind"] for card in httpx.get(server.url + "/v1/models").json()["data"]}
    assert cards == {"judge": "judge", "pairwise": "judge", "scalar": "scalar"}
    info = httpx.get(server.url + "/info").json()
    judge = info["judge"]
    assert judge["name"] == "generic" and judge["pointwise"] and judge["pairwise"]
    assert judge["ratings"] == {str(i): i for i in range(1, 6)} and judge["pair_tokens"] == ["1", "2"]
    assert info["models"]["pairwise"]["judge"]["name"] == "unifiedreward-qwen"
    assert "github.com/CodeGoat24/UnifiedReward" in info["models"]["pairwise"]["judge"]["source"]
