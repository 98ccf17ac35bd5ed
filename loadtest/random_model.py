"""Reward checkpoints with random weights at a real model's size (no download): what the GPU check serves.

``7b`` has Qwen2.5-VL-7B-Instruct's architecture (its published config, minus the generation head) with
the tiny tokenizer; ``tiny`` and ``bench`` are :mod:`vlreward.training.base_model`'s sizes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

# Qwen2.5-VL-7B-Instruct's published config.json (text and vision towers), minus the generation head.
QWEN25_VL_7B = {
    "vocab_size": 152064,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_layers": 28,
    "num_heads": 28,
    "num_kv_heads": 4,
    "vision_depth": 32,
    "vision_hidden": 1280,
    "vision_heads": 16,
    "vision_intermediate": 3420,
    "min_pixels": 4 * 28 * 28,
    "max_pixels": 1280 * 28 * 28,
}
QWEN25_VL_7B_FULL_ATTENTION_BLOCKS = [7, 15, 23, 31]


def base_dims(size: str) -> Any:
    from vlreward.training.base_model import SIZES, BaseSize

    return BaseSize(**QWEN25_VL_7B) if size == "7b" else SIZES[size]


@torch.no_grad()
def random_init(model: torch.nn.Module, seed: int) -> None:
    """Initialise in place like a fresh Qwen2.5-VL: normal(0, 0.02) matrices, unit norms, zero biases;
    the head normal(0, 1/sqrt(hidden))."""
    generator = torch.Generator(device=model.device).manual_seed(seed)
    for name, parameter in model.named_parameters():
        if name.startswith("score."):
            std = parameter.shape[-1] ** -0.5
            parameter.copy_(torch.randn(parameter.shape, generator=generator, device=model.device) * std)
        elif name.endswith(".bias"):
            parameter.zero_()
        elif parameter.ndim == 1:
            parameter.fill_(1.0)
        else:
            parameter.normal_(0.0, 0.02, generator=generator)


def build_random_checkpoint(size: str, directory: Path, device: str, seed: int = 0) -> Path:
    """A reward checkpoint of ``size`` with random weights, built in bf16 (CUDA) or fp32 (CPU) on ``device``."""
    from vlreward.service.model.checkpoint import REWARD_ARCHITECTURE, build_model, save_reward_model
    from vlreward.training.base_model import QWEN_SPECIAL_TOKENS, SIZES, base_config, build_processor, build_tokenizer

    dims = base_dims(size)
    tokenizer = build_tokenizer(SIZES["tiny"].vocab_size if size == "7b" else dims.vocab_size)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    config = base_config(dims, dims.vocab_size if size == "7b" else len(tokenizer), ids)
    if size == "7b":
        config.vision_config.fullatt_block_indexes = QWEN25_VL_7B_FULL_ATTENTION_BLOCKS
    config.architectures = [REWARD_ARCHITECTURE]
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = build_model(config, head_bias=False, device=device, dtype=dtype)
    random_init(model, seed)
    save_reward_model(model, build_processor(tokenizer, dims), directory)
    del model
    return directory
