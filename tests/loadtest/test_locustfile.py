"""The Locust file against a live server: real locust, headless, a few seconds, no failed request."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import LiveServer


def test_locust_runs_the_mix_against_a_live_server_without_failures(hf_backend, tmp_path):
    mix = tmp_path / "mix.json"
    mix.write_text(json.dumps({"samples": 24, "group": 4, "image_size": [56, 56], "response_words": [4, 12]}))
    locust = Path(sys.executable).parent / "locust"
    with LiveServer(hf_backend) as live:
        done = subprocess.run(
            [str(locust), "-f", "loadtest/locustfile.py", "--host", live.url, "--headless", "-u", "4", "-r", "4",
             "-t", "6s", "--csv", str(tmp_path / "run"), "--exit-code-on-error", "1", "--only-summary"],
            capture_output=True, text=True, timeout=180, env={"VLREWARD_MIX": str(mix), "PATH": str(locust.parent)},
        )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {row["Name"]: row for row in csv.DictReader((tmp_path / "run_stats.csv").open())}
    assert int(rows["Aggregated"]["Request Count"]) > 0 and int(rows["Aggregated"]["Failure Count"]) == 0
    assert {"/score (1 sample)", "/score (GRPO group)", "/rank"} <= set(rows)
