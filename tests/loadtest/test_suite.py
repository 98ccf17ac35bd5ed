"""The performance suite in smoke mode (a few requests per row, one round), as CI runs it: every path
gives the solo scores (the suite fails otherwise), every comparison is reported; no timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # starts our two servers and an in-process vLLM engine (minutes)


def test_the_suite_in_smoke_mode_runs_every_row_and_every_path_scores_the_same(
    tiny_reward, vllm_serve, tmp_path, capsys
):
    done = subprocess.run(
        [sys.executable, "-m", "loadtest.suite", "--smoke", "--model", str(tiny_reward),
         "--vllm-serve-url", vllm_serve.url, "--output", str(tmp_path)],
        capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    with capsys.disabled():  # CI's log shows the table
        print("\n" + done.stdout[done.stdout.find("comparison (A / B)") :])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "suite_tiny_smoke.json").read_text())
    assert report["scores_ok"] and all(row["ok"] for row in report["score_checks"])
    paths = {row["path"] for row in report["score_checks"]}
    assert {"/score GRPO groups (shared prefix)", "/rank N=8 (sequential row)", "vLLM AsyncLLM in process"} <= paths
    assert {"/score, two models in one server", "/score, one server per model", "/score, process model",
            "/score, PRM GRPO groups (shared prefix)", "/score PRM, vLLM per-step", "/score PRM, vLLM step pooling",
            "/score PRM GRPO groups, vLLM per-step", "/score PRM GRPO groups, vLLM step pooling",
            "/score, judge ratings", "/compare, judge (debiased)",
            "judge generate: vLLM backend vs vllm serve answers",
            "/score, ensemble of 3 heads vs of 3 models",
            "/score, ensemble of 3 adapters vs of merged models",
            "vlreward score: ray engine vs in process"} <= paths  # fmt: skip
    assert any(p.startswith("vllm serve /classify") for p in paths)
    names = [c["name"] for c in report["comparisons"]]
    for expected in ("service c=8 / naive loop", "GRPO G=8 shared / own images", "/rank N=8 / 8 sequential /score",
                     "/rank N=8 / 8 concurrent /score", "two models: one server / two servers",
                     "PRM service c=8 / in-process loop", "PRM GRPO G=8 shared / own images",
                     "vLLM PRM per-step / step pooling, c=16", "vLLM PRM GRPO G=8 per-step / step pooling",
                     "judge /score c=8 / model-card loop", "judge /compare c=8 / model-card loop",
                     "judge generate tokens/s, vLLM backend / vllm serve, c=8",
                     "two models: two servers p99 / one server p99", "two models: memory, two servers / one",
                     "vLLM backend / vllm serve, c=8", "forward time / p99 latency c=1",
                     "K=3 heads one pass / K models", "K=3 heads: memory, K models / heads",
                     "K=3 adapters one base / K models", "K=3 adapters: memory, K models / adapters",
                     "score --engine ray / in process"):  # fmt: skip
        assert expected in names
    assert all(c["median_ratio"] > 0 for c in report["comparisons"])
    for c in report["comparisons"]:  # judged on the exact median, which the printed table rounds
        assert c["target_met"] == (None if c["target"] is None else c["median_ratio"] >= c["target"])
    assert " met " in done.stdout
    assert (tmp_path / "suite_tiny_smoke.png").stat().st_size > 0
