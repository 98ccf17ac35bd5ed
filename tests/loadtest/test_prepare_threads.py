"""The preparation benchmark on the tiny model: both variants alternate; JSON, PNG and table."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from loadtest import prepare_threads


def test_both_variants_prepare_distinct_requests_and_are_tabled(tmp_path):
    args = ["--size", "tiny", "--items", "3", "--rounds", "2", "--output", str(tmp_path)]
    done = CliRunner().invoke(prepare_threads.app, args)
    assert done.exit_code == 0, done.output
    report = json.loads((tmp_path / "prepare_threads.json").read_text())
    assert [run["variant"] for run in report["runs"]] == ["one thread", "side by side", "side by side", "one thread"]
    assert all(run["request_ms"] > 0 for run in report["runs"])
    assert report["tokens_per_sample"] > 0 and report["encoding_threads"] >= 1 and report["cpu"]
    assert (tmp_path / "prepare_threads.png").stat().st_size > 0
    assert "| side by side |" in done.output and "one thread / side by side per round:" in done.output
