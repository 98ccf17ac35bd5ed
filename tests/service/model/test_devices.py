"""Device and dtype resolution: auto is bf16 on CUDA and fp32 on the CPU; cuda:N is checked."""

from __future__ import annotations

import pytest
import torch

from vlreward.service.model.devices import DeviceError, parse_device, resolve_dtype, torch_placement


def test_device_names_parse_and_bad_ones_are_refused():
    assert parse_device("auto") == ("auto", None)
    assert parse_device("CUDA:3") == ("cuda", 3)
    assert parse_device("cpu") == ("cpu", None)
    for bad in ("gpu", "cpu:1", "cuda:-1", "cuda:x", "auto:0"):
        with pytest.raises(DeviceError, match="device must be"):
            parse_device(bad)


def test_auto_dtype_is_bf16_on_cuda_and_fp32_on_cpu():
    assert resolve_dtype("auto", "cuda") == "bfloat16"
    assert resolve_dtype("auto", "cpu") == "float32"
    assert resolve_dtype("float16", "cuda") == "float16"
    with pytest.raises(DeviceError, match="dtype must be"):
        resolve_dtype("fp8", "cuda")


def test_auto_on_this_cpu_machine_is_cpu_float32(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    placement = torch_placement("auto", "auto")
    assert (placement.device, placement.dtype) == ("cpu", "float32")
    with pytest.raises(DeviceError, match="torch sees no CUDA GPU"):
        torch_placement("cuda", "auto")


def test_a_device_index_is_kept_and_checked_against_the_gpus_torch_sees(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert torch_placement("auto", "auto").device == "cuda:0"
    assert torch_placement("auto", "auto").dtype == "bfloat16"
    assert torch_placement("cuda:1", "float32").device == "cuda:1"
    with pytest.raises(DeviceError, match="sees 2 CUDA GPU"):
        torch_placement("cuda:2", "auto")


def test_cudnn_attention_is_switched_on_cuda_only_and_off_by_default():
    import torch

    from vlreward.service.model.devices import Placement, choose_attention_kernels
    from vlreward.service.settings import Settings

    assert Settings().cudnn_attention is False
    before = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        torch.backends.cuda.enable_cudnn_sdp(True)
        choose_attention_kernels(Placement("cpu", None, "float32"), cudnn_attention=False)
        assert torch.backends.cuda.cudnn_sdp_enabled()  # the CPU leaves the switch alone
        choose_attention_kernels(Placement("cuda", 0, "bfloat16"), cudnn_attention=False)
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        choose_attention_kernels(Placement("cuda", 0, "bfloat16"), cudnn_attention=True)
        assert torch.backends.cuda.cudnn_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)
