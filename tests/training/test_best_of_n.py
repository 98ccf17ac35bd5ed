"""Best-of-N with a process model: every aggregate's pick, by hand and through `vlreward eval`."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from vlreward.training.best_of_n import bon_groups, bon_tables, picks_right
from vlreward.training.cli import app
from vlreward.training.data.schema import StepRecord


def candidate(name: str, labels: list[float | None]) -> StepRecord:
    return StepRecord(id=name, source="s", category="c", conversation=[], steps=["x"] * len(labels), labels=labels)


def test_each_aggregate_picks_by_hand():
    right = candidate("right", [1.0, 1.0, 1.0])
    wrong_claim = candidate("claim", [1.0, 0.0, None])
    wrong_end = candidate("end", [1.0, 1.0, 0.0])
    scores = {"right": [0.9, 0.6, 0.7], "claim": [0.95, 0.5, 0.99], "end": [0.99, 0.99, 0.2]}
    # min: right 0.6, claim 0.5, end 0.2 -> right | last: claim 0.99 -> wrong | mean: end 0.727 -> wrong
    # product: right 0.378, claim 0.470 -> wrong
    results = bon_tables([[right, wrong_claim, wrong_end]], scores)
    assert results["categories"] == {"min": 1.0, "last": 0.0, "mean": 0.0, "product": 0.0}
    assert results["best_aggregates"] == ["min"] and results["unit"] == "groups of N=3"
    assert not picks_right([right, wrong_claim], {"right": 0.5, "claim": 0.5})  # a tie with a wrong one


def test_the_set_has_every_error_place_twice_per_item(tmp_path):
    groups = bon_groups(tmp_path, {"hallucination": 2, "reasoning": 1})
    assert len(groups) == 3 and all(len(group) == 6 for group in groups)
    assert [sum(r.first_error == -1 for r in group) for group in groups] == [2, 2, 2]
    assert len({tuple(r.images) for group in groups for r in group}) == 3  # one image set per item


def test_vlreward_eval_synthetic_bon_on_a_process_model(tiny_process, tiny_reward, tmp_path, monkeypatch):
    monkeypatch.setattr("vlreward.training.best_of_n.BON_PER_CATEGORY", {"hallucination": 3, "reasoning": 3})
    result = CliRunner().invoke(app, ["eval", "--benchmark", "synthetic-bon", "--model", str(tiny_process),
                                      "--output", str(tmp_path / "bon")])  # fmt: skip
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "bon" / "results.json").read_text())
    assert set(results["categories"]) == {"min", "last", "mean", "product"} and results["n"] == 6
    assert all(0.0 <= value <= 1.0 for value in results["categories"].values())
    assert len((tmp_path / "bon" / "predictions.jsonl").read_text().splitlines()) == 36
    assert "| min | last | mean | product |" in (tmp_path / "bon" / "results.md").read_text()
    refused = CliRunner().invoke(app, ["eval", "--benchmark", "synthetic-bon", "--model", str(tiny_reward),
                                       "--output", str(tmp_path / "scalar")])  # fmt: skip
    assert refused.exit_code == 2
