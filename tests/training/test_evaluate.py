"""Accuracy tables (hand-computed) and `vlreward eval --benchmark synthetic` outputs."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from vlreward.training.cli import app
from vlreward.training.pair_metrics import pairwise_accuracy


def test_pairwise_accuracy_count_ties_as_wrong_and_average_categories():
    categories = ["a", "a", "a", "b", "b"]
    scores = [(1.0, 0.0), (0.0, 1.0), (0.5, 0.5), (2.0, 1.0), (3.0, -1.0)]
    table = pairwise_accuracy(categories, scores)
    assert table["categories"] == {"a": 1 / 3, "b": 1.0}
    assert table["overall"] == 3 / 5
    assert table["macro"] == (1 / 3 + 1.0) / 2
    assert table["ties"] == 1 and table["n"] == 5


def test_eval_synthetic_writes_results_json_markdown_predictions_and_png(tiny_reward, tmp_path):
    result = CliRunner().invoke(
        app, ["eval", "--benchmark", "synthetic", "--model", str(tiny_reward), "--output", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["benchmark"] == "synthetic" and results["model"] == "tiny-reward"
    assert set(results["categories"]) == {"hallucination", "reasoning", "general"}
    assert 0 <= results["overall"] <= 1 and len(results["checkpoint_hash"]) == 16
    assert 0 <= results["extra_image_swap_hallucination"] <= 1
    predictions = (tmp_path / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == results["n"] and len(json.loads(predictions[0])["scores"]) == 2
    assert (tmp_path / "results.png").stat().st_size > 1000
    assert "| general | hallucination | reasoning | Overall | Macro |" in (tmp_path / "results.md").read_text()
