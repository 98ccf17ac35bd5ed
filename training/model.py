"""The trainable reward model: a Qwen2.5-VL base plus a freshly initialised scalar head."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import torch

from vlreward.service.model.checkpoint import build_model, iter_checkpoint_tensors, load_weights, read_config
from vlreward.service.model.lora import PEFT_PREFIX
from vlreward.training.config import Part


def reward_model_from_base(
    base_dir: str | Path, head_bias: bool = False, seed: int = 0, device: str = "cpu", heads: int = 1
) -> tuple[Any, Any]:
    """Load a Qwen2.5-VL base directory and add a new linear head (std 1/sqrt(hidden), zero bias) with
    ``heads`` outputs (a multi-head model's: one per head)."""
    from transformers import AutoProcessor

    base_dir = Path(base_dir)
    config = read_config(base_dir)
    model = build_model(config, head_bias=head_bias, device=device, outputs=heads)
    load_weights(model, iter_checkpoint_tensors(base_dir), base_dir, allow_missing_head=True)
    generator = torch.Generator().manual_seed(seed)
    hidden = config.text_config.hidden_size
    with torch.no_grad():
        model.score.weight.copy_(torch.randn(heads, hidden, generator=generator) / hidden**0.5)
        if model.score.bias is not None:
            model.score.bias.zero_()
    return model, AutoProcessor.from_pretrained(base_dir)


# Parameter-name prefixes of the parts the recipe freezes or trains.
VISION_ENCODER_PREFIXES = ("model.visual.patch_embed.", "model.visual.blocks.")
PARTS = dict(
    zip(
        typing.get_args(Part),
        (VISION_ENCODER_PREFIXES, ("model.visual.merger.",), ("model.language_model.",), ("score.",)),
        strict=True,
    )
)
"""Parameter-name prefixes of each part a learning-rate multiplier can name (the names: config.Part)."""


def part_name(name: str) -> str:
    """A parameter's name as the reward model's own (without the prefix peft's wrapper puts before it)."""
    return name.removeprefix(PEFT_PREFIX)


def freeze_vision_encoder(model: Any) -> None:
    """Freeze the patch embedding and the vision blocks (the paper's recipe); what else trains is left as it
    is (everything, or a LoRA run's adapters and head)."""
    for name, parameter in model.named_parameters():
        if part_name(name).startswith(VISION_ENCODER_PREFIXES):
            parameter.requires_grad_(False)


def parameter_report(model: Any) -> dict[str, dict[str, int]]:
    """Trainable and total parameters per part."""
    report = {part: {"trainable": 0, "total": 0} for part in PARTS}
    for name, parameter in model.named_parameters():
        part = next((p for p, prefixes in PARTS.items() if part_name(name).startswith(prefixes)), None)
        if part is None:
            continue
        report[part]["total"] += parameter.numel()
        if parameter.requires_grad:
            report[part]["trainable"] += parameter.numel()
    return report


def parameter_groups(model: Any, learning_rate: float, multipliers: dict[str, float]) -> list[dict]:
    """Optimiser parameter groups: trainable parameters per part, each with its learning rate."""
    groups: dict[str, list] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        part = next((p for p, prefixes in PARTS.items() if part_name(name).startswith(prefixes)), "other")
        groups.setdefault(part, []).append(parameter)
    unknown = set(multipliers) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown parts in lr_multipliers: {sorted(unknown)} (parts: {', '.join(PARTS)})")
    return [
        {"params": params, "lr": learning_rate * multipliers.get(part, 1.0), "name": part}
        for part, params in groups.items()
    ]
