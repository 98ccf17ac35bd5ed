"""Training configuration: a recipe is a YAML file that fills these dataclasses."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

RECIPES_DIR = Path(__file__).parent / "recipes"


@dataclass
class StageConfig:
    """One training stage."""

    name: str
    learning_rate: float
    epochs: float = 1.0
    """Passes over the stage's data (fractions allowed)."""
    max_steps: int | None = None
    """Stop after this many optimiser steps (overrides epochs when smaller)."""
    include_text: bool = False
    """Add the text-only pairs (the paper's stage 2)."""
    warmup_steps: int = 0
    schedule: str = "constant_with_warmup"
    """A transformers scheduler name: constant_with_warmup, linear, cosine."""


@dataclass
class TrainConfig:
    """A recipe: model, data, optimisation and bookkeeping."""

    name: str
    base_model: str = "tiny"
    """A Qwen2.5-VL base directory, or "tiny"/"bench" to build one here."""
    stages: list[StageConfig] = field(default_factory=list)
    batch_size: int = 1
    """Preference pairs per device per step (each pair is two sequences in one forward)."""
    gradient_accumulation_steps: int = 1
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """AdamW's (beta1, beta2); a lower beta2 (0.95, 0.98) damps the loss spikes of a high learning rate."""
    max_grad_norm: float = 1.0
    bf16: bool = False
    gradient_checkpointing: bool = False
    seed: int = 0
    eval_every: int = 0
    """Optimiser steps between held-out evaluations (0: only at the end of each stage)."""
    save_every: int = 0
    """Optimiser steps between checkpoints (0: only at the end of each stage)."""
    log_every: int = 50
    eval_pairs: int = 300
    """Held-out pairs used for the evaluations during training."""
    min_pixels: int | None = None
    max_pixels: int | None = None
    num_threads: int | None = None
    """torch threads per process (None: torch's default)."""
    lr_multipliers: dict[str, float] = field(default_factory=dict)
    """Per-part learning-rate factors, e.g. {"merger": 10} (parts: merger, language model, head)."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown recipe keys: {sorted(unknown)}")
        data = dict(data)
        data["stages"] = [StageConfig(**stage) for stage in data.get("stages", [])]
        if "adam_betas" in data:
            data["adam_betas"] = tuple(data["adam_betas"])
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_recipe(name_or_path: str) -> TrainConfig:
    """A shipped recipe by name (``paper``, ``tiny``) or a YAML file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = RECIPES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        shipped = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no recipe {name_or_path!r} (shipped: {', '.join(shipped)})")
    return TrainConfig.from_dict(yaml.safe_load(path.read_text()))
