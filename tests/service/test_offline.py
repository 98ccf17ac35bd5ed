"""`vlreward score`: a JSONL of samples in, one score per line out, in order."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.helpers import COLOURS, VLREWARD, shape_image, uri
from vlreward.service.media import MediaPolicy
from vlreward.service.offline import InputError, read_samples, score_file
from vlreward.service.prepare import prepare_sample


def _write_inputs(folder: Path, n: int = 20) -> Path:
    (folder / "images").mkdir(parents=True)
    colours = list(COLOURS)
    lines = []
    for i in range(n):
        colour = colours[i % len(colours)]
        sample: dict = {"id": f"s{i}", "prompt": f"What colour is shape {i}?", "response": f"It is {colour}."}
        if i % 4 == 1:  # a relative file path
            name = f"images/{i}.png"
            shape_image(colour, "square").save(folder / name)
            sample["images"] = ["./" + name]
        elif i % 4 == 2:  # a data URI
            sample["image"] = uri(shape_image(colour))
        elif i % 4 == 3:  # two images, messages form
            sample = {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": uri(shape_image(colour))}},
                            {"type": "image_url", "image_url": {"url": uri(shape_image("red", size=(56, 112)))}},
                            {"type": "text", "text": "Same colour?"},
                        ],
                    },
                    {"role": "assistant", "content": "No." * (i % 5 + 1)},
                ]
            }
        lines.append(json.dumps(sample))
    path = folder / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _direct_scores(backend, path: Path) -> list[float]:
    policy = MediaPolicy(media_root=path.parent)
    return [backend.score_sync([prepare_sample(s, backend.processor, policy)])[0] for s in read_samples(path)]


def test_vlreward_score_writes_twenty_scores_in_order_equal_to_the_backend(hf_backend, tiny_reward, tmp_path):
    inputs = _write_inputs(tmp_path)
    outputs = tmp_path / "out.jsonl"
    command = [VLREWARD, "score", "--model", str(tiny_reward), "--input", str(inputs), "--output", str(outputs)]
    subprocess.run([*command, "--batch-size", "6"], check=True)
    records = [json.loads(line) for line in outputs.read_text().splitlines()]
    assert len(records) == 20
    expected = _direct_scores(hf_backend, inputs)
    for i, (record, score) in enumerate(zip(records, expected, strict=True)):
        if i % 4 != 3:
            assert record["id"] == f"s{i}"
        assert abs(record["score"] - score) <= 1e-5


def test_score_file_in_process_matches_and_rejects_bad_lines(hf_backend, tmp_path):
    inputs = _write_inputs(tmp_path, n=6)
    outputs = tmp_path / "out.jsonl"
    assert score_file(hf_backend, inputs, outputs, batch_size=4) == 6
    scores = [json.loads(line)["score"] for line in outputs.read_text().splitlines()]
    assert all(abs(a - b) <= 1e-5 for a, b in zip(scores, _direct_scores(hf_backend, inputs), strict=True))

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n" + json.dumps({"prompt": "no response"}) + "\n")
    with pytest.raises(InputError, match="bad.jsonl:2"):
        score_file(hf_backend, bad, outputs)


def test_score_file_refuses_paths_outside_the_input_folder(hf_backend, tmp_path):
    shape_image().save(tmp_path / "outside.png")
    (tmp_path / "data").mkdir()
    inputs = tmp_path / "data" / "in.jsonl"
    inputs.write_text(json.dumps({"prompt": "p", "response": "r", "image": "./../outside.png"}) + "\n")
    with pytest.raises(InputError, match="outside the media root"):
        score_file(hf_backend, inputs, tmp_path / "out.jsonl")


def test_a_process_model_writes_the_aggregate_and_the_step_scores(tiny_process, tmp_path):
    from vlreward.service.backends.transformers import TransformersBackend
    from vlreward.service.kinds import sigmoid

    backend = TransformersBackend(tiny_process, dtype="float32", device="cpu")
    lines = [{"id": "a", "prompt": "Which colour?", "steps": ["It is round.", "It is red."]},
             {"prompt": "Count?", "steps": ["Two."]}]  # fmt: skip
    inputs = tmp_path / "steps.jsonl"
    inputs.write_text("".join(json.dumps(line) + "\n" for line in lines))
    score_file(backend, inputs, tmp_path / "out.jsonl")
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    for line, record in zip(lines, records, strict=True):
        logits = backend.score_sync([backend.format_request_sample({k: v for k, v in line.items() if k != "id"})])[0]
        assert record["step_scores"] == pytest.approx([sigmoid(x) for x in logits], abs=1e-6)
        assert record["score"] == pytest.approx(min(record["step_scores"]))
    assert records[0]["id"] == "a" and "id" not in records[1]
