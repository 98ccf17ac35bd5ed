"""The linear-kernel benchmark on one small shape: both kernels timed per thread count, JSON, PNG and table."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from loadtest import linear_kernels


def test_one_shape_is_timed_on_both_kernels_and_tabled(tmp_path, monkeypatch):
    monkeypatch.setattr(linear_kernels, "SHAPES", {(16, 8): "a test layer"})
    monkeypatch.setattr(linear_kernels, "TOKENS", (4, 32))
    done = CliRunner().invoke(linear_kernels.app, ["--output", str(tmp_path), "--name", "on_this_host"])
    assert done.exit_code == 0, done.output
    report = json.loads((tmp_path / "on_this_host.json").read_text())
    assert {(r["in"], r["out"], r["tokens"]) for r in report["rows"]} == {(16, 8, 4), (16, 8, 32)}
    assert all(r["mkl_us"] > 0 and r["onednn_us"] > 0 and r["weight"] == 128 for r in report["rows"])
    assert (tmp_path / "on_this_host.png").stat().st_size > 0 and report["cpu"]
    assert "| 16 x 8 | a test layer |" in done.output and str(report["onednn_min_weight"]) not in ("", "0")


def test_forward_passes_run_on_both_kernels_with_the_same_scores(tmp_path, monkeypatch):
    from vlreward.service.model import cpu_kernels

    monkeypatch.setattr(cpu_kernels, "ONEDNN_MIN_WEIGHT", 0)  # the tiny model's linears: every one switches
    args = ["--forward", "--size", "tiny", "--samples", "4", "--rounds", "2", "--output", str(tmp_path)]
    done = CliRunner().invoke(linear_kernels.app, args)
    assert done.exit_code == 0, done.output
    report = json.loads((tmp_path / "linear_kernels_forward.json").read_text())
    assert report["linears"] > 0 and report["largest_score_difference"] <= 1e-5
    cells = {(r["round"], r["path"], r["kernel"]) for r in report["runs"]}
    assert cells == {(n, p, k) for n in (1, 2) for p in linear_kernels.FORWARD_PATHS for k in linear_kernels.KERNELS}
    assert all(r["ms_per_sample"] > 0 for r in report["runs"])
    assert report["chosen"] in linear_kernels.KERNELS and (tmp_path / "linear_kernels_forward.png").stat().st_size > 0
    assert "| lone pass, every core |" in done.output
