"""`vlreward bootstrap-base`: a self-contained, seeded tiny Qwen2.5-VL directory."""

from __future__ import annotations

import hashlib

import torch
from transformers import AutoProcessor, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from typer.testing import CliRunner

from vlreward.training.base_model import QWEN_SPECIAL_TOKENS, SIZES
from vlreward.training.cli import app


def _digests(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_bootstrap_base_is_deterministic_and_self_contained(tiny_base, tmp_path):
    result = CliRunner().invoke(app, ["bootstrap-base", str(tmp_path / "again")])
    assert result.exit_code == 0, result.output
    assert _digests(tmp_path / "again") == _digests(tiny_base)
    names = set(_digests(tiny_base))
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "chat_template.jinja",
        "processor_config.json",
    } <= names


def test_tiny_base_has_qwen_special_tokens_and_head_dim_64(tiny_base):
    processor = AutoProcessor.from_pretrained(tiny_base)
    for token in QWEN_SPECIAL_TOKENS:
        assert processor.tokenizer.convert_tokens_to_ids(token) is not None
        assert processor.tokenizer.tokenize(token) == [token]
    config = Qwen2_5_VLConfig.from_pretrained(tiny_base)
    assert config.text_config.hidden_size // config.text_config.num_attention_heads == 64
    assert config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert config.architectures == ["Qwen2_5_VLForConditionalGeneration"]
    assert "You are a helpful assistant." in processor.chat_template


def test_tiny_base_loads_in_transformers_without_missing_weights(tiny_base):
    _, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_base, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_bench_size_has_tens_of_millions_of_parameters():
    from vlreward.training.base_model import base_config

    dims = SIZES["bench"]
    config = base_config(dims, dims.vocab_size, {token: i for i, token in enumerate(QWEN_SPECIAL_TOKENS)})
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    parameters = sum(p.numel() for p in model.parameters())
    assert 10_000_000 <= parameters <= 100_000_000
    assert dims.hidden_size // dims.num_heads == 64
