"""Training's commands run the way a user runs them: `vlreward ...` in a subprocess, files in, files out."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from safetensors.torch import load_file

from tests.helpers import VLREWARD, shape_image
from vlreward.service.model.checkpoint import read_config
from vlreward.service.model.probe import read_probe
from vlreward.training.data.schema import read_records

pytestmark = pytest.mark.slow  # end-to-end: real processes, minutes (make test runs them)

SHORT_RECIPE = """
name: short
base_model: tiny
batch_size: 2
seed: 5
num_threads: 2
log_every: 2
save_every: 3
stages:
  - {name: stage1, learning_rate: 1.0e-3, max_steps: 4, epochs: 10}
  - {name: stage2, learning_rate: 5.0e-4, max_steps: 2, epochs: 10, include_text: true}
"""


def vlreward(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([VLREWARD, *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"vlreward {' '.join(args)}\n{done.stderr[-3000:]}"
    return done


def weights(run: Path) -> dict:
    (path,) = (run / "checkpoint-final").glob("model*.safetensors")
    return load_file(path)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    vlreward("data", "synthetic", "--output", str(out), "--per-category", "12", "--seed", "1")
    return out


@pytest.fixture(scope="module")
def trained(synthetic, tmp_path_factory) -> tuple[Path, Path]:
    """(recipe file, run folder) of one short `vlreward train`."""
    root = tmp_path_factory.mktemp("train")
    recipe = root / "short.yaml"
    recipe.write_text(SHORT_RECIPE)
    run = root / "run"
    vlreward("train", "--data", str(synthetic / "train"), "--heldout", str(synthetic / "heldout"),
             "--output", str(run), "--recipe", str(recipe))  # fmt: skip
    return recipe, run


def test_data_synthetic_writes_both_splits_with_every_category(synthetic):
    train = list(read_records(synthetic / "train"))
    heldout = list(read_records(synthetic / "heldout"))
    assert {r.category for r in train} == {"hallucination", "reasoning", "general", "text"}
    assert len(train) == 48 and len(heldout) == 9
    assert not {r.id for r in train} & {r.id for r in heldout}


def test_two_training_runs_give_identical_weights_and_resume_reaches_the_same_end(synthetic, trained, tmp_path):
    recipe, run = trained
    again = tmp_path / "again"
    vlreward("train", "--data", str(synthetic / "train"), "--heldout", str(synthetic / "heldout"),
             "--output", str(again), "--recipe", str(recipe))  # fmt: skip
    first, second = weights(run), weights(again)
    assert first.keys() == second.keys()
    assert all(first[name].equal(second[name]) for name in first)

    resumed = tmp_path / "resumed"
    vlreward("train", "--data", str(synthetic / "train"), "--heldout", str(synthetic / "heldout"),
             "--output", str(resumed), "--recipe", str(recipe), "--base", (run / "base_model.txt").read_text().strip(),
             "--resume", str(run / "checkpoint-3"))  # fmt: skip
    third = weights(resumed)
    assert all(first[name].allclose(third[name], atol=1e-6) for name in first)


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> tuple[Path, str]:
    _, run = trained
    out = tmp_path_factory.mktemp("exported") / "model"
    printed = vlreward("export", "--checkpoint", str(run / "checkpoint-final"), "--output", str(out))
    return out, printed.stderr


def test_export_writes_the_checkpoint_contract_with_a_probe(exported):
    out, printed = exported
    assert "probe score" in printed
    assert read_config(out).architectures == ["Qwen2_5_VLForSequenceClassification"]
    assert read_probe(out) is not None


def test_pairs_turns_ranked_responses_into_preference_pairs(exported, tmp_path):
    model, _ = exported
    rows = [{"id": "p1", "prompt": "Colour?", "responses": ["Red.", "Blue.", "A green circle."]}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    vlreward("pairs", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "pairs.jsonl"),
             "--model", str(model))  # fmt: skip
    (pair,) = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert pair["id"] == "p1" and pair["chosen_score"] >= pair["rejected_score"]
    assert {pair["chosen"], pair["rejected"]} <= set(rows[0]["responses"])


def test_bootstrap_base_bench_size_writes_the_bench_dimensions(tmp_path):
    vlreward("bootstrap-base", str(tmp_path / "bench"), "--size", "bench")
    config = json.loads((tmp_path / "bench" / "config.json").read_text())
    text = config.get("text_config", config)
    assert text["hidden_size"] == 512 and text["num_hidden_layers"] == 8


def test_data_convert_then_clean_drops_the_duplicate_pair(tmp_path):
    import io

    buffer = io.BytesIO()
    shape_image("blue").save(buffer, format="PNG")
    png = buffer.getvalue()
    row = {"ds_name": "RLAIF-V", "image": {"bytes": png, "path": None}, "question": "Colour?", "chosen": "Blue.",
           "rejected": "Red.", "origin_dataset": "coco", "origin_split": "train", "idx": 7, "image_path": "x.png"}  # fmt: skip
    other = {**row, "chosen": "It is blue, clearly.", "rejected": "It is green.", "idx": 8}
    pd.DataFrame([row, dict(row), other]).to_parquet(tmp_path / "rlaif.parquet")
    converted = tmp_path / "converted"
    vlreward("data", "convert", "--source", "rlaif-v", "--input", str(tmp_path / "rlaif.parquet"),
             "--output", str(converted))  # fmt: skip
    assert len(list(read_records(converted))) == 3
    cleaned = tmp_path / "cleaned"
    printed = vlreward("data", "clean", "--input", str(converted), "--output", str(cleaned)).stdout
    assert "exact" in printed
    kept = list(read_records(cleaned))
    assert len(kept) == 2 and {r.chosen for r in kept} == {"Blue.", "It is blue, clearly."}
