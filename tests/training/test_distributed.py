"""The distributed path for real: 2-process data parallel (gloo, torchrun) on stage 2's mixed data, and
a process model's step training (ranks holding different numbers of labelled steps)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from tests.helpers import free_port
from vlreward.training.data.synthetic import build_synthetic
from vlreward.training.data.synthetic_steps import build_synthetic_steps

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


def _train(tmp_path, base, data, processes: int, per_device: int, *flags: str):
    """`vlreward train` in one process, or under torchrun in several; returns the run folder."""
    recipe = tmp_path / f"recipe-{processes}.yaml"
    recipe.write_text(yaml.safe_dump({**RECIPE, "batch_size": per_device}))
    output = tmp_path / f"run-{processes}"
    command = ["-m", "vlreward", "train", "--recipe", str(recipe), "--data", str(data)]
    command += ["--output", str(output), "--base", str(base), *flags]
    if processes > 1:
        launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
        launcher += ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
        command = launcher + command
    result = subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return output


def _same_curve(runs: dict[int, list[float]]) -> None:
    assert len(runs[1]) == len(runs[2]) == 3
    for one, two in zip(runs[1], runs[2], strict=True):
        assert abs(one - two) <= 1e-4, (runs[1], runs[2])


def test_two_process_stage2_with_text_only_batches_matches_one_process(tiny_base, tmp_path):
    # 10 text-only pairs and 2 image pairs: with 2 pairs per rank, most per-rank batches have no image,
    # so a rank skips the vision tower unless the trainer keeps it in the graph (DDP would fail).
    train_dir, _ = build_synthetic(tmp_path / "data", {"hallucination": 2, "text": 10}, {"general": 1})
    _same_curve({n: _losses(_train(tmp_path, tiny_base, train_dir, n, 4 // n)) for n in (1, 2)})


def test_two_process_step_training_matches_one_process_and_exports_a_process_model(tiny_base, tmp_path):
    # Solutions of 2-4 steps whose steps after the first error are unlabelled: the two ranks' batches hold
    # different numbers of labelled steps, so each rank's loss must be its share of the whole batch's.
    train_dir, _ = build_synthetic_steps(tmp_path / "data", {"hallucination": 2, "reasoning": 2}, {"reasoning": 1})
    runs = {n: _train(tmp_path, tiny_base, train_dir, n, 4 // n, "--kind", "process") for n in (1, 2)}
    _same_curve({n: _losses(run) for n, run in runs.items()})
    from vlreward.service.backends.transformers import TransformersBackend
    from vlreward.service.kinds import ProcessHead

    checkpoint = runs[2] / "checkpoint-final"
    exported = tmp_path / "prm"
    result = subprocess.run([sys.executable, "-m", "vlreward", "export", "--checkpoint", str(checkpoint),
                             "--output", str(exported)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    served = TransformersBackend(exported, dtype="float32", device="cpu")
    assert served.process == ProcessHead() and served.check_probe() is not None


def test_two_process_judge_training_matches_one_process_and_exports_a_judge(tiny_base, tmp_path):
    # Rated pairs, text-only and with images: every pair is four questions (both orders, each response rated).
    ratings = (5.0, 1.0)
    train_dir, _ = build_synthetic(tmp_path / "data", {"hallucination": 2, "text": 10}, {"general": 1}, ratings=ratings)
    runs = {n: _train(tmp_path, tiny_base, train_dir, n, 4 // n, "--kind", "judge") for n in (1, 2)}
    _same_curve({n: _losses(run) for n, run in runs.items()})
    from vlreward.service.backends.transformers import TransformersBackend
    from vlreward.service.judge import read_declaration

    exported = tmp_path / "judge"
    result = subprocess.run([sys.executable, "-m", "vlreward", "export", "--checkpoint",
                             str(runs[2] / "checkpoint-final"), "--output", str(exported)],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    served = TransformersBackend(exported, dtype="float32", device="cpu")
    assert served.judge == read_declaration("generic") and served.check_probe() is not None
