"""`vlreward eval` on a benchmark fixture: in-process and through a server agree, resume, recompute; `pairs`."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tests.helpers import LiveServer, shape_image, uri
from tests.training.test_benchmarks import vl_parquet
from vlreward.training.cli import app
from vlreward.training.evaluate import run_benchmark
from vlreward.training.pairs import select_pairs


def _invoke(*args: str):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result


def test_in_process_and_server_evaluation_give_identical_tables(tiny_reward, hf_backend, tmp_path):
    data = vl_parquet(tmp_path)
    _invoke("eval", "--benchmark", "vl-rewardbench", "--data", str(data), "--model", str(tiny_reward),
            "--output", str(tmp_path / "local"))  # fmt: skip
    with LiveServer(hf_backend) as server:
        _invoke("eval", "--benchmark", "vl-rewardbench", "--data", str(data), "--url", server.url,
                "--output", str(tmp_path / "remote"))  # fmt: skip
    local = json.loads((tmp_path / "local" / "results.json").read_text())
    remote = json.loads((tmp_path / "remote" / "results.json").read_text())
    for key in ("n", "overall", "macro", "categories", "ties", "checkpoint_hash", "model"):
        assert local[key] == remote[key], key
    assert (
        "| General | Hallucination | Reasoning | Overall | Macro |" in (tmp_path / "local" / "results.md").read_text()
    )


def test_an_interrupted_run_resumes_without_rescoring_and_gives_the_same_table(tiny_reward, hf_backend, tmp_path):
    from vlreward.service.media import MediaPolicy
    from vlreward.service.prepare import prepare_sample
    from vlreward.service.schemas import Sample

    data = vl_parquet(tmp_path)
    scored = []

    def score(samples):
        scored.append(len(samples))
        formatted = [prepare_sample(Sample.model_validate(s), hf_backend.processor, MediaPolicy()) for s in samples]
        return hf_backend.score_sync(formatted)

    full = run_benchmark("vl-rewardbench", data, tmp_path / "full", score, "m", None, batch_pairs=2)
    scored.clear()
    run_benchmark("vl-rewardbench", data, tmp_path / "resumed", score, "m", None, limit=3, batch_pairs=2)
    with (tmp_path / "resumed" / "predictions.jsonl").open("a") as handle:
        handle.write('{"id": "cut-off line')  # an interruption mid-write
    resumed = run_benchmark("vl-rewardbench", data, tmp_path / "resumed", score, "m", None, batch_pairs=2)
    assert sum(scored) == 2 * 7  # 3 pairs, then only the remaining 4: each pair scored once
    for key in ("overall", "macro", "categories"):
        assert resumed[key] == full[key]

    recomputed = tmp_path / "recomputed"
    _invoke("eval", "--benchmark", "vl-rewardbench", "--predictions", str(tmp_path / "full" / "predictions.jsonl"),
            "--output", str(recomputed))  # fmt: skip
    again = json.loads((recomputed / "results.json").read_text())
    assert (again["overall"], again["macro"], again["categories"]) == (
        full["overall"],
        full["macro"],
        full["categories"],
    )


def test_select_pairs_strategies_on_known_scores():
    scores = [0.1, 2.0, -1.0, 1.9]
    assert select_pairs(scores, "best-worst") == [(1, 2)]
    assert select_pairs(scores, "best-worst", margin=5.0) == []
    assert select_pairs(scores, "all-above-margin", margin=1.0) == [(1, 2), (3, 2), (1, 0), (3, 0), (0, 2)]


def test_pairs_command_writes_rows_trl_dpo_reads(tiny_reward, hf_backend, tmp_path):
    from datasets import load_dataset

    image = uri(shape_image("red"))
    rows = [{"id": "p1", "prompt": "Colour?", "images": [image], "responses": ["Red.", "Blue.", "Green circle."]},
            {"id": "p2", "prompt": "Say hi.", "responses": ["Hi!", "Hello there, friend."]}]  # fmt: skip
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _invoke("pairs", "--input", str(inputs), "--output", str(tmp_path / "pairs.jsonl"), "--model", str(tiny_reward))
    written = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert [w["id"] for w in written] == ["p1", "p2"]
    for pair, row in zip(written, rows, strict=True):
        assert pair["chosen_score"] > pair["rejected_score"]
        assert pair["chosen"] in row["responses"] and pair["rejected"] in row["responses"]
    dataset = load_dataset("json", data_files=str(tmp_path / "pairs.jsonl"), split="train")
    assert {"prompt", "chosen", "rejected", "images"} <= set(dataset.column_names)


@pytest.mark.parametrize("benchmark", ["processbench", "visualprocessbench"])
def test_process_benchmarks_in_process_through_a_server_and_recomputed_give_one_table(benchmark, tiny_process,
                                                                                      tmp_path):  # fmt: skip
    from tests.training.test_step_benchmarks import processbench_files, visualprocessbench_file
    from vlreward.service.backends.transformers import TransformersBackend

    data = processbench_files(tmp_path / "pb") if benchmark == "processbench" else visualprocessbench_file(tmp_path)
    _invoke("eval", "--benchmark", benchmark, "--data", str(data), "--model", str(tiny_process),
            "--output", str(tmp_path / "local"))  # fmt: skip
    with LiveServer(TransformersBackend(tiny_process, dtype="float32", device="cpu")) as server:
        _invoke("eval", "--benchmark", benchmark, "--data", str(data), "--url", server.url,
                "--output", str(tmp_path / "remote"))  # fmt: skip
    _invoke("eval", "--benchmark", benchmark, "--predictions", str(tmp_path / "local" / "predictions.jsonl"),
            "--output", str(tmp_path / "again"))  # fmt: skip
    local, remote, again = (json.loads((tmp_path / run / "results.json").read_text())
                            for run in ("local", "remote", "again"))  # fmt: skip
    for key in ("n", "overall", "categories", "checkpoint_hash", "model"):
        assert local[key] == remote[key], key
    assert (local["overall"], local["categories"]) == (again["overall"], again["categories"])
    rows = [json.loads(line) for line in (tmp_path / "local" / "predictions.jsonl").read_text().splitlines()]
    assert all(0.0 < s < 1.0 for row in rows for s in row["step_scores"])  # sigmoid: P(step correct)
    assert (tmp_path / "local" / "results.png").stat().st_size > 0
    headline = "Avg. F1" if benchmark == "processbench" else "Overall"
    assert f"| {headline} |" in (tmp_path / "local" / "results.md").read_text()


def test_a_scalar_model_is_refused_for_a_process_benchmark(tiny_reward, tmp_path):
    from tests.training.test_step_benchmarks import processbench_files

    result = CliRunner().invoke(app, ["eval", "--benchmark", "processbench", "--data",
                                      str(processbench_files(tmp_path / "pb")), "--model", str(tiny_reward),
                                      "--output", str(tmp_path / "out")])  # fmt: skip
    message = " ".join(result.output.replace("│", " ").split())  # the error box wraps its lines
    assert result.exit_code == 2 and "is not a process model" in message


def test_a_judge_is_evaluated_by_its_debiased_verdicts_in_process_and_through_a_server(judge_backend, tmp_path):
    """A judge answers each VL-RewardBench pair as /compare does (both orders, debiased), in process and
    through a server alike; its per-pair scores are (P, 1 - P)."""
    from tests.helpers import LiveServer
    from tests.training.test_benchmarks import vl_parquet
    from vlreward.client import RewardClient
    from vlreward.training.cli import _compare_twos
    from vlreward.training.evaluate import in_process_scorer, run_benchmark

    data = vl_parquet(tmp_path)
    local = run_benchmark("vl-rewardbench", data, tmp_path / "local", in_process_scorer(judge_backend), "judge", None)
    with LiveServer(judge_backend) as live, RewardClient(live.url) as client:
        served = run_benchmark("vl-rewardbench", data, tmp_path / "served", _compare_twos(client), "judge", None)
    rows = [json.loads(line) for line in (tmp_path / "local" / "predictions.jsonl").read_text().splitlines()]
    assert all(row["scores"][0] + row["scores"][1] == 1.0 for row in rows)
    assert local["categories"] == served["categories"] and local["n"] == served["n"] == 7
