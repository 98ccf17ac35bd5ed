"""End-to-end: the real app on a real uvicorn server, scores equal to the backend's."""

from __future__ import annotations

import json
import logging
import subprocess
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

from tests.helpers import COLOURS, LiveServer, shape_image, uri
from vlreward.service.batching import batch_tokens, lanes_for
from vlreward.service.media import MediaPolicy
from vlreward.service.model.encoding import encode
from vlreward.service.model.formatting import IMAGE_PAD, format_sample
from vlreward.service.prepare import prepare_sample
from vlreward.service.schemas import Sample
from vlreward.service.settings import limit_names

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def server(hf_backend):
    with LiveServer(hf_backend, max_wait_ms=20, max_tokens=400, max_items=64) as live:
        yield live


def solo(backend, sample: dict) -> float:
    return backend.score_sync([prepare_sample(Sample.model_validate(sample), backend.processor, MediaPolicy())])[0]


def post(server, path: str, body: dict, **kwargs) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=60, **kwargs)


SAMPLES = [
    {"prompt": "What colour is the circle?", "response": "Red.", "image": uri(shape_image("red"))},
    {"prompt": "Say hi.", "response": "Hi!"},
    {
        "prompt": "Compare.",
        "response": "Blue square, green circle.",
        "images": [uri(shape_image("blue", "square")), uri(shape_image("green", size=(112, 56)))],
    },
]


def test_score_matches_the_backend_called_directly(server, hf_backend):
    response = post(server, "/score", {"items": SAMPLES})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "tiny-reward"
    for score, sample in zip(body["scores"], SAMPLES, strict=True):
        assert abs(score - solo(hf_backend, sample)) <= TOLERANCE
    assert body["usage"]["images"] == 3 and body["usage"]["input_tokens"] > 0
    assert "errors" not in body
    for header in ("x-request-id", "x-queue-time-ms", "x-inference-time-ms"):
        assert header in response.headers


def test_rank_matches_the_backend_and_orders_best_first(server, hf_backend):
    image = uri(shape_image("red"))
    responses = ["It is red.", "It is blue.", "It is a green square, I think.", "It is red."]
    response = post(server, "/rank", {"prompt": "Colour?", "image": image, "responses": responses, "top_k": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = [solo(hf_backend, {"prompt": "Colour?", "response": r, "image": image}) for r in responses]
    for got, want in zip(body["scores"], expected, strict=True):
        assert abs(got - want) <= TOLERANCE
    order = sorted(range(4), key=lambda i: (-body["scores"][i], i))
    assert body["ranking"] == order[:3] and body["best"] == order[0]
    assert body["scores"][0] == body["scores"][3]  # the same response twice: a tie, kept in input order


def test_rank_ties_keep_input_order(server):
    body = post(server, "/rank", {"prompt": "Say yes.", "responses": ["yes", "no", "yes", "yes"]}).json()
    yes_positions = [body["ranking"].index(i) for i in (0, 2, 3)]
    assert yes_positions == sorted(yes_positions)


def test_rank_with_messages_equals_the_prompt_form(server):
    image = uri(shape_image("blue"))
    by_prompt = post(server, "/rank", {"prompt": "Colour?", "images": [image], "responses": ["Blue.", "Red."]})
    messages = [
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": "Colour?"}],
        }
    ]
    by_messages = post(server, "/rank", {"messages": messages, "responses": ["Blue.", "Red."]})
    assert by_prompt.json()["scores"] == by_messages.json()["scores"]


def test_shared_image_encoding_equals_per_candidate_encoding(hf_backend):
    image = shape_image("red", size=(140, 84))
    formatted = [
        format_sample(Sample(prompt="p", response=r, image="x"), [image], hf_backend.processor)
        for r in ["short", "a much longer response " * 5]
    ]
    for shared, alone in zip(
        hf_backend.encode_shared(formatted), [encode(f, hf_backend.processor) for f in formatted], strict=True
    ):
        assert shared.input_ids.tolist() == alone.input_ids.tolist()
        assert shared.mm_token_type_ids.tolist() == alone.mm_token_type_ids.tolist()
        assert shared.pixel_values.equal(alone.pixel_values)


def test_get_reward_on_templated_text_equals_score_of_the_same_conversation(server, hf_backend):
    images = [shape_image("red")]
    sample = {"prompt": "Colour?", "response": "Red.", "image": uri(images[0])}
    text = format_sample(Sample.model_validate(sample), images, hf_backend.processor).text
    rollout = text.replace(IMAGE_PAD, IMAGE_PAD * 9).removesuffix("\n")  # as a policy decodes it
    text_only = format_sample(Sample(prompt="Hi", response="Yo"), [], hf_backend.processor).text
    body = {
        "query": [rollout, text_only],
        "prompts": ["Colour?", "Hi"],
        "labels": [None, None],
        "images": [[uri(images[0])], []],
    }
    response = post(server, "/get_reward", body)
    assert response.status_code == 200, response.text
    rewards = response.json()["rewards"]
    assert rewards == response.json()["scores"] and response.json()["extra_logs"] == {}
    assert abs(rewards[0] - solo(hf_backend, sample)) <= TOLERANCE
    assert abs(rewards[1] - solo(hf_backend, {"prompt": "Hi", "response": "Yo"})) <= TOLERANCE


def test_two_hundred_samples_from_32_concurrent_clients_each_get_their_own_score(server, hf_backend):
    colours = list(COLOURS)
    samples = []
    for i in range(200):
        sample = {"prompt": f"Question {i}: what colour?", "response": f"{colours[i % 6]} " * (1 + i % 7)}
        if i % 3 == 0:
            sample["image"] = uri(shape_image(colours[(i // 3) % 6], "circle" if i % 2 else "square"))
        samples.append(sample)
    expected = [solo(hf_backend, s) for s in samples]
    batches_before = server.metric("vlreward_batch_size_count")
    multi_before = batches_before - server.metric("vlreward_batch_size_bucket", le="1.0")
    chunks = []
    start = 0
    while start < 200:  # requests of 1 to 4 items
        size = 1 + start % 4
        chunks.append(list(range(start, min(start + size, 200))))
        start += size

    def send(indices):
        with httpx.Client(base_url=server.url, timeout=120) as client:
            response = client.post("/score", json={"items": [samples[i] for i in indices]})
            assert response.status_code == 200, response.text
            return indices, response.json()["scores"]

    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(send, chunks))
    seen = 0
    for indices, scores in results:
        for index, score in zip(indices, scores, strict=True):
            assert abs(score - expected[index]) <= TOLERANCE, f"sample {index}"
            seen += 1
    assert seen == 200
    multi_after = server.metric("vlreward_batch_size_count") - server.metric("vlreward_batch_size_bucket", le="1.0")
    assert multi_after > multi_before  # some forward passes carried more than one sample


def test_on_error_null_gives_a_null_score_and_an_error_for_the_bad_item(server, hf_backend):
    items = [{"prompt": f"q{i}", "response": "r", "image": uri(shape_image("red"))} for i in range(8)]
    items[5]["image"] = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAAB"  # truncated PNG
    response = post(server, "/score", {"items": items, "on_error": "null"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [s is None for s in body["scores"]] == [i == 5 for i in range(8)]
    assert body["errors"] == [
        {"index": 5, "type": "invalid_request", "message": body["errors"][0]["message"], "param": "items[5].image"}
    ]
    assert abs(body["scores"][0] - solo(hf_backend, items[0])) <= TOLERANCE


def test_truncate_prompt_left_scores_like_the_truncated_sample_sent_directly(server, hf_backend):
    tokenizer = hf_backend.processor.tokenizer
    prompt = " ".join(f"word{i % 10}" for i in range(300))
    sample = {"prompt": prompt, "response": "The answer."}
    too_long = post(server, "/score", {"items": [sample]})
    assert too_long.status_code == 413 and too_long.json()["error"]["param"] == "items[0]"
    fitted = post(server, "/score", {"items": [sample], "truncate": "prompt_left"})
    assert fitted.status_code == 200, fitted.text
    assert fitted.json()["usage"]["input_tokens"] <= 400
    # The same cut, computed here: keep the last tokens of the prompt so the whole sample has 400 tokens.
    full = hf_backend.encode(prepare_sample(Sample.model_validate(sample), hf_backend.processor, MediaPolicy()))
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    kept = tokenizer.decode(ids[full.num_tokens - 400 :])
    assert prompt.endswith(kept.strip())
    direct = solo(hf_backend, {"prompt": kept, "response": "The answer."})
    assert abs(fitted.json()["scores"][0] - direct) <= TOLERANCE


def test_request_id_is_echoed_and_info_describes_the_model(server):
    response = httpx.get(server.url + "/info", headers={"x-request-id": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    info = response.json()
    assert info["backend"] == "transformers" and info["dtype"] == "float32" and info["device"] == "cpu"
    assert info["limits"]["max_tokens"] == 400 and len(info["chat_template_hash"]) == 16
    assert set(info["limits"]) == set(limit_names())
    assert info["limits"]["max_batch_size"] == server.settings.max_batch_size
    # unset, so the CPU's default in force (what the batcher plans with), not the setting's None
    text = server.state.backend.model.config.text_config
    in_force = batch_tokens(None, "cpu", text.intermediate_size * 4)
    assert server.settings.max_batch_tokens is None and info["limits"]["max_batch_tokens"] == in_force
    assert server.state.scheduler.max_batch_tokens == in_force
    # lanes: unset, so the CPU's default for this many threads, and the batcher shares those threads
    threads = torch.get_num_threads()
    assert info["cpu_threads"] == threads and info["cpu_lanes"] == lanes_for(None, threads)
    assert (server.state.scheduler.lanes.lanes, server.state.scheduler.lanes.cores) == (info["cpu_lanes"], threads)
    assert info["min_pixels"] == 3136 and info["max_pixels"] == 50176
    assert httpx.get(server.url + "/docs").status_code == 200
    openapi = httpx.get(server.url + "/openapi.json").json()
    assert "/score" in openapi["paths"]
    assert "securitySchemes" not in openapi["components"]  # no keys: the schema asks for none
    assert {"413", "429", "503", "504"} <= set(openapi["paths"]["/score"]["post"]["responses"])


@pytest.mark.parametrize("path", ["/score", "/rank", "/get_reward", "/classify"])
def test_a_deadline_longer_than_the_drain_covers_is_a_422_naming_timeout_s(server, path):
    bodies = {
        "/score": {"items": SAMPLES[1:2]},
        "/rank": {"prompt": "Say hi.", "responses": ["Hi!", "Hello."]},
        "/get_reward": {"query": ["<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"]},
        "/classify": {"input": "hello"},
    }
    longest = server.settings.max_request_timeout_s
    refused = post(server, path, {**bodies[path], "timeout_s": longest + 1})
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["param"] == "timeout_s" and "max_request_timeout_s" in refused.text
    assert post(server, path, {**bodies[path], "timeout_s": longest}).status_code == 200
    schema = httpx.get(server.url + "/openapi.json").json()["components"]["schemas"]
    request = {"/score": "ScoreRequest", "/rank": "RankRequest", "/get_reward": "GetRewardRequest"}.get(path)
    if request:  # the published schema says what this server accepts
        assert schema[request]["properties"]["timeout_s"]["anyOf"][0]["maximum"] == longest


def test_metrics_pass_promtool_check(server, prometheus_tools):
    post(server, "/score", {"items": SAMPLES[:1]})
    promtool = prometheus_tools.promtool
    text = httpx.get(server.url + "/metrics").text
    for name in ("vlreward_requests_total", "vlreward_batch_size_bucket", "vlreward_score_bucket", "vlreward_ready"):
        assert name in text
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_json_access_log_has_one_line_per_request(hf_backend, caplog):
    with LiveServer(hf_backend, log_json=True) as live, caplog.at_level(logging.INFO, logger="vlreward.access"):
        post(live, "/score", {"items": SAMPLES[:2]}, headers={"x-request-id": "log-1"})
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "vlreward.access"]
    line = next(entry for entry in lines if entry["id"] == "log-1")
    assert line["endpoint"] == "/score" and line["status"] == 200 and line["samples"] == 2
    assert line["tokens"] > 0 and line["queue_ms"] >= 0 and line["inference_ms"] > 0
