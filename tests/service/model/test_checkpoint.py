"""The checkpoint contract: exact round trips, and refusal of incomplete checkpoints."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from tests.helpers import copy_with_tensors, shape_image, uri
from vlreward.service.backends.transformers import TransformersBackend
from vlreward.service.media import MediaPolicy
from vlreward.service.model.checkpoint import (
    HASH_CACHE,
    HEAD_BIAS,
    HEAD_WEIGHT,
    REWARD_ARCHITECTURE,
    CheckpointError,
    build_model,
    checkpoint_hash,
    load_reward_model,
    read_config,
    save_reward_model,
)
from vlreward.service.model.probe import ProbeMismatch, read_probe
from vlreward.service.prepare import prepare_sample
from vlreward.service.schemas import Sample


def _samples(processor):
    samples = [
        Sample(prompt="Colour?", response="Red.", image=uri(shape_image("red"))),
        Sample(prompt="Hello", response="Hi!"),
    ]
    return [prepare_sample(s, processor, MediaPolicy()) for s in samples]


def test_config_and_head_names_follow_the_contract(tiny_reward):
    config = json.loads((tiny_reward / "config.json").read_text())
    assert config["architectures"] == [REWARD_ARCHITECTURE]
    assert config["num_labels"] == 1
    tensors = load_file(tiny_reward / "model.safetensors")
    assert tuple(tensors[HEAD_WEIGHT].shape) == (1, 128)
    assert tensors[HEAD_BIAS].tolist() == [0.25]
    assert not any(k.startswith("lm_head.") for k in tensors)
    for name in ("tokenizer.json", "chat_template.jinja", "processor_config.json", "vlreward_probe.json"):
        assert (tiny_reward / name).is_file()


def test_save_then_load_reproduces_scores_exactly(hf_backend, tmp_path):
    save_reward_model(hf_backend.model, hf_backend.processor, tmp_path / "copy")
    shutil.copy(hf_backend.model_dir / "vlreward_probe.json", tmp_path / "copy")
    reloaded = TransformersBackend(tmp_path / "copy", device="cpu")
    samples = _samples(hf_backend.processor)
    assert reloaded.score_sync(samples) == hf_backend.score_sync(samples)


def test_checkpoint_without_head_is_refused_naming_the_head(tiny_reward, tmp_path):
    def drop_head(tensors):
        del tensors[HEAD_WEIGHT], tensors[HEAD_BIAS]

    broken = copy_with_tensors(tiny_reward, tmp_path / "no-head", drop_head)
    with pytest.raises(CheckpointError, match="reward head is missing.*language_model.score.weight"):
        load_reward_model(broken)


def test_checkpoint_with_a_renamed_layer_is_refused_naming_it(tiny_reward, tmp_path):
    name = "model.layers.1.self_attn.q_proj.weight"

    def rename(tensors):
        tensors["model.layers.1.self_attn.query.weight"] = tensors.pop(name)

    broken = copy_with_tensors(tiny_reward, tmp_path / "renamed", rename)
    with pytest.raises(CheckpointError) as error:
        load_reward_model(broken)
    assert name in str(error.value) and "model.layers.1.self_attn.query.weight" in str(error.value)


def test_base_model_directory_is_refused_as_a_reward_checkpoint(tiny_base):
    with pytest.raises(CheckpointError, match="architectures"):
        load_reward_model(tiny_base)


def test_new_style_weight_names_load_to_the_same_scores(hf_backend, tiny_reward, tmp_path):
    def to_new_names(tensors):
        for key in list(tensors):
            if key.startswith("visual."):
                tensors["model." + key] = tensors.pop(key)
            elif key.startswith("model."):
                tensors["model.language_model." + key.removeprefix("model.")] = tensors.pop(key)

    renamed = copy_with_tensors(tiny_reward, tmp_path / "new-names", to_new_names)
    samples = _samples(hf_backend.processor)
    assert TransformersBackend(renamed, device="cpu").score_sync(samples) == hf_backend.score_sync(samples)


def test_probe_passes_on_the_saved_checkpoint_and_fails_on_a_changed_head(hf_backend, tiny_reward, tmp_path):
    assert abs(hf_backend.check_probe() - read_probe(tiny_reward).score) <= 1e-6

    def shift_bias(tensors):
        tensors[HEAD_BIAS] = tensors[HEAD_BIAS] + 0.5

    shifted = copy_with_tensors(tiny_reward, tmp_path / "shifted", shift_bias)
    with pytest.raises(ProbeMismatch, match="expected"):
        TransformersBackend(shifted, device="cpu").check_probe()


class AllocatedBytes(TorchDispatchMode):
    """Bytes of new tensor storage that torch operations create inside the block, by dtype."""

    def __init__(self):
        super().__init__()
        self.bytes: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and tensor.untyped_storage().data_ptr() not in inputs:
                self.bytes[tensor.dtype] += tensor.untyped_storage().nbytes()
        return out


def test_a_bf16_load_never_allocates_a_float32_copy_of_the_model(bench_reward):
    with AllocatedBytes() as allocated:
        model, _ = load_reward_model(bench_reward, torch.bfloat16, "cpu")
    parameter_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    assert model.dtype == torch.bfloat16 and parameter_bytes > 40e6  # the bench model: 26M parameters
    assert allocated.bytes[torch.bfloat16] <= 1.05 * parameter_bytes  # born in bf16, each once
    # float32: the head (hidden size numbers) and the rotary buffers, nothing of the model's size.
    assert allocated.bytes[torch.float32] < 0.01 * parameter_bytes
    # What the old load did (fp32 build, then cast) is what this check catches:
    with AllocatedBytes() as allocated:
        build_model(read_config(bench_reward), head_bias=False).to(torch.bfloat16)
    assert allocated.bytes[torch.float32] > 1.9 * parameter_bytes


def test_the_checkpoint_hash_is_computed_once_then_read_from_file_stamps(tiny_reward, tmp_path, monkeypatch):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_reward, copy)
    (copy / HASH_CACHE).unlink(missing_ok=True)
    read = Counter()
    real_open = Path.open

    def counting_open(self, mode="r", *args, **kwargs):
        handle = real_open(self, mode, *args, **kwargs)
        if "b" in mode and self.suffix == ".safetensors":
            read[self.name] += self.stat().st_size
        return handle

    monkeypatch.setattr(Path, "open", counting_open)
    first = checkpoint_hash(copy)
    weights = copy / "model.safetensors"
    assert read["model.safetensors"] == weights.stat().st_size  # the first time: the whole content
    read.clear()
    assert checkpoint_hash(copy) == first and not read  # then: metadata only
    # Same size and time, other bytes: still the cached value (the stamp is the key, by design) ...
    stat = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert checkpoint_hash(copy) == first
    # ... and a new modification time recomputes it from the content.
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    read.clear()
    assert checkpoint_hash(copy) != first and read["model.safetensors"] == weights.stat().st_size


def test_a_read_only_checkpoint_caches_its_hash_under_the_home(tiny_reward, tmp_path, monkeypatch):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_reward, copy)
    (copy / HASH_CACHE).unlink(missing_ok=True)
    monkeypatch.setenv("VLREWARD_HOME", str(tmp_path / "home"))
    real_write = Path.write_text

    def read_only_folder(self, *args, **kwargs):
        if self.parent == copy:
            raise PermissionError(f"read-only: {self}")
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", read_only_folder)
    value = checkpoint_hash(copy)
    assert not (copy / HASH_CACHE).exists() and len(list((tmp_path / "home" / "hashes").iterdir())) == 1
    assert checkpoint_hash(copy) == value
