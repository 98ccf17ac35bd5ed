"""`vlreward calibrate` on the default model: its reference statistics and temperature land in the checkpoint,
lower the expected calibration error on held-out synthetic pairs, and the server uses them: z-scores equal
(s - mean) / std with what /info reports, /compare divides by T, and a model without them refuses zscore."""

from __future__ import annotations

import json
import shutil
import subprocess

import httpx
import pytest

from tests.helpers import VLREWARD, LiveServer, shape_image, uri
from vlreward.service.catalog import ModelSpec
from vlreward.service.kinds import sigmoid

RED = uri(shape_image("red"))
ITEMS = [
    {"prompt": "What colour is the circle?", "image": RED, "response": "It is red."},
    {"prompt": "What colour is the circle?", "image": RED, "response": "It is blue."},
    {"prompt": "Say hello.", "response": "Hello!"},
]


@pytest.fixture(scope="module")
def calibrated_model(default_home, tmp_path_factory):
    root = tmp_path_factory.mktemp("calibrate")
    model = shutil.copytree(default_home.model, root / "model")
    data = root / "data"
    for command in (["data", "synthetic", "--output", str(data), "--per-category", "60"],
                    ["calibrate", "--model", str(model), "--data", str(data / "train")]):  # fmt: skip
        done = subprocess.run([VLREWARD, *command], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    return model


def test_calibration_is_stored_and_lowers_the_held_out_error(calibrated_model):
    results = json.loads((calibrated_model / "calibration.json").read_text())
    calibration = results["calibration"]
    assert calibration["pairs_fitted"] > 50 and calibration["pairs_measured"] > 50
    assert calibration["ece_after"] < calibration["ece_before"]
    assert (calibrated_model / "calibration.png").stat().st_size > 0
    stored = json.loads((calibrated_model / "vlreward_reference.json").read_text())
    assert stored["version"] == results["reference"]["version"] and stored["count"] == 2 * (
        calibration["pairs_fitted"] + calibration["pairs_measured"]
    )


def test_the_server_normalises_and_calibrates_with_the_stored_statistics(calibrated_model, hf_backend):
    from vlreward.service.backends.transformers import TransformersBackend

    backend = TransformersBackend(calibrated_model, dtype="float32", device="cpu")
    specs = [ModelSpec(name="rm", default=True), ModelSpec(name="plain")]
    with LiveServer(specs=specs, backends={"rm": backend, "plain": hf_backend}) as live:
        reference = httpx.get(live.url + "/info").json()["models"]["rm"]["reference"]
        raw = httpx.post(live.url + "/score", json={"items": ITEMS}).json()
        assert "reference_version" not in raw
        z = httpx.post(live.url + "/score", json={"items": ITEMS, "normalize": "zscore"}).json()
        assert z["reference_version"] == reference["version"]
        assert z["scores"] == pytest.approx(
            [(s - reference["mean"]) / reference["std"] for s in raw["scores"]], abs=1e-6
        )
        ranked = httpx.post(live.url + "/rank", json={"prompt": ITEMS[0]["prompt"], "image": RED,
                                                      "responses": ["It is red.", "It is blue."],
                                                      "normalize": "zscore"}).json()  # fmt: skip
        assert ranked["scores"] == pytest.approx(z["scores"][:2], abs=1e-4) and ranked["reference_version"]
        pair = {"prompt": ITEMS[0]["prompt"], "image": RED, "a": "It is red.", "b": "It is blue."}
        prob = httpx.post(live.url + "/compare", json={"pairs": [pair]}).json()["results"][0]["prob_a"]
        assert prob == pytest.approx(
            sigmoid((raw["scores"][0] - raw["scores"][1]) / reference["temperature"]), abs=1e-6
        )
        refused = httpx.post(live.url + "/score", json={"model": "plain", "items": ITEMS, "normalize": "zscore"})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "normalize"


def test_a_process_model_is_calibrated_on_its_aggregate_and_its_compare_uses_that_t(tiny_process, tmp_path):
    """Each response scored as its one step: the statistics are of the checkpoint's aggregate (what /score
    with response_as_step gives), and /compare divides that aggregate's difference by the fitted T."""
    from vlreward.service.backends.transformers import TransformersBackend
    from vlreward.service.reference import read_reference
    from vlreward.training.calibrate import calibrate
    from vlreward.training.data.synthetic import generate

    model = shutil.copytree(tiny_process, tmp_path / "prm")
    generate(tmp_path / "data", {"hallucination": 8, "general": 8, "text": 8}, seed=5, split="train")
    results = calibrate(model, tmp_path / "data")
    assert results["reference"]["count"] == 2 * sum(1 for _ in (tmp_path / "data" / "records.jsonl").open())
    backend = TransformersBackend(model, dtype="float32", device="cpu")
    with LiveServer(backend) as live:
        (served,) = httpx.get(live.url + "/info").json()["models"].values()
        reference = served["reference"]
        assert reference["temperature"] == pytest.approx(read_reference(model).temperature) != 1.0
        raw = httpx.post(live.url + "/score", json={"items": ITEMS[:2], "response_as_step": True}).json()["scores"]
        pair = {"prompt": ITEMS[0]["prompt"], "image": RED, "a": ["It is red."], "b": ["It is blue."]}  # one step
        prob = httpx.post(live.url + "/compare", json={"pairs": [pair]}).json()["results"][0]["prob_a"]
    assert prob == pytest.approx(sigmoid((raw[0] - raw[1]) / reference["temperature"]), abs=1e-6)
