"""schemathesis (the real package, its CLI) against the live /openapi.json of a real server: every
check it has, over every route, with and without API keys.

The checks: no 5xx, every status and content type documented, every response matches its schema (the
error shape included), schema-valid requests accepted (see schemathesis.toml for the statuses that
mean "valid but refused for what JSON Schema cannot say"), schema-violating requests refused, and with
API keys, no route that the schema says is protected answers without one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import LiveServer

HERE = Path(__file__).parent
ROUTES = {"POST /score", "POST /rank", "POST /compare", "POST /get_reward", "POST /classify"}
ROUTES |= {"GET /health", "GET /ready", "GET /info", "GET /v1/models", "GET /metrics"}


def run_schemathesis(url: str, report: Path, examples: int, *extra: str) -> dict:
    """The CLI exactly as a user runs it; returns its JSON report."""
    command = [
        str(Path(sys.executable).parent / "schemathesis"), "--config-file", str(HERE / "schemathesis.toml"),
        "run", f"{url}/openapi.json", "--checks", "all", "--max-examples", str(examples), "--seed", "7",
        "--workers", "2", "--request-timeout", "60", "--report", "json", "--report-json-path", str(report), *extra,
    ]  # fmt: skip
    env = os.environ | {
        "SCHEMATHESIS_HOOKS": "tests.service.http.schemathesis_hooks",
        "PYTHONPATH": str(HERE.parents[2]),
    }
    # run in the report's folder: schemathesis keeps a crash cache and hypothesis a database in the working
    # directory, which would replay one run's findings in the next (and litter the repository)
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env, cwd=report.parent)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    return json.loads(report.read_text())


@pytest.mark.parametrize("api_key", [None, "fuzz-key"], ids=["open", "with-api-keys"])
def test_schemathesis_finds_no_failure_on_any_route(hf_backend, tmp_path, api_key):
    limits = dict(max_items=8, max_responses=8, max_tokens=2000, max_images=3, max_body_bytes=1_000_000)
    with LiveServer(hf_backend, api_keys=api_key or "", **limits) as server:
        extra = ("--header", f"Authorization: Bearer {api_key}") if api_key else ()
        report = run_schemathesis(server.url, tmp_path / "report.json", 100 if api_key is None else 30, *extra)
        assert server.state.is_ready()  # nothing it sent broke the service
    assert report["complete"] and report["failures"] == [] and report["errors"] == []
    assert report["operations"]["tested"] == len(ROUTES) and set(report["valid_rates"]) == ROUTES
    generated = report["test_cases"]["generated"]
    assert generated >= (500 if api_key is None else 150), generated
    for route in ROUTES:  # every route got requests it accepted, not only refusals
        accepted = sum(phase["accepted"] for phase in report["valid_rates"][route].values())
        assert accepted > 0, (route, report["valid_rates"][route])
