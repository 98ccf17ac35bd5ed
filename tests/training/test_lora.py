"""`vlreward train --lora` trains a LoRA reward adapter of a reward checkpoint with peft (only its LoRA weights
and its head train), `vlreward export` writes it in peft's layout with its probe, the server serves it beside its
base, and it scores what `vlreward merge-adapter`'s merged checkpoint scores."""

from __future__ import annotations

import json
import subprocess

import httpx
import pytest
from safetensors.torch import load_file

from tests.helpers import VLREWARD, LiveServer, shape_image, uri
from vlreward.service.catalog import ModelSpec
from vlreward.service.model.lora import is_adapter, read_adapter
from vlreward.training.calibrate import calibrate

RECIPE = """
name: lora-test
base_model: tiny
batch_size: 4
seed: 0
log_every: 20
eval_pairs: 40
num_threads: 2
stages:
  - name: lora
    learning_rate: 1.0e-3
    epochs: 1
    max_steps: 40
    include_text: true
    warmup_steps: 5
"""
ITEMS = [
    {"prompt": "What colour is the circle?", "image": uri(shape_image("red")), "response": "It is red."},
    {"prompt": "Say hello.", "response": "Hello!"},
]


@pytest.fixture(scope="module")
def trained(tiny_reward, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-train")
    (root / "recipe.yaml").write_text(RECIPE)
    data = root / "data"
    commands = [
        ["data", "synthetic", "--output", str(data), "--per-category", "20"],
        ["train", "--lora", "--lora-rank", "4", "--base", str(tiny_reward), "--recipe", str(root / "recipe.yaml"),
         "--data", str(data / "train"), "--heldout", str(data / "heldout"), "--output", str(root / "run")],
        ["export", "--checkpoint", str(root / "run" / "checkpoint-final"), "--output", str(root / "adapter")],
        ["merge-adapter", "--base", str(tiny_reward), "--adapter", str(root / "adapter"), "--output",
         str(root / "merged")],
    ]  # fmt: skip
    for command in commands:
        done = subprocess.run([VLREWARD, *command], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    calibrate(root / "adapter", data / "heldout", base=tiny_reward)  # `vlreward calibrate --base`, in process
    return root


def test_only_the_adapter_and_its_head_train_and_the_export_is_peft_layout(trained, tiny_reward):
    adapter = trained / "adapter"
    assert is_adapter(adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["modules_to_save"] == ["score"]
    weights = read_adapter(adapter)
    assert weights.layers and all(name.startswith("model.language_model.layers.") for name in weights.layers)
    assert any(float(b.abs().max()) > 0 for _, b in weights.layers.values())  # B starts at zero: it trained
    base_head = load_file(tiny_reward / "model.safetensors")["language_model.score.weight"]
    assert not weights.head_weight.equal(base_head.float())  # its own head, trained from the base's


def test_the_trained_adapter_served_on_its_base_scores_what_the_merged_model_scores(trained, tiny_reward):
    from vlreward.service.backends.transformers import TransformersBackend

    backends = {"rm": TransformersBackend(tiny_reward, dtype="float32", device="cpu"),
                "merged": TransformersBackend(trained / "merged", dtype="float32", device="cpu")}  # fmt: skip
    specs = [ModelSpec(name="rm", default=True), ModelSpec(name="merged"),
             ModelSpec(name="adapter", source=str(trained / "adapter"), settings={"base": "rm"})]  # fmt: skip
    with LiveServer(specs=specs, backends=backends) as live:  # the adapter's probe passed at start-up
        got = httpx.post(live.url + "/score", json={"model": "adapter", "items": ITEMS}, timeout=120).json()
        merged = httpx.post(live.url + "/score", json={"model": "merged", "items": ITEMS}, timeout=120).json()
        base = httpx.post(live.url + "/score", json={"model": "rm", "items": ITEMS}, timeout=120).json()
        info = httpx.get(live.url + "/info").json()["models"]["adapter"]
        z = httpx.post(live.url + "/score", json={"model": "adapter", "items": ITEMS, "normalize": "zscore"}).json()
    reference = info["reference"]  # vlreward calibrate --base: the adapter's own statistics, in its folder
    assert reference["version"] == json.loads((trained / "adapter" / "vlreward_reference.json").read_text())["version"]
    assert z["scores"] == pytest.approx([(s - reference["mean"]) / reference["std"] for s in got["scores"]], abs=1e-6)
    assert got["scores"] == pytest.approx(merged["scores"], abs=1e-4)
    assert got["scores"] != pytest.approx(base["scores"], abs=1e-3)
