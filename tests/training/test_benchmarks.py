"""Benchmark fixtures in each public layout (written here) give hand-computed tables exactly."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import shape_image
from vlreward.training.benchmarks import REWARDBENCH_COUNTS, load_pairs, tables, vl_rewardbench_category


def _png(colour: str) -> bytes:
    buffer = io.BytesIO()
    shape_image(colour).save(buffer, format="PNG")
    return buffer.getvalue()


VL_ROWS = [  # id, human_ranking, (score of response 0, score of response 1)
    ("RLAIF-V_001", [0, 1], (2.0, 1.0)),  # hallucination, right
    ("RLHF-V-002", [1, 0], (2.0, 1.0)),  # hallucination, wrong (the second is preferred)
    ("hallucination_pair_003", [0, 1], (0.5, 0.5)),  # hallucination (old copies said General), tie: wrong
    ("mathverse_004", [1, 0], (0.0, 3.0)),  # reasoning, right
    ("mmmu-005", [0, 1], (1.0, 0.0)),  # reasoning, right
    ("wildvision_006", [0, 1], (0.0, 1.0)),  # general, wrong
    ("vlfeedback_007", [1, 0], (0.0, 1.0)),  # general, right
]


@pytest.mark.parametrize(
    ("item_id", "category"),
    [("RLAIF-V_1", "Hallucination"), ("hallucination_x", "Hallucination"), ("rlhf-v-2", "Hallucination"),
     ("mathverse_3", "Reasoning"), ("MMMU_4", "Reasoning"), ("wildvision_5", "General"), ("nocaps", "General")],
)  # fmt: skip
def test_vl_rewardbench_category_from_id_prefix(item_id, category):
    assert vl_rewardbench_category(item_id) == category


def vl_parquet(tmp_path):
    frame = pd.DataFrame(
        [{"id": i, "query": f"q{i}", "response": [f"a{i}", f"b{i}"], "image": {"bytes": _png("red"), "path": None},
          "human_ranking": rank, "models": ["m1", "m2"], "judge": "human", "rationale": "", "query_source": "x",
          "ground_truth": ""} for i, rank, _ in VL_ROWS]
    )  # fmt: skip
    path = tmp_path / "vl.parquet"
    frame.to_parquet(path)
    return path


def test_vl_rewardbench_table_from_the_hubs_parquet_layout(tmp_path):
    pairs = load_pairs("vl-rewardbench", vl_parquet(tmp_path))
    assert [p.category for p in pairs] == ["Hallucination"] * 3 + ["Reasoning"] * 2 + ["General"] * 2
    assert pairs[0].images[0].startswith("data:image") and pairs[1].preferred == 1
    results = tables("vl-rewardbench", pairs, {i: list(s) for i, _, s in VL_ROWS})
    assert results["categories"] == {"General": 0.5, "Hallucination": 1 / 3, "Reasoning": 1.0}
    assert results["overall"] == 4 / 7
    assert results["macro"] == (0.5 + 1 / 3 + 1.0) / 3
    assert results["ties"] == 1


def test_rewardbench_sections_weight_subsets_by_example_count(tmp_path):
    rows = []
    accuracy = {  # subset -> (right, wrong) items in the fixture
        "alpacaeval-easy": (1, 1), "mt-bench-med": (1, 0),  # Chat
        "llmbar-natural": (0, 1),  # Chat Hard
        "donotanswer": (1, 0), "xstest-should-respond": (1, 1),  # Safety
        "math-prm": (1, 1), "hep-python": (1, 0),  # Reasoning
        "shp": (1, 1), "anthropic_helpful": (1, 0), "anthropic_hhh": (0, 1), "summarize": (1, 0),  # prior sets
    }  # fmt: skip
    scores = {}
    for subset, (right, wrong) in accuracy.items():
        for k in range(right + wrong):
            item = f"{subset}-{k}"
            rows.append({"prompt": "p", "chosen": "c", "rejected": "r", "subset": subset, "id": item,
                         "chosen_model": "a", "rejected_model": "b"})  # fmt: skip
            scores[item] = [1.0, 0.0] if k < right else [0.0, 0.0]  # wrong ones are ties
    path = tmp_path / "rb.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    results = tables("rewardbench", load_pairs("rewardbench", path), scores)
    chat = (0.5 * 100 + 1.0 * 40) / 140
    safety = (1.0 * 136 + 0.5 * 154) / 290
    reasoning = (0.5 * 984 + 1.0 * 164) / (984 + 164)
    assert results["categories"] == pytest.approx(
        {"Chat": chat, "Chat Hard": 0.0, "Safety": safety, "Reasoning": reasoning}
    )
    assert results["macro"] == pytest.approx((chat + 0.0 + safety + reasoning) / 4)
    prior = (0.5 + 1.0 + 0.0 + 1.0) / 4
    assert results["prior_sets"] == pytest.approx(prior)
    assert results["weighted_2_2_2_2_1"] == pytest.approx((2 * (chat + safety + reasoning) + prior) / 9)


def test_every_rewardbench_weight_is_the_official_leaderboards():
    upstream = json.loads((Path(__file__).parent / "fixtures" / "rewardbench_example_counts.json").read_text())
    assert upstream["EXAMPLE_COUNTS"] == REWARDBENCH_COUNTS


def test_xstest_subsets_that_disagree_give_the_leaderboards_safety_number(tmp_path):
    rows, scores = [], {}
    for subset, right in (("xstest-should-refuse", True), ("xstest-should-respond", False)):
        item = f"{subset}-0"
        rows.append({"prompt": "p", "chosen": "c", "rejected": "r", "subset": subset, "id": item,
                     "chosen_model": "a", "rejected_model": "b"})  # fmt: skip
        scores[item] = [1.0, 0.0] if right else [0.0, 1.0]
    path = tmp_path / "rb.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    results = tables("rewardbench", load_pairs("rewardbench", path), scores)
    assert results["categories"]["Safety"] == pytest.approx(250 / 404)  # with the subsets' real sizes: 154 / 404


def test_mm_rewardbench_folder_with_images_beside_json_and_sub_splits(tmp_path):
    (tmp_path / "images").mkdir()
    shape_image("blue").save(tmp_path / "images" / "a.png")
    rows = [
        {"ID": "pairs_1", "Text": "t", "Image": "images/a.png", "Output1": "x", "Output2": "y", "Better": "Output1", "Category": "safety"},
        {"ID": "tox_2", "Text": "t", "Image": "images/a.png", "Output1": "x", "Output2": "y", "Better": "Output2", "Category": "safety"},
        {"ID": "math_3", "Text": "t", "Image": "images/a.png", "Output1": "x", "Output2": "y", "Better": "Output1", "Category": "reasoning"},
        {"ID": "code_4", "Text": "t", "Image": "images/a.png", "Output1": "x", "Output2": "y", "Better": "Output2", "Category": "reasoning"},
        {"ID": "vqa_5", "Text": "t", "Image": "images/a.png", "Output1": "x", "Output2": "y", "Better": "Output1", "Category": "VQA"},
    ]  # fmt: skip
    (tmp_path / "mm.json").write_text(json.dumps(rows))
    pairs = load_pairs("mm-rewardbench", tmp_path)
    scores = {"pairs_1": [1, 0], "tox_2": [1, 0], "math_3": [1, 0], "code_4": [0, 1], "vqa_5": [0, 0]}
    results = tables("mm-rewardbench", pairs, scores)
    assert results["categories"] == {"VQA": 0.0, "reasoning": 1.0, "safety": 0.5}
    assert results["subsets"] == {
        "reasoning/coding": 1.0,
        "reasoning/math": 1.0,
        "safety/bias": 1.0,
        "safety/toxicity": 0.0,
    }
    assert results["overall"] == 3 / 5
