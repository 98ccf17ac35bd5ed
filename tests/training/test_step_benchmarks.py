"""Process benchmarks in their published formats (fixtures written here) give hand-computed tables exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import shape_image
from vlreward.training.step_benchmarks import (
    choose_threshold,
    load_step_items,
    processbench_split,
    step_tables,
)

# ProcessBench: id, label (earliest wrong step, -1 none), step scores -> predicted first step below 0.5
PROCESSBENCH = [
    ("gsm8k-0", 1, [0.9, 0.2, 0.1]),  # predicted 1: right (erroneous)
    ("gsm8k-1", 2, [0.9, 0.4, 0.1]),  # predicted 1: wrong (erroneous)
    ("gsm8k-2", -1, [0.8, 0.7]),  # predicted -1: right (correct)
    ("gsm8k-3", -1, [0.8, 0.45]),  # predicted 1: wrong (correct)
    ("math-0", 0, [0.3, 0.9]),  # predicted 0: right (erroneous)
    ("math-1", -1, [0.6, 0.6, 0.55]),  # predicted -1: right (correct)
    ("math-2", -1, [0.6, 0.2]),  # predicted 1: wrong (correct)
]


def processbench_files(folder: Path) -> Path:
    """The splits as the hub publishes them: a JSON list for gsm8k, JSON lines for math."""
    folder.mkdir(parents=True)
    rows = [{"id": i, "generator": "Qwen2-7B-Instruct", "problem": f"Problem {i}?",
             "steps": [f"Step {k} of {i}." for k in range(len(s))], "final_answer_correct": label == -1,
             "label": label} for i, label, s in PROCESSBENCH]  # fmt: skip
    (folder / "gsm8k.json").write_text(json.dumps([r for r in rows if r["id"].startswith("gsm8k")]))
    (folder / "math.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows if r["id"].startswith("math")))
    return folder


def test_processbench_split_from_the_id():
    assert processbench_split("olympiadbench-12") == "olympiadbench" and processbench_split("gsm8k-0") == "gsm8k"


def test_processbench_table_by_hand(tmp_path):
    items = load_step_items("processbench", processbench_files(tmp_path / "pb"))
    assert [(i.id, i.category, i.label, len(i.steps)) for i in items][:2] == [("gsm8k-0", "gsm8k", 1, 3),
                                                                             ("gsm8k-1", "gsm8k", 2, 3)]  # fmt: skip
    results = step_tables("processbench", items, {i: s for i, _, s in PROCESSBENCH})
    gsm8k, math = results["splits"]["gsm8k"], results["splits"]["math"]
    assert (gsm8k["error_accuracy"], gsm8k["correct_accuracy"], gsm8k["f1"]) == (0.5, 0.5, 0.5)
    assert (math["error_accuracy"], math["correct_accuracy"]) == (1.0, 0.5)
    assert math["f1"] == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert results["overall"] == pytest.approx((0.5 + 2 / 3) / 2) and results["threshold"] == 0.5
    assert list(results["categories"]) == ["gsm8k", "math"]  # the paper's column order


def test_processbench_threshold_chosen_on_a_stated_split_then_applied_to_all(tmp_path):
    items = load_step_items("processbench", processbench_files(tmp_path / "pb"))
    scores = {i: s for i, _, s in PROCESSBENCH}
    # On gsm8k every threshold in (0.2, 0.4] gets all four right (gsm8k-0 needs > 0.2, gsm8k-1 <= 0.4):
    # the smallest candidate there, 0.4, is chosen.
    assert choose_threshold(items, scores, "gsm8k") == 0.4
    results = step_tables("processbench", items, scores, threshold_split="gsm8k")
    assert results["threshold"] == 0.4 and results["threshold_from"] == "gsm8k"
    assert results["splits"]["gsm8k"]["f1"] == 1.0
    assert results["splits"]["math"]["f1"] == pytest.approx(2 * 1.0 * 0.5 / 1.5)  # math-2 still below
    with pytest.raises(ValueError, match="no ProcessBench split 'omnimath'"):
        choose_threshold(items, scores, "omnimath")


# VisualProcessBench: data source, process_correctness, step scores (predicted correct at >= 0.5)
VISUALPROCESSBENCH = [
    ("MathVerse", [1, 1, -1], [0.9, 0.4, 0.2]),  # (1,T) (1,F) (-1,F)
    ("MathVerse", [1, 0, -1], [0.6, 0.1, 0.7]),  # (1,T) neutral (-1,T)
    ("MMMU", [-1, -1], [0.5, 0.3]),  # (-1,T) (-1,F)
    ("MMMU", [1, 1, 0], [0.8, 0.95, 0.9]),  # (1,T) (1,T) neutral
]


def visualprocessbench_file(folder: Path) -> Path:
    """test.jsonl as the hub publishes it, its images as paths relative to the file."""
    (folder / "images").mkdir(parents=True)
    shape_image("red").save(folder / "images" / "a.png")
    shape_image("blue", "square").save(folder / "images" / "b.png")
    rows = [{"image": ["images/a.png"] + (["images/b.png"] if n % 2 else []), "question": f"Question {n}?",
             "answer": "A", "response": {"steps": [f"Step {k}." for k in range(len(labels))],
                                         "process_correctness": labels},
             "policy_model": "InternVL2.5-8B", "data_source": source}
            for n, (source, labels, _) in enumerate(VISUALPROCESSBENCH)]  # fmt: skip
    path = folder / "test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_visualprocessbench_table_by_hand(tmp_path):
    items = load_step_items("visualprocessbench", visualprocessbench_file(tmp_path / "vpb"))
    assert [len(i.images) for i in items] == [1, 2, 1, 2] and items[0].images[0].startswith("data:image")
    results = step_tables("visualprocessbench", items, {i.id: s for i, (_, _, s) in zip(items, VISUALPROCESSBENCH,
                                                                                       strict=True)})  # fmt: skip
    # MathVerse: correct tp 2 fn 1 fp 1 -> F1 4/6; wrong tp 1 fn 1 fp 1 -> F1 2/4
    # MMMU: correct tp 2 fp 1 fn 0 -> F1 4/5; wrong tp 1 fn 1 fp 0 -> F1 2/3
    assert results["categories"]["MathVerse"] == pytest.approx((4 / 6 + 2 / 4) / 2)
    assert results["categories"]["MMMU"] == pytest.approx((4 / 5 + 2 / 3) / 2)
    assert list(results["categories"]) == ["MMMU", "MathVerse"]  # the paper's column order
    # pooled: correct tp 4 fp 2 fn 1 -> 8/11; wrong tp 2 fp 1 fn 2 -> 4/7
    assert results["overall"] == pytest.approx((8 / 11 + 4 / 7) / 2)
    assert results["neutral_steps"] == 2 and results["steps"] == 9
    weighted = (5 * (4 / 6 + 2 / 4) / 2 + 4 * (4 / 5 + 2 / 3) / 2) / 9
    assert results["sources_weighted"] == pytest.approx(weighted)


def test_a_solution_whose_steps_and_labels_disagree_is_refused(tmp_path):
    path = visualprocessbench_file(tmp_path / "vpb")
    row = json.loads(path.read_text().splitlines()[0])
    row["response"]["process_correctness"] = [1]
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match="3 steps but 1 labels"):
        load_step_items("visualprocessbench", path)


def test_a_step_tag_in_the_text_is_removed_before_scoring(tmp_path):
    items = load_step_items("processbench", processbench_files(tmp_path / "pb"))
    items[0].steps[0] = "Step <|quad_end|>one."
    assert items[0].sample("<|quad_end|>")["steps"][0] == "Step one."


def test_step_records_in_visualprocessbench_format_score_as_the_trainers_metrics_do(tmp_path):
    """Two implementations of step macro-F1 (the trainer's held-out metric and the benchmark's) agree on
    the synthetic held-out split written in VisualProcessBench's format (steps after the first error:
    neutral there, unlabelled in training)."""
    import random

    from loadtest.prm_tables import visualprocessbench_rows
    from vlreward.training.data.synthetic_steps import generate_steps
    from vlreward.training.steps import step_metrics

    records, _ = generate_steps(tmp_path, {"hallucination": 12, "reasoning": 12}, seed=3, split="heldout")
    rng = random.Random(0)
    scores = [[rng.random() for _ in record.steps] for record in records]
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in visualprocessbench_rows(records)))
    items = load_step_items("visualprocessbench", path)
    results = step_tables("visualprocessbench", items, {item.id: s for item, s in zip(items, scores, strict=True)})
    expected = step_metrics(records, scores)
    assert results["overall"] == pytest.approx(expected["macro_f1"], abs=1e-12)
    for category, figures in expected["categories"].items():
        assert results["categories"][category] == pytest.approx(figures["macro_f1"], abs=1e-12)
