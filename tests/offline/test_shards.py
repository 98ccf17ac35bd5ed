"""A shard prepared and scored in process (no Ray): bad rows become errors naming the field, good rows keep
their columns and get id and score; the manifest refuses to resume a run of another input or model."""

from __future__ import annotations

import json

import pytest

from vlreward.offline.inputs import InputSource
from vlreward.offline.shards import Manifest, ResumeError, prepare_shard, read_output, score_prepared, write_shard
from vlreward.service.media import MediaPolicy


def test_a_shard_keeps_good_rows_columns_and_sends_bad_rows_to_its_errors(hf_backend, tmp_path):
    path = tmp_path / "in.jsonl"
    good = [{"prompt": "Say hi.", "response": "Hi!", "source": "a"}, {"id": "k", "prompt": "Q", "response": "A"}]
    bad = [{"prompt": "no response"}, {"prompt": "x", "response": "y", "image": "data:image/png;base64,AAAA"},
           {"prompt": "x", "response": "y", "image": "../outside.png"}]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in good + bad))
    source = InputSource(path)
    (shard,) = source.shards()
    prepared = prepare_shard(source, shard, hf_backend.processor, MediaPolicy(media_root=tmp_path), None, None)
    records, errors = score_prepared(hf_backend, prepared, batch_size=4)
    assert [r["id"] for r in records] == ["in.jsonl:1", "k"] and records[0]["source"] == "a"
    alone = hf_backend.score_sync(prepared.formatted)
    assert [r["score"] for r in records] == pytest.approx(alone, abs=1e-6)
    assert [e["id"] for e in errors] == ["in.jsonl:3", "in.jsonl:4", "in.jsonl:5"]
    assert errors[0]["reason"].startswith("row: ") and errors[1]["reason"].startswith("image")
    write_shard(tmp_path / "out", 0, records, errors)
    assert read_output(tmp_path / "out").column("id").to_pylist() == ["in.jsonl:1", "k"]


def test_the_manifest_resumes_the_same_run_and_refuses_another_input_or_model(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n")
    manifest = Manifest.open(tmp_path / "out", InputSource(path), "/m/a", 256, 1)
    manifest.finish(0, rows=1, errors=0)
    with (tmp_path / "out" / "manifest.jsonl").open("a") as out:
        out.write('{"shard": 1, "ro')  # a line a crash cut short: ignored
    again = Manifest.open(tmp_path / "out", InputSource(path), "/m/a", 256, 1)
    assert again.done == {0: {"rows": 1, "errors": 0}} and again.complete
    with pytest.raises(ResumeError, match="the model differ"):
        Manifest.open(tmp_path / "out", InputSource(path), "/m/b", 256, 1)
    path.write_text(json.dumps({"prompt": "p", "response": "changed"}) + "\n")
    with pytest.raises(ResumeError, match="the input's contents differ"):
        Manifest.open(tmp_path / "out", InputSource(path), "/m/a", 256, 1)
