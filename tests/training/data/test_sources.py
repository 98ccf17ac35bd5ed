"""Converters on small fixtures written in each public source's row layout."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest

from tests.helpers import shape_image
from vlreward.training.data.sources import (
    ConversionError,
    convert,
    parse_llava_critic_prompt,
    parse_llava_critic_verdict,
)


def _png(colour: str) -> bytes:
    buffer = io.BytesIO()
    shape_image(colour).save(buffer, format="PNG")
    return buffer.getvalue()


JUDGE = (
    "<image>\nYou are a fair judge. Question: [What is in the [left] corner?]\n"
    "The first response: [A cat [maybe] sleeping.]\nThe second response: [A dog.]\n\n"
    "Please compare the two responses and say which is better, [1] or [2]."
)


def test_llava_critic_prompt_parsing_keeps_brackets_inside_answers():
    assert parse_llava_critic_prompt(JUDGE.replace("<image>\n", "")) == (
        "What is in the [left] corner?",
        "A cat [maybe] sleeping.",
        "A dog.",
    )
    with pytest.raises(ConversionError):
        parse_llava_critic_prompt("no labels here")


@pytest.mark.parametrize(
    ("answer", "verdict"),
    [
        ("Both are fine, but the first is precise. The better response: [1].", 1),
        ("Reasoning... The better response: [2]", 2),
        ("Two responses are equally good.", 0),
        ("I cannot decide.", None),
    ],
)
def test_llava_critic_verdicts(answer, verdict):
    assert parse_llava_critic_verdict(answer) == verdict


def test_llava_critic_rows_become_records_with_ties_flagged(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.png").write_bytes(_png("red"))

    def row(id_: str, verdict: str) -> dict:
        turns = [{"from": "human", "value": JUDGE}, {"from": "gpt", "value": verdict}]
        return {"id": id_, "source": "vlfeedback", "image": "a.png", "conversations": turns}

    rows = [
        row("1", "The better response: [2]"),
        row("2", "Two responses are equally good."),
        row("3", "unclear"),
    ]
    path = tmp_path / "critic.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = convert("llava-critic", path, tmp_path / "out", images_root=tmp_path / "src")
    assert [r.id for r in records] == ["llava-critic-1", "llava-critic-2"]
    first, tie = records
    assert (first.chosen, first.rejected, first.prompt) == (
        "A dog.",
        "A cat [maybe] sleeping.",
        "What is in the [left] corner?",
    )
    assert tie.tie and not first.tie
    assert (tmp_path / "out" / first.images[0]).read_bytes() == _png("red")


def test_rlaif_v_parquet_rows_with_embedded_image_bytes(tmp_path):
    frame = pd.DataFrame(
        [
            {"ds_name": "RLAIF-V", "image": {"bytes": _png("blue"), "path": None}, "question": "Colour?",
             "chosen": "Blue.", "rejected": "Red.", "origin_dataset": "coco", "origin_split": "train", "idx": 7,
             "image_path": "x.png"},
            {"ds_name": "RLAIF-V", "image": {"bytes": _png("blue"), "path": None}, "question": "Colour?",
             "chosen": "Blue!", "rejected": "Green.", "origin_dataset": "coco", "origin_split": "train", "idx": 7,
             "image_path": "x.png"},
        ]
    )  # fmt: skip
    path = tmp_path / "rlaif.parquet"
    frame.to_parquet(path)
    records = convert("rlaif-v", path, tmp_path / "out")
    assert len(records) == 2 and records[0].images == records[1].images  # same image, two pairs
    assert records[0].meta["origin_dataset"] == "coco" and records[0].category == "hallucination"
    assert (records[0].chosen, records[0].rejected) == ("Blue.", "Red.")


def test_skywork_preference_rows_split_prompt_turns_from_the_judged_turn(tmp_path):
    prompt = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "2+2?"},
    ]
    rows = [{"source": "magpie", "chosen": [*prompt, {"role": "assistant", "content": "4"}],
             "rejected": [*prompt, {"role": "assistant", "content": "5"}]}]  # fmt: skip
    path = tmp_path / "sky.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (record,) = convert("skywork-80k", path, tmp_path / "out")
    assert [t.content for t in record.conversation] == ["Hi", "Hello", "2+2?"]
    assert (record.chosen, record.rejected, record.images) == ("4", "5", [])
    sample = record.sample(record.chosen)
    assert [m.role for m in sample.messages] == ["user", "assistant", "user", "assistant"]
