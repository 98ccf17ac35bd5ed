"""The distributed path for real: 2-process data parallel (gloo, torchrun) on stage 2's mixed data."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from tests.helpers import free_port
from vlreward.training.data.synthetic import build_synthetic

pytestmark = pytest.mark.slow  # end-to-end: real processes, minutes (make test runs them)

RECIPE = {
    "name": "ddp-test",
    "seed": 5,
    "log_every": 1,
    "num_threads": 1,
    "stages": [{"name": "stage2", "learning_rate": 1e-3, "max_steps": 3, "epochs": 10, "include_text": True}],
}


def _losses(run_dir) -> list[float]:
    lines = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    return [entry["loss"] for entry in lines if "loss" in entry]


def test_two_process_stage2_with_text_only_batches_matches_one_process(tiny_base, tmp_path):
    # 10 text-only pairs and 2 image pairs: with 2 pairs per rank, most per-rank batches have no image,
    # so a rank skips the vision tower unless the trainer keeps it in the graph (DDP would fail).
    train_dir, _ = build_synthetic(tmp_path / "data", {"hallucination": 2, "text": 10}, {"general": 1})
    runs = {}
    for processes, per_device in ((1, 4), (2, 2)):
        recipe = tmp_path / f"recipe-{processes}.yaml"
        recipe.write_text(yaml.safe_dump({**RECIPE, "batch_size": per_device}))
        output = tmp_path / f"run-{processes}"
        command = ["-m", "vlreward", "train", "--recipe", str(recipe), "--data", str(train_dir)]
        command += ["--output", str(output), "--base", str(tiny_base)]
        if processes > 1:
            launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
            launcher += ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
            command = launcher + command
        result = subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[processes] = _losses(output)
    assert len(runs[1]) == len(runs[2]) == 3
    for one, two in zip(runs[1], runs[2], strict=True):
        assert abs(one - two) <= 1e-4, (runs[1], runs[2])
