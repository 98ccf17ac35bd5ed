"""What /info, metrics and evaluations report about a loaded backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlreward.service.kinds import checkpoint_kind
from vlreward.service.model.checkpoint import checkpoint_hash, model_name
from vlreward.service.model.encoding import pixel_bounds


def backend_facts(name: str, model_dir: Path, dtype: str, device: str, processor: Any) -> dict[str, Any]:
    """The facts of a loaded backend (computed once, at load)."""
    min_pixels, max_pixels = pixel_bounds(processor)
    return {
        "model": model_name(model_dir),
        "kind": checkpoint_kind(model_dir).name,
        "backend": name,
        "dtype": dtype,
        "device": device,
        "checkpoint_hash": checkpoint_hash(model_dir),
        "min_pixels": min_pixels,
        "max_pixels": max_pixels,
    }


SMALL_MODEL_PARAMETERS = 4_000_000
"""Language-model parameters (decoder layers, without embeddings) below which a request's forward pass on a
CPU is short beside its handling (HTTP, template, tokens, image patches, scheduling): such a model leaves
a core to that work (docs/performance.md, "Small models")."""


def language_model_parameters(text_config: Any) -> int:
    """Parameters of a Qwen2.5-VL text config's decoder layers (attention and MLP weights)."""
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
    attention = 2 * text_config.hidden_size * text_config.num_attention_heads * head_dim  # q and o
    attention += 2 * text_config.hidden_size * text_config.num_key_value_heads * head_dim  # k and v
    mlp = 3 * text_config.hidden_size * text_config.intermediate_size
    return text_config.num_hidden_layers * (attention + mlp)
