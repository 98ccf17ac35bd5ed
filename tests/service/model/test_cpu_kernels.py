"""Float32 inference on an AMD CPU with AVX-512 runs the backbone's large linears on oneDNN; training, the plain pass and
other processors do not."""

from __future__ import annotations

import copy
import threading

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from vlreward.service.model import cpu_kernels
from vlreward.service.model.cpu_kernels import (
    ONEDNN_MIN_WEIGHT,
    OneDnnLinear,
    choose_cpu_linears,
    cpu_linear_kernels,
    cpuinfo_field,
    linear_kernels_of,
    onednn_linear_available,
    torch_kernels,
    use_onednn_linears,
)
from vlreward.service.model.encoding import collate

TOLERANCE = 1e-5
ONEDNN_LINEAR = "mkldnn::_linear_pointwise"


def linear_ops(work) -> dict[str, int]:
    """How many times ``work()`` ran oneDNN's linear and torch's default one (aten::linear)."""
    with profile(activities=[ProfilerActivity.CPU]) as trace:
        work()
    counts = {ONEDNN_LINEAR: 0, "aten::linear": 0}
    for event in trace.events():
        if event.name in counts:
            counts[event.name] += 1
    return counts


@pytest.fixture(scope="module")
def encoded(hf_backend, mixed_samples):
    return [hf_backend.encode(s) for s in mixed_samples]


def test_the_locked_torch_has_onednns_linear():
    assert onednn_linear_available()  # else use_onednn_linears leaves nn.Linear: slower, not wrong


def test_only_linears_with_a_large_weight_switch_to_onednn():
    large = torch.nn.Linear(512, 256)  # 131,072 weights: the threshold
    small = torch.nn.Linear(512, 255)
    assert large.weight.numel() == ONEDNN_MIN_WEIGHT
    assert use_onednn_linears(torch.nn.Sequential(large, torch.nn.ReLU(), small)) == 1
    assert type(large) is OneDnnLinear and type(small) is torch.nn.Linear


CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9B14
flags\t\t: fpu avx2 avx512f

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9B14
"""


def test_cpuinfo_fields_are_read_by_name(tmp_path):
    (tmp_path / "cpuinfo").write_text(CPUINFO)
    assert cpuinfo_field("vendor_id", tmp_path / "cpuinfo") == "AuthenticAMD"
    assert cpuinfo_field("flags", tmp_path / "cpuinfo").split() == ["fpu", "avx2", "avx512f"]
    assert cpuinfo_field("model name", tmp_path / "cpuinfo") == "AMD EPYC 9B14"
    assert cpuinfo_field("microcode", tmp_path / "cpuinfo") == ""
    assert cpuinfo_field("vendor_id", tmp_path / "missing") == ""


AVX512 = frozenset({"avx2", "avx512f", "avx512bw"})
AVX2 = frozenset({"avx2", "fma"})


def test_large_linears_go_to_onednn_on_amd_processors_with_avx512_only(monkeypatch):
    assert cpu_linear_kernels("AuthenticAMD", AVX512) == "onednn"
    assert cpu_linear_kernels("AuthenticAMD", AVX2) == "torch"  # oneDNN is the slower one there
    assert cpu_linear_kernels("GenuineIntel", AVX512) == cpu_linear_kernels("", AVX512) == "torch"
    for vendor, flags, switched in (
        ("AuthenticAMD", AVX512, 1),
        ("AuthenticAMD", AVX2, 0),
        ("GenuineIntel", AVX512, 0),
    ):
        monkeypatch.setattr(cpu_kernels, "cpu_vendor", lambda vendor=vendor: vendor)
        monkeypatch.setattr(cpu_kernels, "cpu_flags", lambda flags=flags: flags)
        layers = torch.nn.Sequential(torch.nn.Linear(512, 256), torch.nn.Linear(512, 255))
        assert choose_cpu_linears(layers) == switched
        assert sum(type(m) is OneDnnLinear for m in layers) == switched
        assert linear_kernels_of(layers) == ("onednn" if switched else "torch")


def test_the_tiny_models_small_linears_stay_on_torchs_kernels(hf_backend):
    backbone = [m for m in hf_backend.model.model.modules() if isinstance(m, torch.nn.Linear)]
    assert backbone and all(m.weight.numel() < ONEDNN_MIN_WEIGHT for m in backbone)
    assert not any(type(m) is OneDnnLinear for m in backbone)


def test_scoring_runs_every_switched_linear_on_onednn_and_the_plain_pass_on_torchs_kernels(hf_backend, encoded):
    model = copy.deepcopy(hf_backend.model)  # the tiny model's linears, every one switched
    backbone = [m for m in model.model.modules() if isinstance(m, torch.nn.Linear)]
    assert use_onednn_linears(model.model, min_weight=0) == len(backbone)
    assert all(type(m) is OneDnnLinear for m in backbone)
    assert type(model.score) is torch.nn.Linear  # the float32 head stays torch's

    fast = linear_ops(lambda: model.score_batch(encoded))
    # torch's own: the head, and the patch embedding's product where the batch has images (patch_embed)
    torch_linears = 1 + any(e.pixel_values is not None for e in encoded)
    assert fast[ONEDNN_LINEAR] >= len(backbone) and fast["aten::linear"] == torch_linears
    plain = linear_ops(lambda: model.score_batch(encoded, plain=True))
    assert plain[ONEDNN_LINEAR] == 0 and plain["aten::linear"] > len(backbone)

    full = [model.score_batch([e], plain=True)[0] for e in encoded]
    for scores in (model.score_batch(encoded), [model.score_batch([e])[0] for e in encoded]):
        assert max(abs(a - b) for a, b in zip(scores, full, strict=True)) <= TOLERANCE


def test_training_with_gradients_runs_torchs_linear_and_gradients_flow(hf_backend, encoded):
    model = copy.deepcopy(hf_backend.model)
    use_onednn_linears(model.model, min_weight=0)
    batch = collate(encoded, model.config.text_config.pad_token_id)
    weight = model.model.language_model.layers[0].mlp.up_proj.weight
    model.train()

    def step():
        rewards = model.reward(model.hidden_states(**batch))
        (rewards[0] - rewards[1]).backward()

    counts = linear_ops(step)
    assert counts[ONEDNN_LINEAR] == 0 and weight.grad is not None and weight.grad.abs().sum() > 0


def test_other_dtypes_are_torchs_linear_exactly():
    torch.manual_seed(0)
    plain = torch.nn.Linear(16, 8).to(torch.bfloat16)
    fast = torch.nn.Linear(16, 8).to(torch.bfloat16)
    fast.load_state_dict(plain.state_dict())
    fast.__class__ = OneDnnLinear
    x = torch.randn(3, 16, dtype=torch.bfloat16)
    with torch.inference_mode():
        assert torch.equal(fast(x), plain(x))
        assert linear_ops(lambda: fast(x))[ONEDNN_LINEAR] == 0


def test_torch_kernels_holds_on_its_own_thread_only():
    layer = torch.nn.Linear(16, 8)
    layer.__class__ = OneDnnLinear
    x = torch.randn(3, 16)
    other: dict[str, int] = {}
    inside = threading.Event()
    done = threading.Event()

    def elsewhere():
        inside.wait()
        with torch.inference_mode():
            other.update(linear_ops(lambda: layer(x)))
        done.set()

    thread = threading.Thread(target=elsewhere)
    thread.start()
    with torch.inference_mode(), torch_kernels():
        inside.set()
        done.wait()
        mine = linear_ops(lambda: layer(x))
    thread.join()
    assert mine[ONEDNN_LINEAR] == 0 and other[ONEDNN_LINEAR] == 1
    with torch.inference_mode():
        assert torch.allclose(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias), atol=1e-6)
