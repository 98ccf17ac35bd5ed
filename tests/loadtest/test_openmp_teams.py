"""The OpenMP-teams benchmark on the tiny model: both variants, each in its own process; JSON, PNG and table."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from loadtest import openmp_teams


def test_both_variants_run_in_fresh_processes_and_are_tabled(tmp_path):
    args = ["--size", "tiny", "--samples", "3", "--repeats", "1", "--output", str(tmp_path)]
    done = CliRunner().invoke(openmp_teams.app, args)
    assert done.exit_code == 0, done.output
    report = json.loads((tmp_path / "openmp_teams.json").read_text())
    assert [run["variant"] for run in report["runs"]] == list(openmp_teams.VARIANTS)
    assert all(len(run["pass_ms"]) == 3 and run["median_ms"] > 0 for run in report["runs"])
    assert (tmp_path / "openmp_teams.png").stat().st_size > 0
    assert "| two teams |" in done.output and "two teams / one team per run:" in done.output
