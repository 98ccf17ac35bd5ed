"""The trainable reward model: a Qwen2.5-VL base plus a freshly initialised scalar head."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from service.model.checkpoint import build_model, load_weights, read_checkpoint_tensors, read_config


def reward_model_from_base(
    base_dir: str | Path, head_bias: bool = False, seed: int = 0, device: str = "cpu"
) -> tuple[Any, Any]:
    """Load a Qwen2.5-VL base directory and add a new linear head (std 1/sqrt(hidden), zero bias)."""
    from transformers import AutoProcessor

    base_dir = Path(base_dir)
    config = read_config(base_dir)
    model = build_model(config, head_bias=head_bias, device=device)
    load_weights(model, read_checkpoint_tensors(base_dir), base_dir, allow_missing_head=True)
    generator = torch.Generator().manual_seed(seed)
    hidden = config.text_config.hidden_size
    with torch.no_grad():
        model.score.weight.copy_(torch.randn(1, hidden, generator=generator) / hidden**0.5)
        if model.score.bias is not None:
            model.score.bias.zero_()
    return model, AutoProcessor.from_pretrained(base_dir)
