"""Cleaning on fixtures with planted duplicates, near duplicates and ties: the right counts removed."""

from __future__ import annotations

from tests.helpers import shape_image
from vlreward.training.data.cleaning import clean
from vlreward.training.data.schema import PreferenceRecord, Turn


def _record(id_: str, prompt: str, chosen: str, rejected: str, image: str | None = None, tie: bool = False):
    return PreferenceRecord(
        id=id_, source="fixture", category="general", images=[image] if image else [],
        conversation=[Turn(role="user", content=prompt)], chosen=chosen, rejected=rejected, tie=tie,
    )  # fmt: skip


def test_planted_duplicates_near_duplicates_and_ties_are_removed(tmp_path):
    (tmp_path / "images").mkdir()
    shape_image("red").save(tmp_path / "images" / "red.png")
    shape_image("red").save(tmp_path / "images" / "red-copy.png")  # same content, other file
    shape_image("blue").save(tmp_path / "images" / "blue.png")
    long_answer = (
        "The picture shows a single red circle centred on a plain white background with nothing else in it. "
        "The circle is filled with one flat colour, it has no outline, no shadow and no texture, and it takes "
        "up roughly half of the width and half of the height of the square image, leaving white margins."
    )
    near_answer = long_answer.replace("roughly", "about")
    records = [
        _record("a", "Describe the image.", long_answer, "A blue square.", "images/red.png"),
        _record("a-dup", "describe  the IMAGE.", long_answer.lower(), "a blue square.", "images/red-copy.png"),
        _record("a-other-image", "Describe the image.", long_answer, "A blue square.", "images/blue.png"),
        _record("a-near", "Describe the image.", near_answer, "A blue square.", "images/red.png"),
        _record("tie", "Which is better?", "Both.", "Neither.", tie=True),
        _record("same-text", "Say hi.", "Hi!", " Hi! "),
        _record("b", "What is 2+2?", "4", "5"),
        _record("c", "Name a colour.", "Red.", "Seven."),
    ]
    kept, reports = clean(records, tmp_path, near_threshold=0.8)
    assert [r.id for r in kept] == ["a", "a-other-image", "b", "c"]
    assert [(r.count_in, r.count_out) for r in reports] == [(8, 6), (6, 5), (5, 4)]  # ties, exact, near
    assert [r.removed for r in reports] == [2, 1, 1]


def test_surrogate_stage_flags_exactly_the_planted_low_score_and_low_margin_pairs(tmp_path):
    import json

    from vlreward.training.data.cleaning import surrogate_flags, write_flags

    records, scores = [], []
    for source in ("rlaif-v", "llava-critic"):
        for k in range(10):
            records.append(_record(f"{source}-{k}", f"q{k}", f"good {k}", f"bad {k}"))
            records[-1] = records[-1].model_copy(update={"source": source})
            scores.append((2.0 + 0.1 * k, 0.0 - 0.1 * k))  # chosen 2.0..2.9, margins 2.0..3.8
        scores[-10 + 3] = (-5.0, -9.0)  # planted: low chosen score (margin 4.0, not small)
        scores[-10 + 7] = (2.75, 2.7)  # planted: small margin (chosen score ordinary)
    scored, flags = surrogate_flags(records, scores, low_percentile=10, margin_percentile=10)
    assert {(f.id, tuple(f.reasons)) for f in flags} == {
        ("rlaif-v-3", ("low_chosen_score",)), ("rlaif-v-7", ("small_margin",)),
        ("llava-critic-3", ("low_chosen_score",)), ("llava-critic-7", ("small_margin",)),
    }  # fmt: skip
    assert scored[3].scores == {"chosen": -5.0, "rejected": -9.0} and scored[3].margin == 4.0
    write_flags(flags, tmp_path / "regenerate.jsonl")
    lines = [json.loads(line) for line in (tmp_path / "regenerate.jsonl").read_text().splitlines()]
    assert {line["id"] for line in lines} == {f.id for f in flags}


def test_surrogate_scores_come_from_the_service_backend(hf_backend, tmp_path):
    from vlreward.service.media import MediaPolicy
    from vlreward.service.prepare import prepare_sample
    from vlreward.training.evaluate import score_records

    (tmp_path / "images").mkdir()
    shape_image("green").save(tmp_path / "images" / "g.png")
    records = [_record("x", "Colour?", "Green.", "Red.", "images/g.png"), _record("y", "Hi", "Hello", "Go away")]
    scores = score_records(hf_backend, records, tmp_path)
    policy = MediaPolicy(media_root=tmp_path)
    for record, (chosen, rejected) in zip(records, scores, strict=True):
        direct = [hf_backend.score_sync([prepare_sample(record.sample(r, root=tmp_path), hf_backend.processor, policy)])[0]
                  for r in (record.chosen, record.rejected)]  # fmt: skip
        assert abs(direct[0] - chosen) <= 1e-5 and abs(direct[1] - rejected) <= 1e-5


def test_flagged_chosen_responses_are_regenerated_through_an_openai_compatible_endpoint(tmp_path):
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from vlreward.training.data.cleaning import regenerate_chosen

    received = []

    class Chat(BaseHTTPRequestHandler):  # a loopback stand-in for an OpenAI-compatible chat server
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            received.append((self.path, self.headers.get("authorization"), body))
            images = sum(p.get("type") == "image_url" for m in body["messages"] if isinstance(m["content"], list)
                         for p in m["content"])  # fmt: skip
            reply = json.dumps(
                {"choices": [{"message": {"role": "assistant", "content": f"new answer ({images} images)"}}]}
            )
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(reply.encode())

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Chat)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    (tmp_path / "images").mkdir()
    shape_image("red").save(tmp_path / "images" / "r.png")
    record = _record("x", "Describe.", "old answer", "worse", "images/r.png")
    try:
        (fresh,) = regenerate_chosen([record], tmp_path, f"http://127.0.0.1:{server.server_address[1]}", "judge", "k")
    finally:
        server.shutdown()
    assert fresh.chosen == "new answer (1 images)" and fresh.meta["regenerated_from"] == "old answer"
    assert fresh.rejected == "worse"
    path, auth, body = received[0]
    assert path == "/v1/chat/completions" and auth == "Bearer k" and body["model"] == "judge"
    assert body["messages"][-1]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
