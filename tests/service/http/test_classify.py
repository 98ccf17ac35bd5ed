"""POST /classify in vLLM's protocol: the same reward as /get_reward and /score, vLLM's response shape."""

from __future__ import annotations

import math

import httpx
import pytest

from tests.helpers import LiveServer, shape_image, uri

TEMPLATED = "<|im_start|>user\nWhat colour?<|im_end|>\n<|im_start|>assistant\nRed.<|im_end|>\n"


@pytest.fixture(scope="module")
def server(hf_backend):
    with LiveServer(hf_backend) as live:
        yield live


def test_templated_input_scores_like_get_reward_and_use_activation_is_a_sigmoid(server):
    other = TEMPLATED.replace("Red.", "Blue, I think.")
    raw = httpx.post(server.url + "/classify", json={"model": "rm", "input": [TEMPLATED, other]}).json()
    reward = httpx.post(server.url + "/get_reward", json={"query": [TEMPLATED, other]}).json()["rewards"]
    assert [d["index"] for d in raw["data"]] == [0, 1] and raw["model"] == "rm"
    assert [d["probs"][0] for d in raw["data"]] == pytest.approx(reward, abs=1e-5)
    single = httpx.post(server.url + "/classify", json={"input": TEMPLATED, "use_activation": True}).json()
    assert single["data"][0]["probs"][0] == pytest.approx(1 / (1 + math.exp(-reward[0])), abs=1e-6)
    assert raw["usage"]["prompt_tokens"] == raw["usage"]["total_tokens"] > 0


def test_messages_with_an_image_score_like_score(server):
    messages = [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri(shape_image("green"))}},
                                     {"type": "text", "text": "What colour is the circle?"}]},
        {"role": "assistant", "content": "Green."},
    ]  # fmt: skip
    classified = httpx.post(server.url + "/classify", json={"messages": messages}).json()
    scored = httpx.post(server.url + "/score", json={"items": [{"messages": messages}]}).json()
    assert classified["data"][0]["probs"][0] == pytest.approx(scored["scores"][0], abs=1e-5)
    assert classified["usage"]["prompt_tokens"] == scored["usage"]["input_tokens"]


def test_the_response_has_vllms_keys_and_bad_requests_name_the_field(server):
    """Keys as vLLM's own protocol models declare them (the installed vllm's classify/protocol.py)."""
    from vllm.entrypoints.pooling.classify.protocol import ClassificationData, ClassificationResponse
    from vllm.entrypoints.serve.engine.protocol import UsageInfo

    body = httpx.post(server.url + "/classify", json={"input": TEMPLATED, "padding": "do_not_pad"}).json()
    assert set(body) == set(ClassificationResponse.model_fields)
    assert set(body["data"][0]) == set(ClassificationData.model_fields)
    assert set(body["usage"]) == set(UsageInfo.model_fields)
    assert body["data"][0]["num_classes"] == 1 and body["data"][0]["label"] == "LABEL_0"
    both = httpx.post(
        server.url + "/classify", json={"input": TEMPLATED, "messages": [{"role": "assistant", "content": "x"}]}
    )
    assert both.status_code == 422 and "exactly one" in both.text
    ids = httpx.post(server.url + "/classify", json={"input": [[1, 2, 3]]})
    assert ids.status_code == 422 and ids.json()["error"]["param"].startswith("input")


def test_get_reward_takes_openrlhfs_single_sample_and_empty_requests(server):
    """OpenRLHF's remote reward call: one sample per request with `prompts` and `labels`; a sharded call
    can also send empty lists."""
    one = httpx.post(server.url + "/get_reward", json={"query": [TEMPLATED], "prompts": ["What colour?"],
                                                       "labels": [None]})  # fmt: skip
    assert one.status_code == 200 and len(one.json()["rewards"]) == 1
    empty = httpx.post(server.url + "/get_reward", json={"query": [], "prompts": [], "labels": []})
    assert empty.status_code == 200 and empty.json() == {"rewards": [], "scores": [], "extra_logs": {}}
