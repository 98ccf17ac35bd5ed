"""Runs code of the RLHF frameworks whose pins clash with ours (verl, OpenRLHF) in a subprocess, with
the folder `make frameworks` installs them into (tests/requirements-frameworks.txt) on PYTHONPATH."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[3]


def frameworks_folder() -> Path:
    folder = Path(os.environ.get("VLREWARD_FRAMEWORKS", REPOSITORY / ".frameworks"))
    if not (folder / ".installed").exists():
        pytest.fail(f"{folder} is missing: run `make frameworks` (installs tests/requirements-frameworks.txt)")
    return folder


def run_framework_code(code: str, arguments: dict, timeout_s: float = 300) -> dict:
    """Run ``code`` (which reads ``ARGS`` and prints one JSON object last) with the frameworks importable."""
    environment = dict(os.environ, PYTHONPATH=str(frameworks_folder()), RAY_USAGE_STATS_ENABLED="0")
    script = "import json, sys\nARGS = json.loads(sys.argv[1])\n" + textwrap.dedent(code)
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(arguments)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=environment,
        cwd=frameworks_folder(),  # not the repository: its tests/ package must not shadow anything
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
