"""Curation on Ray Data (one local Ray for the module): `vlreward pairs --engine ray` selects what the
in-process engine selects (pairs and top-k), `vlreward data clean --engine ray` scores, flags and reports the
surrogate's agreement with the labels as in process; both write a summary (counts by rule, a histogram)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tests.helpers import COLOURS, shape_image, uri

pytestmark = pytest.mark.slow  # a local Ray and its workers

SYNTHETIC = {"hallucination": 6, "reasoning": 6, "general": 6, "text": 6}


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def run(*args: str) -> str:
    from vlreward.cli import app

    done = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert done.exit_code == 0, done.output
    return done.output


def rank_bodies() -> list[dict]:
    colours = list(COLOURS)
    bodies = []
    for i in range(10):
        body = {
            "id": f"p{i}",
            "prompt": f"What is shown, number {i}?",
            "responses": [f"A {colours[(i + n) % 6]} circle, answer {n}." + " More words." * (n % 3) for n in range(4)],
        }
        if i % 2:
            body["image"] = uri(shape_image(colours[i % 6]))  # (the in-process engine takes no file paths here)
        bodies.append(body)
    return bodies


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize(("strategy", "extra"), [("all-above-margin", ["--margin", "0.05"]), ("top-k", ["--k", "2"])])
def test_pairs_on_ray_select_what_the_in_process_engine_selects(strategy, extra, local_ray, tiny_reward, tmp_path):
    path = tmp_path / "rank.jsonl"
    path.write_text("".join(json.dumps(body) + "\n" for body in rank_bodies()))
    common = ["pairs", "--input", str(path), "--model", str(tiny_reward), "--strategy", strategy, *extra]
    run(*common, "--output", str(tmp_path / "local.jsonl"))
    run(*common, "--output", str(tmp_path / "ray.jsonl"), "--engine", "ray", "--num-cpus", "2")
    local, ray = read_jsonl(tmp_path / "local.jsonl"), read_jsonl(tmp_path / "ray.jsonl")
    assert len(ray) == len(local) > 0
    value = "score" if strategy == "top-k" else "chosen_score"
    for mine, theirs in zip(ray, local, strict=True):
        assert {k: v for k, v in mine.items() if not k.endswith("score")} == {
            k: v for k, v in theirs.items() if not k.endswith("score")
        }
        assert mine[value] == pytest.approx(theirs[value], abs=1e-5)
    summary = json.loads((tmp_path / "ray.summary.json").read_text())
    assert summary["prompts"] == 10 and summary["unscored"] == 0 and summary["scores"]["count"] == 40
    assert (tmp_path / "ray.summary.png").stat().st_size > 0


def test_data_clean_on_ray_reports_label_agreement_and_drops_by_rule_as_in_process(local_ray, tiny_reward, tmp_path):
    from vlreward.training.data.synthetic import generate

    generate(tmp_path / "data", SYNTHETIC, seed=3, split="train")
    common = ["data", "clean", "--input", str(tmp_path / "data"), "--surrogate-model", str(tiny_reward),
              "--drop-disagreeing"]  # fmt: skip
    printed = run(*common, "--output", str(tmp_path / "local"))
    run(*common, "--output", str(tmp_path / "ray"), "--engine", "ray", "--num-cpus", "2")
    summaries = {name: json.loads((tmp_path / name / "summary.json").read_text()) for name in ("local", "ray")}
    assert summaries["ray"]["label_agreement"] == pytest.approx(summaries["local"]["label_agreement"], abs=1e-9)
    assert summaries["ray"]["dropped"]["disagrees_with_label"] == summaries["local"]["dropped"]["disagrees_with_label"]
    assert summaries["ray"]["kept"] == summaries["local"]["kept"] < summaries["ray"]["pairs"]
    assert "agrees with the label on" in printed
    kept = {name: [json.loads(line)["id"] for line in (tmp_path / name / "records.jsonl").read_text().splitlines()]
            for name in ("local", "ray")}  # fmt: skip
    assert kept["ray"] == kept["local"] and (tmp_path / "ray" / "summary.png").stat().st_size > 0
