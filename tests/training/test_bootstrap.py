"""`vlreward bootstrap`: the embedded default model, its time budget and its accuracy targets."""

from __future__ import annotations

import json
import subprocess

from service.model.checkpoint import read_config
from service.model.probe import read_probe
from tests.helpers import VLREWARD
from training.data.synthetic import CATEGORIES
from training.export import TRAINING_INFO_FILE

BOOTSTRAP_SECONDS = 300  # the budget on this 2-core machine


def test_bootstrap_builds_the_default_model_within_five_minutes(default_home):
    assert default_home.seconds <= BOOTSTRAP_SECONDS, f"bootstrap took {default_home.seconds:.0f} s"
    for step in ("[1/4]", "[2/4]", "[3/4]", "[4/4]", "default model ready"):
        assert step in default_home.log
    read_config(default_home.model)  # the checkpoint contract
    assert read_probe(default_home.model) is not None
    info = json.loads((default_home.model / TRAINING_INFO_FILE).read_text())
    assert [stage["name"] for stage in info["recipe"]["stages"]] == ["stage1", "stage2"]


def test_default_model_meets_its_targets_and_reads_the_image(default_home, tmp_path):
    """>= 90% overall and >= 85% per category on the held-out set; with the image swapped for one that
    matches the rejected response, that response wins on >= 90% of hallucination pairs."""
    command = [
        VLREWARD,
        "eval",
        "--benchmark",
        "synthetic",
        "--model",
        str(default_home.model),
        "--output",
        str(tmp_path),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert "Overall" in done.stdout and (tmp_path / "results.png").is_file()
    assert set(results["categories"]) == set(CATEGORIES)
    assert results["overall"] >= 0.90, results
    assert all(results["categories"][name] >= 0.85 for name in CATEGORIES), results
    assert results["extra_image_swap_hallucination"] >= 0.90, results
