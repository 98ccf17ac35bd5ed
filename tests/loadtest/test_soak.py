"""The overload soak in its CI form: 30 s of mixed valid and broken traffic at twice the measured
capacity against a real `vlreward serve` (loadtest/soak.py checks and reports; the 5-minute run is a
benchmark, its figures in docs/performance.md)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_a_30_second_overload_soak_keeps_every_promise(tmp_path):
    output = tmp_path / "soak"
    command = [sys.executable, "-m", "loadtest.soak", "--duration", "30", "--output", str(output)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    report = json.loads(output.with_suffix(".json").read_text())
    assert done.returncode == 0 and report["ok"], (report["checks"], report["statuses"], done.stdout[-2000:])
    assert report["rate_rps"] == 2 * report["capacity_rps"] and report["duration_s"] == 30
    assert report["statuses"]["valid 200"] > 0 and report["statuses"]["valid 429"] > 0  # served and shed
    assert {"broken 400", "broken 404", "broken 405", "broken 413", "broken 422"} <= set(report["statuses"])
    assert report["memory_growth"] < 0.10 and output.with_suffix(".png").stat().st_size > 0
