"""A judge's generate mode through the HTTP routes (transformers backend): a judge trained here on templated
critiques writes a critique then its verdict, parsed by its declaration's rule; seeded answers repeat; a verdict
that cannot be parsed is an item error, never a default; limits and refusals name their field."""

from __future__ import annotations

import threading

import httpx
import pytest

from tests.helpers import LiveServer, post_and_leave, shape_image, uri, wait_until
from vlreward.service.catalog import ModelSpec

RED = uri(shape_image("red"))
ITEMS = [
    {"prompt": "What colour is the circle?", "image": RED, "response": "It is red."},
    {"prompt": "What colour is the circle?", "image": RED, "response": "It is blue."},
    {"prompt": "Say hello.", "response": "Hello!"},
]
PAIRS = [
    {"prompt": "What colour is the circle?", "image": RED, "a": "It is red.", "b": "It is blue."},
    {"prompt": "Say hello.", "a": "Hello!", "b": "Goodbye."},
]


@pytest.fixture(scope="module")
def server(critique_backend, hf_backend):
    specs = [ModelSpec(name="judge", default=True), ModelSpec(name="scalar")]
    backends = {"judge": critique_backend, "scalar": hf_backend}
    with LiveServer(specs=specs, backends=backends, judge_max_samples=4, judge_max_new_tokens=64) as live:
        yield live


def post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=120)


def test_a_trained_judge_writes_a_critique_then_a_verdict_that_is_parsed(server, critique_backend):
    body = post(server, "/score", {"items": ITEMS, "mode": "generate", "critique": True, "max_new_tokens": 40})
    assert body.status_code == 200, body.text
    result = body.json()
    ratings = set(critique_backend.judge.ratings.values())
    for score, detail in zip(result["scores"], result["details"], strict=True):
        assert score in ratings and detail["verdicts"] == [score] and detail["parse_failures"] == 0
        (critique,) = detail["critiques"]
        assert critique.startswith("The response") and critique.rstrip().endswith(f"Rating: {score:g}")
    again = post(server, "/score", {"items": ITEMS, "mode": "generate", "critique": True, "max_new_tokens": 40})
    assert again.json()["details"] == result["details"]  # greedy: the same answers
    logits = post(server, "/score", {"items": ITEMS}).json()
    assert "details" not in logits  # the declaration's default mode (logits) is unchanged


def test_seeded_samples_repeat_and_vote(server):
    body = {"items": ITEMS[:2], "mode": "generate", "samples": 4, "temperature": 1.0, "seed": 7,
            "max_new_tokens": 40, "critique": True, "on_error": "null"}  # fmt: skip
    first, second = post(server, "/score", body).json(), post(server, "/score", body).json()
    assert first["details"] == second["details"] and first["scores"] == second["scores"]
    for score, detail in zip(first["scores"], first["details"], strict=True):
        assert len(detail["critiques"]) == 4
        parsed = [v for v in detail["verdicts"] if v is not None]
        assert detail["parse_failures"] == 4 - len(parsed)
        assert score == pytest.approx(sum(parsed) / len(parsed))  # the mean of the parsed ratings
    other = post(server, "/score", body | {"seed": 8}).json()
    assert other["details"] != first["details"]  # another seed, other answers


def test_compare_in_generate_mode_votes_over_both_orders(server):
    result = post(server, "/compare", {"pairs": PAIRS, "mode": "generate", "max_new_tokens": 40}).json()
    for pair, detail in zip(result["results"], result["details"], strict=True):
        votes = detail["verdicts"]
        assert len(votes) == 2 and None not in votes  # A first, then B first; each read as A or B
        assert pair["prob_a"] == votes.count("a") / 2
    once = post(server, "/compare", {"pairs": PAIRS, "mode": "generate", "debias": False, "max_new_tokens": 40})
    assert [len(d["verdicts"]) for d in once.json()["details"]] == [1, 1]


def test_an_answer_without_a_verdict_is_an_item_error_and_is_counted(server):
    before = server.metric("vlreward_judge_parse_failures_total", model="judge", reason="truncated")
    body = {"items": ITEMS, "mode": "generate", "max_new_tokens": 2}  # stopped before "Rating: N"
    failed = post(server, "/score", body)
    assert failed.status_code == 502 and failed.json()["error"]["type"] == "unparsed_verdict"
    assert failed.json()["error"]["param"] == "items[0]" and "truncated" in failed.json()["error"]["message"]
    nulls = post(server, "/score", body | {"on_error": "null"}).json()
    assert nulls["scores"] == [None, None, None]
    assert [e["index"] for e in nulls["errors"]] == [0, 1, 2] and {e["type"] for e in nulls["errors"]} == {
        "unparsed_verdict"
    }
    assert server.metric("vlreward_judge_parse_failures_total", model="judge", reason="truncated") == before + 6


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/score", {"items": ITEMS, "critique": True}, 422, "critique"),  # logits mode has no critique
        ("/score", {"items": ITEMS, "samples": 2}, 422, "samples"),
        ("/score", {"items": ITEMS, "mode": "generate", "samples": 5}, 413, "samples"),
        ("/score", {"items": ITEMS, "mode": "generate", "max_new_tokens": 65}, 413, "max_new_tokens"),
        ("/compare", {"pairs": PAIRS, "mode": "generate", "samples": 4, "max_new_tokens": 8}, 200, None),
        ("/score", {"model": "scalar", "items": ITEMS, "mode": "generate"}, 400, "mode"),
        ("/compare", {"model": "scalar", "pairs": PAIRS, "seed": 1}, 400, "seed"),
        ("/score", {"items": ITEMS, "mode": "sample"}, 422, "mode"),
        ("/score", {"items": ITEMS, "mode": "generate", "temperature": 3}, 422, "temperature"),
    ],
)
def test_generate_mode_fields_are_checked_and_limited_naming_the_field(server, path, body, status, param):
    response = post(server, path, body)
    if status == 200:  # 2 pairs x 2 orders x 4 samples = 16 answers: within judge_max_generations
        assert response.status_code in (200, 502), response.text
        return
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param


def test_too_many_answers_in_one_request_is_a_413_naming_the_limit(critique_backend, hf_backend):
    with LiveServer(critique_backend, judge_max_generations=5) as live:
        response = post(live, "/score", {"items": ITEMS * 2, "mode": "generate"})
        assert response.status_code == 413 and "judge_max_generations" in response.json()["error"]["message"]


def test_a_stopped_generation_raises_instead_of_returning_part_of_the_answers(critique_backend):
    from vlreward.service.judge import GenerationParams
    from vlreward.service.model.generation import GenerationStopped
    from vlreward.service.prepare import GeneratingView, prepare_request_sample

    view = GeneratingView(critique_backend)
    question = prepare_request_sample(ITEMS[2], critique_backend.processor, judge=view.judge)
    stop = threading.Event()
    stop.set()
    with pytest.raises(GenerationStopped):
        critique_backend.generator.generate([critique_backend.encode(question)], GenerationParams(), stop)


def test_a_client_that_leaves_or_a_deadline_stops_the_generation_on_its_model_thread(judge_backend):
    """A random judge writes up to 1,024 tokens per answer (seconds here): a client that leaves and a passed
    deadline each stop it at the next token."""
    generator = judge_backend.generator
    long_answers = {"mode": "generate", "samples": 8, "temperature": 1.0, "seed": 3, "max_new_tokens": 1024}
    with LiveServer(judge_backend) as live:
        stopped = generator.stopped
        in_flight = lambda: live.metric("vlreward_inflight_requests") == 1  # noqa: E731
        post_and_leave(live.port, "/score", {"items": ITEMS[2:], **long_answers}, in_flight, "the request in flight")
        wait_until(lambda: generator.stopped == stopped + 1, what="the generation stopped after the client left")
        late = post(live, "/score", {"items": ITEMS[2:], **long_answers, "timeout_s": 1})
        assert late.status_code == 504 and late.json()["error"]["type"] == "timeout"
        wait_until(lambda: generator.stopped == stopped + 2, what="the generation stopped at the deadline")


def test_a_declaration_whose_mode_is_generate_makes_it_the_default(critique_judge, tmp_path):
    """Served with a declaration saying ``mode: generate`` (the ``judge`` setting), requests that do not say
    are answered in generate mode; ``mode: logits`` still reads the logits."""
    import yaml

    from vlreward.service.backends.transformers import TransformersBackend
    from vlreward.service.judge import read_declaration

    declaration = tmp_path / "writes.yaml"
    declaration.write_text(yaml.safe_dump(read_declaration("generic").declaration() | {"mode": "generate"}))
    backend = TransformersBackend(critique_judge, dtype="float32", device="cpu", judge=str(declaration))
    with LiveServer(backend) as live:
        written = post(live, "/score", {"items": ITEMS[2:], "max_new_tokens": 40}).json()
        assert written["details"][0]["parse_failures"] == 0 and written["usage"]["output_tokens"] > 0
        read = post(live, "/score", {"items": ITEMS[2:], "mode": "logits"}).json()
        assert "details" not in read and "output_tokens" not in read["usage"]
        assert httpx.get(live.url + "/info").json()["judge"]["mode"] == "generate"
