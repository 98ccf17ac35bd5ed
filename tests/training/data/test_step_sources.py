"""Step-labelled sources in their published layouts (rows written here as the READMEs show them)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tests.helpers import shape_image
from vlreward.training.data.schema import StepRecord, Turn, read_records
from vlreward.training.data.sources import ConversionError
from vlreward.training.data.step_sources import (
    clean_steps,
    convert_math_shepherd,
    convert_prm800k,
    convert_visualprm400k,
    math_shepherd_solution,
)


def completion(text: str, rating: int | None, flagged: bool | None = None) -> dict:
    return {"text": text, "rating": rating, "flagged": flagged}


def prm800k_line(steps: list[dict], finish: str = "found_error", **flags) -> dict:
    return {"labeler": "340d89bc", "timestamp": "2023-01-22T04:34:27", "generation": 9,
            "is_quality_control_question": False, "is_initial_screening_question": False,
            "question": {"problem": "What is 2 + 3?", "ground_truth_answer": "5"},
            "label": {"steps": steps, "total_time": 1000, "finish_reason": finish}} | flags  # fmt: skip


PHASE2_FOUND_ERROR = prm800k_line([
    {"completions": [completion("I add the numbers.", 0)], "human_completion": None, "chosen_completion": 0},
    {"completions": [completion("2 + 3 = 5.", 1)], "human_completion": None, "chosen_completion": 0},
    {"completions": [completion("So the answer is 6.", -1), completion("So it is 7.", -1)],
     "human_completion": None, "chosen_completion": None},
])  # fmt: skip
PHASE1_HUMAN = prm800k_line([
    {"completions": [completion("Two plus three.", 1, flagged=True)], "human_completion": None,
     "chosen_completion": 0},
    {"completions": [completion("It is 6.", -1)], "human_completion": "It is 5.", "chosen_completion": None},
    {"completions": [completion("# Answer\n\n5", 1)], "human_completion": None, "chosen_completion": 0},
], finish="solution", generation=None)  # fmt: skip


def test_prm800k_follows_the_readmes_trajectory_and_its_ratings():
    records = list(convert_prm800k([PHASE2_FOUND_ERROR, PHASE1_HUMAN]))
    assert records[0].steps == ["I add the numbers.", "2 + 3 = 5.", "So the answer is 6."]
    assert records[0].labels == [1.0, 1.0, 0.0] and records[0].first_error == 2  # neutral 0 counts as right
    assert records[1].steps == ["Two plus three.", "It is 5.", "# Answer\n\n5"]
    assert records[1].labels == [None, 1.0, 1.0]  # flagged: unlabelled; the human step is a +1
    assert records[0].conversation[0].content == "What is 2 + 3?"
    neutral_unlabelled = next(convert_prm800k([PHASE2_FOUND_ERROR], neutral=None))
    assert neutral_unlabelled.labels == [None, 1.0, 0.0]


def test_prm800k_skips_quality_control_screening_and_unfinished_labelling():
    skipped = [prm800k_line(PHASE2_FOUND_ERROR["label"]["steps"], is_quality_control_question=True),
               prm800k_line(PHASE2_FOUND_ERROR["label"]["steps"], is_initial_screening_question=True),
               prm800k_line(PHASE2_FOUND_ERROR["label"]["steps"], finish="give_up"),
               prm800k_line(PHASE2_FOUND_ERROR["label"]["steps"], finish="bad_problem")]  # fmt: skip
    assert list(convert_prm800k(skipped)) == []


# The dataset card's example, with its labels (Step 1 +, the rest -): minus signs inside steps too.
SHEPHERD_PROBLEM = "If Buzz bought a pizza with 78 slices, what's twenty less the number the waiter ate?"
SHEPHERD_STEPS = ["The total ratio is 5+8 = <<5+8=13>>13.", "The waiter ate 13 x 8 / 13 = <<13*8/13=6>>6 slices.",
                  "Buzz ate 78 - 6 = <<78-6=72>>72 slices.", "The waiter ate 52 slices. The answer is: 52"]  # fmt: skip


def shepherd_row(marks: str) -> dict:
    body = " ".join(f"Step {n}: {step} ки" for n, step in enumerate(SHEPHERD_STEPS, start=1))
    labelled = body
    for mark in marks:
        labelled = labelled.replace("ки", mark, 1)
    return {"input": f"{SHEPHERD_PROBLEM} {body}", "label": f"{SHEPHERD_PROBLEM} {labelled}", "task": "GSM8K"}


def test_math_shepherd_reads_each_tags_mark_and_strips_the_step_numbers():
    record = next(convert_math_shepherd([shepherd_row("+---")]))
    assert record.conversation[0].content == SHEPHERD_PROBLEM
    assert record.steps == SHEPHERD_STEPS and record.labels == [1.0, 0.0, 0.0, 0.0]
    assert record.category == "GSM8K" and record.first_error == 1
    assert math_shepherd_solution(shepherd_row("++-+")["input"], shepherd_row("++-+")["label"])[2] == [1, 1, 0, 1]
    with pytest.raises(ConversionError, match="where the input has its step tags"):
        math_shepherd_solution(shepherd_row("+---")["input"], shepherd_row("+---")["input"].replace("ки", "?"))


def visualprm_rows(folder) -> list[dict]:
    shape_image("red").save(folder / "red.png")
    conversation = {"image": "red.png", "conversations": [
        {"from": "system", "value": "You are an advanced AI assistant..."},
        {"from": "human", "value": "<image>\n### Question:\nWhat colour is the circle?\n\n### Solution Process:\n"
                                   "I look at the circle."},
        {"from": "gpt", "value": "+"},
        {"from": "human", "value": "It is blue."},
        {"from": "gpt", "value": "-"},
    ]}  # fmt: skip
    raw = {"image": ["red.png"], "question": "What colour is the circle?", "answer": "red",
           "response": "I look.\n\nIt is red.", "num_mc_sequences": 16,
           "steps_with_score": [{"step": "I look.", "score": 0.8125}, {"step": "It is red.", "score": 1.0}]}  # fmt: skip
    return [conversation, raw]


def test_visualprm400k_in_its_conversation_and_raw_forms(tmp_path):
    records = list(convert_visualprm400k(visualprm_rows(tmp_path), tmp_path / "out", images_root=tmp_path))
    assert records[0].conversation[0].content == "What colour is the circle?"
    assert records[0].steps == ["I look at the circle.", "It is blue."] and records[0].labels == [1.0, 0.0]
    assert records[1].labels == [0.8125, 1.0] and records[1].meta["answer"] == "red"  # Monte-Carlo: soft labels
    assert records[0].images == records[1].images and (tmp_path / "out" / records[0].images[0]).is_file()


def test_cleaning_drops_empty_steps_and_duplicates_and_removes_the_tag_text():
    def made(n: int, steps: list[str]) -> StepRecord:
        return StepRecord(id=f"r{n}", source="s", category="c", conversation=[Turn(role="user", content="Q?")],
                          steps=steps, labels=[1.0] * len(steps))  # fmt: skip

    records = [made(0, ["a", "b"]), made(1, ["a", " "]), made(2, ["a", "b"]), made(3, ["a<|quad_end|>", "c"])]
    kept, report = clean_steps(records, "<|quad_end|>")
    assert [r.id for r in kept] == ["r0", "r3"] and kept[1].steps == ["a", "c"]
    assert (report.empty_step, report.tag_removed, report.duplicates) == (1, 1, 1)


def test_vlreward_data_convert_writes_step_records(tmp_path):
    from vlreward.training.cli import app

    source = tmp_path / "phase2_train.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in [PHASE2_FOUND_ERROR, PHASE1_HUMAN]))
    result = CliRunner().invoke(app, ["data", "convert", "--source", "prm800k", "--input", str(source),
                                      "--output", str(tmp_path / "prm800k")])  # fmt: skip
    assert result.exit_code == 0, result.output
    records = list(read_records(tmp_path / "prm800k", StepRecord))
    assert [r.labels for r in records] == [[1.0, 1.0, 0.0], [None, 1.0, 1.0]]
