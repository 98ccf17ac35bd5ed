"""The checkpoint contract: exact round trips, and refusal of incomplete checkpoints."""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

from tests.helpers import shape_image, uri
from vlreward.service.backends.transformers import TransformersBackend
from vlreward.service.media import MediaPolicy
from vlreward.service.model.checkpoint import (
    HEAD_BIAS,
    HEAD_WEIGHT,
    REWARD_ARCHITECTURE,
    CheckpointError,
    load_reward_model,
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


def _copy_with_tensors(source, destination, edit):
    shutil.copytree(source, destination)
    tensors = load_file(source / "model.safetensors")
    edit(tensors)
    save_file(tensors, destination / "model.safetensors")
    return destination


def test_checkpoint_without_head_is_refused_naming_the_head(tiny_reward, tmp_path):
    def drop_head(tensors):
        del tensors[HEAD_WEIGHT], tensors[HEAD_BIAS]

    broken = _copy_with_tensors(tiny_reward, tmp_path / "no-head", drop_head)
    with pytest.raises(CheckpointError, match="reward head is missing.*language_model.score.weight"):
        load_reward_model(broken)


def test_checkpoint_with_a_renamed_layer_is_refused_naming_it(tiny_reward, tmp_path):
    name = "model.layers.1.self_attn.q_proj.weight"

    def rename(tensors):
        tensors["model.layers.1.self_attn.query.weight"] = tensors.pop(name)

    broken = _copy_with_tensors(tiny_reward, tmp_path / "renamed", rename)
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

    renamed = _copy_with_tensors(tiny_reward, tmp_path / "new-names", to_new_names)
    samples = _samples(hf_backend.processor)
    assert TransformersBackend(renamed, device="cpu").score_sync(samples) == hf_backend.score_sync(samples)


def test_probe_passes_on_the_saved_checkpoint_and_fails_on_a_changed_head(hf_backend, tiny_reward, tmp_path):
    assert abs(hf_backend.check_probe() - read_probe(tiny_reward).score) <= 1e-6

    def shift_bias(tensors):
        tensors[HEAD_BIAS] = tensors[HEAD_BIAS] + 0.5

    shifted = _copy_with_tensors(tiny_reward, tmp_path / "shifted", shift_bias)
    with pytest.raises(ProbeMismatch, match="expected"):
        TransformersBackend(shifted, device="cpu").check_probe()
