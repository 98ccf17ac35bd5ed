"""Multi-head training: each pair trains only the heads it labels (a preference head, attribute ratings), the
CLI trains, exports and calibrates a multi-head model as a user runs it, and the server serves every head with
its own statistics."""

from __future__ import annotations

import json
import math
import subprocess

import httpx
import pytest
import torch

from tests.helpers import VLREWARD, LiveServer
from vlreward.service.kinds import Heads, checkpoint_heads
from vlreward.training.data.schema import PreferenceRecord, Turn
from vlreward.training.multihead import HeadLabelError, head_accuracy, multihead_loss, pair_labels

HEADS = Heads(("concise", "grounded", "correct"), "concise")
RECIPE = """
name: heads-test
base_model: tiny
batch_size: 4
seed: 0
log_every: 50
eval_pairs: 60
num_threads: 2
lr_multipliers:
  merger: 15
stages:
  - name: heads
    learning_rate: 1.0e-4
    epochs: 1
    max_steps: 80
    include_text: true
    warmup_steps: 10
"""


def record(**labels) -> PreferenceRecord:
    return PreferenceRecord(id="r", source="s", category="c", conversation=[Turn(role="user", content="q")],
                            chosen="a", rejected="b", **labels)  # fmt: skip


def test_a_pair_trains_only_the_heads_it_labels():
    assert pair_labels(record(), HEADS)[0] == 0  # unlabelled: the default head's preference
    head, ratings = pair_labels(record(attributes={"correct": (5.0, 1.0)}), HEADS)
    assert head == -1 and ratings[2] == 5.0 and ratings[5] == 1.0 and math.isnan(ratings[0])
    with pytest.raises(HeadLabelError, match="'safe'"):
        pair_labels(record(head="safe"), HEADS)
    # Pair 0 prefers on head 1; pair 1 rates head 2: no gradient reaches any other head's scores.
    scores = torch.randn(4, 3, requires_grad=True)
    nan = math.nan
    ratings = torch.tensor([[nan, nan, nan], [nan, nan, 5.0], [nan, nan, nan], [nan, nan, 1.0]])
    loss, accuracy = multihead_loss(scores, torch.tensor([1, -1]), ratings)
    loss.backward()
    touched = (scores.grad != 0).nonzero().tolist()
    assert sorted(touched) == [[0, 1], [1, 2], [2, 1], [3, 2]]
    expected = (
        -torch.nn.functional.logsigmoid(scores[0, 1] - scores[2, 1])
        + ((scores[1, 2] - 5.0) ** 2 + (scores[3, 2] - 1.0) ** 2) / 2
    )
    assert float(loss) == pytest.approx(float(expected), abs=1e-6)
    assert 0.0 <= float(accuracy) <= 1.0
    table = head_accuracy(HEADS, [record(head="grounded"), record(attributes={"correct": (5.0, 1.0)})],
                          [([0, 2, 0], [0, 1, 0]), ([0, 0, 1], [0, 0, 3])])  # fmt: skip
    assert table["heads"] == {"grounded": {"accuracy": 1.0, "n": 1}, "correct": {"accuracy": 0.0, "n": 1}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`vlreward data synthetic --heads`, `vlreward train --heads`, `vlreward export`, `vlreward calibrate`."""
    root = tmp_path_factory.mktemp("multihead-train")
    (root / "recipe.yaml").write_text(RECIPE)
    data = root / "data"
    commands = [
        ["data", "synthetic", "--output", str(data), "--per-category", "40", "--heads"],
        ["train", "--heads", ",".join(HEADS.names), "--recipe", str(root / "recipe.yaml"), "--data",
         str(data / "train"), "--heldout", str(data / "heldout"), "--output", str(root / "run")],
        ["export", "--checkpoint", str(root / "run" / "checkpoint-final"), "--output", str(root / "model")],
        ["calibrate", "--model", str(root / "model"), "--data", str(data / "heldout")],
    ]  # fmt: skip
    for command in commands:
        done = subprocess.run([VLREWARD, *command], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    return root


def test_the_cli_trains_exports_and_calibrates_a_multihead_model(trained):
    history = [json.loads(line) for line in (trained / "run" / "history.jsonl").read_text().splitlines()]
    final = [entry["eval"] for entry in history if "eval" in entry][-1]
    assert set(final["heads"]) == set(HEADS.names) and all(row["n"] > 0 for row in final["heads"].values())
    model = trained / "model"
    assert checkpoint_heads(model) == HEADS
    config = json.loads((model / "config.json").read_text())
    assert config["num_labels"] == 3 and config["id2label"] == {"0": "concise", "1": "grounded", "2": "correct"}
    calibration = json.loads((model / "calibration.json").read_text())
    assert set(calibration["heads"]) == set(HEADS.names)
    assert all(h["calibration"]["pairs_fitted"] > 0 for h in calibration["heads"].values())


def test_the_trained_model_serves_every_head_with_its_own_statistics(trained):
    from vlreward.service.backends.transformers import TransformersBackend

    backend = TransformersBackend(trained / "model", dtype="float32", device="cpu")
    assert backend.check_probe() is not None  # the exported probe holds every head's score
    item = {"prompt": "Say the word apple once.", "response": "The word is apple."}
    with LiveServer(backend) as live:
        info = httpx.get(live.url + "/info").json()
        references = info["heads"]["references"]
        raw = httpx.post(live.url + "/score", json={"items": [item]}).json()["details"][0]["heads"]
        for head in HEADS.names:
            z = httpx.post(live.url + "/score", json={"items": [item], "head": head, "normalize": "zscore"}).json()
            expected = (raw[head] - references[head]["mean"]) / references[head]["std"]
            assert z["scores"][0] == pytest.approx(expected, abs=1e-6)
            assert z["reference_version"] == references[head]["version"]


def test_stack_heads_joins_heads_of_one_backbone_and_refuses_another(tiny_reward, other_reward, tmp_path):
    from tests.helpers import copy_with_tensors
    from vlreward.service.model.checkpoint import CheckpointError
    from vlreward.training.multihead import stack_heads

    def nudge(tensors: dict) -> None:
        name = next(k for k in sorted(tensors) if "score" not in k)
        tensors[name] = tensors[name] * 1.001

    moved = copy_with_tensors(other_reward, tmp_path / "moved", nudge)
    with pytest.raises(CheckpointError, match="another backbone"):
        stack_heads({"a": tiny_reward, "b": moved}, tmp_path / "refused")
    done = subprocess.run([VLREWARD, "stack-heads", "--head", f"a={tiny_reward}", "--head", f"b={other_reward}",
                           "--output", str(tmp_path / "stacked")], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert checkpoint_heads(tmp_path / "stacked") == Heads(("a", "b"), "a")


def test_eval_and_offline_scoring_read_one_head_or_every_head(trained, tmp_path):
    from vlreward.service.backends.transformers import TransformersBackend
    from vlreward.service.offline import score_file
    from vlreward.training.evaluate import one_head

    model = trained / "model"
    rows = [{"id": f"p{i}", "prompt": "Say the word apple once.", "chosen": "The word is apple.",
             "rejected": "The word is apple. " * (2 + i), "subset": "alpacaeval-easy"} for i in range(4)]  # fmt: skip
    (tmp_path / "bench.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    done = subprocess.run([VLREWARD, "eval", "--benchmark", "rewardbench", "--data", str(tmp_path / "bench.jsonl"),
                           "--model", str(model), "--head", "grounded", "--output", str(tmp_path / "eval")],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    reference = json.loads((model / "vlreward_reference.json").read_text())["heads"]["grounded"]
    assert results["n"] == 4 and results["calibration"]["temperature"] == pytest.approx(reference["temperature"])
    backend = TransformersBackend(model, dtype="float32", device="cpu")
    with pytest.raises(ValueError, match="no head 'safe'"):
        one_head(backend, "safe")
    (tmp_path / "in.jsonl").write_text(json.dumps({"id": "a", "prompt": "Say hello.", "response": "Hello!"}) + "\n")
    score_file(backend, tmp_path / "in.jsonl", tmp_path / "out.jsonl")
    row = json.loads((tmp_path / "out.jsonl").read_text())
    assert set(row["heads"]) == set(HEADS.names) and row["score"] == row["heads"]["concise"]
