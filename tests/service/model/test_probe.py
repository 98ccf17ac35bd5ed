"""The start-up probe: float32 exact, 16-bit within a share of |w||h| measured here, broken heads refused."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import LiveServer, copy_with_tensors, shape_image, uri
from vlreward.service.model.checkpoint import HEAD_WEIGHT
from vlreward.service.model.probe import (
    ABSOLUTE_TOLERANCE,
    PROBE_FILE,
    RELATIVE_TOLERANCE,
    Probe,
    ProbeMismatch,
    read_probe,
    tolerance,
    verify_probe,
)


def test_probe_files_written_before_the_scale_still_load_with_the_absolute_tolerance(tiny_reward, tmp_path):
    data = json.loads((tiny_reward / PROBE_FILE).read_text())
    assert data["scale"] > 0 and data["dtype"] == "float32"  # stamped in float32, with its scale
    del data["scale"]
    (tmp_path / PROBE_FILE).write_text(json.dumps(data))
    old = read_probe(tmp_path)
    assert old.scale is None and tolerance(old, "bfloat16") == ABSOLUTE_TOLERANCE["bfloat16"]
    verify_probe(old, old.score + 0.9 * ABSOLUTE_TOLERANCE["bfloat16"], "bfloat16")
    with pytest.raises(ProbeMismatch):
        verify_probe(old, old.score + 1.1 * ABSOLUTE_TOLERANCE["float32"], "float32")


def test_16_bit_tolerance_is_a_share_of_the_scale_and_float32_stays_absolute():
    probe = Probe(sample={}, score=1.0, dtype="float32", device="cpu", scale=50.0)
    assert tolerance(probe, "float32") == ABSOLUTE_TOLERANCE["float32"]
    assert tolerance(probe, "bfloat16") == pytest.approx(
        ABSOLUTE_TOLERANCE["float32"] + 50 * RELATIVE_TOLERANCE["bfloat16"]
    )
    stamped_in_bf16 = Probe(sample={}, score=1.0, dtype="bfloat16", device="cuda", scale=50.0)
    assert tolerance(stamped_in_bf16, "float32") == tolerance(stamped_in_bf16, "bfloat16")


def test_bf16_deviation_on_the_bench_model_is_well_inside_the_tolerance(bench_reward):
    """The measurement behind RELATIVE_TOLERANCE, re-run in CI: bf16 vs fp32 as a share of each sample's scale."""
    from vlreward.service.backends.transformers import TransformersBackend

    fp32 = TransformersBackend(bench_reward, dtype="float32", device="cpu")
    bf16 = TransformersBackend(bench_reward, dtype="bfloat16", device="cpu")
    colours = ("red", "green", "blue", "yellow", "purple", "orange")
    samples = [
        {"prompt": f"What colour is shape {i}?", "response": f"It is {c}, a circle.", "images": [uri(shape_image(c))]}
        for i, c in enumerate(colours)
    ] + [{"prompt": "Count to ten.", "response": "one two three four five six seven eight nine ten"}]
    shares = []
    for sample in samples:
        expected, scale = fp32.probe_score_and_scale(sample)
        shares.append(abs(bf16.score_request_sample(sample) - expected) / scale)
    print(f"bf16 vs fp32, share of the scale: max {max(shares):.2e}, mean {sum(shares) / len(shares):.2e}")
    assert 0 < max(shares) <= RELATIVE_TOLERANCE["bfloat16"] / 3


def test_a_bf16_server_with_the_right_weights_is_ready_and_one_with_a_broken_head_never_is(tiny_reward, tmp_path):
    from vlreward.service.backends.transformers import TransformersBackend

    with LiveServer(TransformersBackend(tiny_reward, dtype="bfloat16", device="cpu")) as server:
        assert server.state.is_ready()

    def random_head(tensors):
        generator = torch.Generator().manual_seed(123)
        weight = tensors[HEAD_WEIGHT]
        tensors[HEAD_WEIGHT] = torch.randn(weight.shape, generator=generator) / weight.shape[-1] ** 0.5

    broken = copy_with_tensors(tiny_reward, tmp_path / "random-head", random_head)
    backend = TransformersBackend(broken, dtype="bfloat16", device="cpu")
    with pytest.raises(RuntimeError, match="probe scored"), LiveServer(backend):
        pass
