"""The packing benchmark on the tiny model: both layouts, both modes; JSON, PNG and table."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from loadtest import packing


def test_both_layouts_run_padded_and_packed_and_are_tabled(tmp_path):
    args = ["--size", "tiny", "--samples", "32", "--rounds", "1", "--output", str(tmp_path)]
    done = CliRunner().invoke(packing.app, args)
    assert done.exit_code == 0, done.output
    report = json.loads((tmp_path / "packing_tiny.json").read_text())
    seen = {(run["layout"], run["mode"]) for run in report["runs"]}
    assert seen == {(layout, mode) for layout in packing.LAYOUTS for mode in packing.MODES}
    assert all(run["ms_per_sample"] > 0 for run in report["runs"])
    arrival = [run["padding_share"] for run in report["runs"] if run["layout"] == "arrival order"]
    assert min(arrival) > 0.1  # mixed lengths in arrival order carry padding
    assert (tmp_path / "packing_tiny.png").stat().st_size > 0
    assert "| arrival order |" in done.output and "| service plan |" in done.output
