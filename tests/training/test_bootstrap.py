"""`vlreward bootstrap`: the embedded default model, its time budget and its accuracy targets."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import yaml

from tests.helpers import VLREWARD
from vlreward.service.model.checkpoint import read_config
from vlreward.service.model.probe import read_probe
from vlreward.training.config import RECIPES_DIR
from vlreward.training.data.synthetic import CATEGORIES
from vlreward.training.export import TRAINING_INFO_FILE

pytestmark = pytest.mark.slow  # end-to-end: real processes, minutes (make test runs them)

# The budget is 5 minutes on a 2-core machine, measured by `python -m loadtest.bootstrap_sweep --seeds 0
# --threads 2 --parallel 1` (docs/training.md); here only a guard three times as loose, so a slow CI day cannot fail it.
BOOTSTRAP_GUARD_SECONDS = 3 * 300


def test_bootstrap_builds_the_default_model_and_reports_its_steps(default_home):
    assert default_home.seconds <= BOOTSTRAP_GUARD_SECONDS, f"bootstrap took {default_home.seconds:.0f} s"
    for step in ("[1/4]", "[2/4]", "[3/4]", "[4/4]", "default model ready"):
        assert step in default_home.log
    read_config(default_home.model)  # the checkpoint contract
    assert read_probe(default_home.model) is not None
    info = json.loads((default_home.model / TRAINING_INFO_FILE).read_text())
    assert [stage["name"] for stage in info["recipe"]["stages"]] == ["stage1", "stage2"]


def _eval_synthetic(model, output, backend: str = "hf") -> str:
    """`vlreward eval --benchmark synthetic` as a user runs it; returns what it printed."""
    command = [VLREWARD, "eval", "--benchmark", "synthetic", "--model", str(model), "--output", str(output)]
    env = {**os.environ, "VLREWARD_VLLM_GPU_MEMORY_UTILIZATION": "0.2"}
    done = subprocess.run([*command, "--backend", backend], capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _predictions(output) -> dict[str, list[float]]:
    rows = [json.loads(line) for line in (output / "predictions.jsonl").read_text().splitlines()]
    return {row["id"]: row["scores"] for row in rows}


@pytest.fixture(scope="module")
def hf_eval(default_home, tmp_path_factory):
    output = tmp_path_factory.mktemp("eval-hf")
    return output, _eval_synthetic(default_home.model, output)


def test_default_model_meets_its_targets_and_reads_the_image(hf_eval):
    """>= 90% overall and >= 85% per category on the held-out set; with the image swapped for one that
    matches the rejected response, that response wins on >= 90% of hallucination pairs."""
    output, printed = hf_eval
    results = json.loads((output / "results.json").read_text())
    assert "Overall" in printed and (output / "results.png").is_file()
    assert set(results["categories"]) == set(CATEGORIES)
    assert results["overall"] >= 0.90, results
    assert all(results["categories"][name] >= 0.85 for name in CATEGORIES), results
    assert results["extra_image_swap_hallucination"] >= 0.90, results
    calibration = results["calibration"]  # P(chosen > rejected) = sigmoid of the margin (no T stored yet)
    assert calibration["pairs"] == len(_predictions(output)) and 0.0 <= calibration["ece"] <= 1.0
    assert calibration["temperature"] == 1.0 and calibration["bins"] == 15


def test_the_trained_default_model_scores_the_same_on_vllm(default_home, hf_eval, tmp_path):
    """The exported model of a real training run: vLLM's CPU engine gives the transformers scores."""
    hf_output, _ = hf_eval
    _eval_synthetic(default_home.model, tmp_path, backend="vllm")
    on_vllm, on_hf = _predictions(tmp_path), _predictions(hf_output)
    assert on_vllm.keys() == on_hf.keys() and len(on_hf) == 500
    # fp32 rounding follows the model's scale, |head| x |final hidden state| (the probe's; about 14 for the
    # trained model), not the score, which cancels out of it. Measured on this model: at most 9.0e-6 of the
    # scale with vLLM's worker on one thread, 1.14e-5 on two (another summation order), so 1e-4 absolute plus
    # 3e-5 of the scale. A missing head or a misplaced image moves scores by a sizeable share of the scale.
    allowed = 1e-4 + 3e-5 * read_probe(default_home.model).scale
    pairs = [(a, b) for key in on_hf for a, b in zip(on_vllm[key], on_hf[key], strict=True)]
    off = [(a, b) for a, b in pairs if abs(a - b) > allowed]
    assert off == [], (allowed, off[:5])
    assert (
        json.loads((tmp_path / "results.json").read_text())["categories"]
        == json.loads((hf_output / "results.json").read_text())["categories"]
    )


def test_a_process_model_bootstraps_from_the_default_model_and_serves_step_scores(default_home, tmp_path):
    """The process path of bootstrap, on a short recipe from the session's default model (the full
    recipe and its targets over seeds are a benchmark: loadtest/process_sweep.py)."""
    from vlreward.service.backends.transformers import TransformersBackend
    from vlreward.service.kinds import PROCESS, ProcessHead, checkpoint_kind
    from vlreward.training.bootstrap import bootstrap

    recipe = yaml.safe_load((RECIPES_DIR / "tiny-process.yaml").read_text())
    recipe["stages"][0] |= {"max_steps": 20, "warmup_steps": 5}
    (tmp_path / "short.yaml").write_text(yaml.safe_dump(recipe))
    destination = tmp_path / "home" / "models" / "default-process"
    metrics = bootstrap(destination, recipe=str(tmp_path / "short.yaml"), kind="process",
                        start_from=default_home.model, num_threads=1)  # fmt: skip
    assert 0.0 <= metrics["macro_f1"] <= 1.0 and 0.0 <= metrics["first_error_accuracy"] <= 1.0
    assert checkpoint_kind(destination) is PROCESS
    info = json.loads((destination / TRAINING_INFO_FILE).read_text())
    assert info["heldout"]["macro_f1"] == metrics["macro_f1"] and info["recipe"]["stages"][0]["max_steps"] == 20
    backend = TransformersBackend(destination, dtype="float32", device="cpu")
    assert backend.process == ProcessHead() and backend.check_probe() is not None
    sample = {"prompt": "What colour is the circle?", "steps": ["I look at the picture.", "The circle is red."]}
    assert len(backend.score_sync([backend.format_request_sample(sample)])[0]) == 2


def test_a_judge_bootstraps_from_the_default_model_and_serves_ratings_and_verdicts(default_home, tmp_path):
    """The judge path of bootstrap, on a short recipe from the session's default model (the full recipe
    and its target over seeds are a benchmark: loadtest/judge_sweep.py): a generative checkpoint declaring
    the generic judge, its probe stamped, read from logits for ratings and verdicts."""
    from vlreward.service.backends.transformers import TransformersBackend
    from vlreward.service.judge import read_declaration
    from vlreward.service.kinds import JUDGE, checkpoint_kind
    from vlreward.service.model.checkpoint import BASE_ARCHITECTURE, LM_HEAD_WEIGHT, checkpoint_tensor_names
    from vlreward.training.bootstrap import bootstrap

    recipe = yaml.safe_load((RECIPES_DIR / "tiny-judge.yaml").read_text())
    recipe["stages"][0] |= {"max_steps": 20, "warmup_steps": 5}
    recipe["eval_pairs"] = 40
    (tmp_path / "short.yaml").write_text(yaml.safe_dump(recipe))
    destination = tmp_path / "home" / "models" / "default-judge"
    metrics = bootstrap(destination, recipe=str(tmp_path / "short.yaml"), kind="judge",
                        start_from=default_home.model, num_threads=1)  # fmt: skip
    assert 0.0 <= metrics["overall"] <= 1.0 and metrics["n"] == 40
    assert checkpoint_kind(destination) is JUDGE
    config = json.loads((destination / "config.json").read_text())
    assert config["architectures"] == [BASE_ARCHITECTURE] and not config["tie_word_embeddings"]
    assert LM_HEAD_WEIGHT in checkpoint_tensor_names(destination)
    backend = TransformersBackend(destination, dtype="float32", device="cpu")
    assert backend.judge == read_declaration("generic") and backend.check_probe() is not None
    rating = backend.judge.rating(
        backend.score_sync([backend.format_request_sample({"prompt": "Hi", "response": "Hello"})])[0]
    )
    assert 1.0 <= rating <= 5.0


def test_bootstrap_refuses_an_unknown_kind(tmp_path):
    done = subprocess.run([VLREWARD, "bootstrap", "--kind", "critic", "--home", str(tmp_path)], capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 2 and "kind must be one of scalar, process, judge" in done.stderr
