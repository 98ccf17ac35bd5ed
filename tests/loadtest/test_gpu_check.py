"""The GPU check's CPU mode (``--size tiny``) as CI runs it: the whole script, its table, its JSON."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # a subprocess that builds, serves and measures a model (about 20 s)


def test_the_gpu_check_runs_on_cpu_and_http_scores_equal_in_process_scores(tmp_path, capsys):
    output = tmp_path / "gpu_check_tiny"
    done = subprocess.run(
        [sys.executable, "-m", "loadtest.gpu_check", "--size", "tiny", "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    with capsys.disabled():  # CI's log shows the table
        print("\n" + done.stdout[done.stdout.find("GPU check:") :])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads(output.with_suffix(".json").read_text())
    assert report["http_vs_in_process_max_abs"] <= 1e-5
    assert report["dtype"] == "float32" and report["device"] == "cpu"  # dtype auto on a CPU
    packing = report["packing"]  # mixed lengths: padded against packed, the same scores
    assert packing["padding_share"] > 0.1 and packing["max_abs_difference"] <= 1e-5
    measured = {row["mode"] for row in report["rows"]}
    assert {
        "in-process, 32 per forward, mixed lengths, packed",
        "in-process, 32 per forward, pre-encoded, no cached opening",
    } <= measured
    embed = report["patch_embed"]
    assert embed["patches"] > 0 and embed["convolution_ms"] > 0 and embed["product_ms"] > 0
    assert embed["max_abs_difference"] <= 1e-4
    modes = [row["mode"] for row in report["rows"]]
    assert modes[0].startswith("naive loop") and sum("HTTP /score" in m for m in modes) == 4
    assert all(row["samples_per_s"] > 0 and row["mfu"] > 0 for row in report["rows"])
    assert report["rank"]["max_abs_score_difference"] <= 1e-4 and report["probe_check"]["passes"]
    assert report["grpo"]["max_abs_score_difference"] <= 1e-5 and report["grpo"]["speed-up"] > 0
    assert "HTTP /score, 32 per request" in done.stdout and "/rank N=8" in done.stdout
    assert report["stamping_memory"] == {"reserved_before_gb": None, "reserved_after_gb": None}  # no GPU here
    assert "reserved GPU memory around stamping the probe: n/a (CPU) before" in done.stdout
