"""Training configuration: a recipe (YAML) validated into these models, the one declaration of every field.

Each field has a type (``Literal`` for choices), a default, a help text and its validation; from them come
``vlreward train --help``'s list and the checks of a recipe and of ``--set KEY=VALUE`` overrides (any field,
stages included: ``--set stages.0.learning_rate=2e-4``). A bad key or value anywhere is one
:class:`RecipeError` naming it.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

RECIPES_DIR = Path(__file__).parent / "recipes"
Part = Literal["vision encoder", "merger", "language model", "head"]
"""The parts of the model a learning-rate multiplier can name (training.model maps them to parameters)."""


class RecipeError(ValueError):
    """A recipe or an override that does not fit the configuration; the message names the key."""


class StageConfig(BaseModel):
    """One training stage."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="The stage's name (checkpoints and logs carry it).")
    learning_rate: float = Field(gt=0, description="Peak learning rate of the stage.")
    epochs: float = Field(1.0, gt=0, description="Passes over the stage's data (fractions allowed).")
    max_steps: int | None = Field(
        None, gt=0, description="Stop after this many optimiser steps (overrides epochs when smaller)."
    )
    include_text: bool = Field(False, description="Add the text-only pairs (the paper's stage 2).")
    warmup_steps: int = Field(0, ge=0, description="Steps of linear warm-up to the peak rate.")
    schedule: Literal["constant_with_warmup", "linear", "cosine"] = Field(
        "constant_with_warmup", description="The transformers learning-rate schedule after warm-up."
    )


class TrainConfig(BaseModel):
    """A recipe: model, data, optimisation and bookkeeping."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="The recipe's name.")
    base_model: str = Field("tiny", description='A Qwen2.5-VL base directory, or "tiny"/"bench" to build one here.')
    stages: list[StageConfig] = Field(default_factory=list, description="The stages, run in order.")
    batch_size: int = Field(
        1, ge=1, description="Preference pairs per device per step (each pair is two sequences in one forward)."
    )
    gradient_accumulation_steps: int = Field(1, ge=1, description="Steps accumulated per optimiser step.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW's weight decay.")
    adam_betas: tuple[float, float] = Field(
        (0.9, 0.999),
        description="AdamW's (beta1, beta2); a lower beta2 (0.95, 0.98) damps the loss spikes of a high rate.",
    )
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    bf16: bool = Field(False, description="Train in bfloat16 mixed precision.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in the backward pass.")
    seed: int = Field(0, description="Seed of the head, the data order and everything random.")
    eval_every: int = Field(
        0, ge=0, description="Optimiser steps between held-out evaluations (0: only at the end of each stage)."
    )
    save_every: int = Field(
        0, ge=0, description="Optimiser steps between checkpoints (0: only at the end of each stage)."
    )
    log_every: int = Field(50, ge=1, description="Optimiser steps between log lines.")
    eval_pairs: int = Field(300, ge=1, description="Held-out pairs used for the evaluations during training.")
    min_pixels: int | None = Field(None, gt=0, description="The image processor's lower pixel bound (None: its own).")
    max_pixels: int | None = Field(None, gt=0, description="The image processor's upper pixel bound (None: its own).")
    num_threads: int | None = Field(None, ge=1, description="torch threads per process (None: torch's default).")
    lr_multipliers: dict[Part, float] = Field(
        default_factory=dict, description='Per-part learning-rate factors, e.g. {"merger": 10}.'
    )

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "recipe") -> TrainConfig:
        """Validate a recipe's mapping; any bad key or value is one :class:`RecipeError` naming it."""
        if not isinstance(data, dict):
            raise RecipeError(f"{source}: a recipe is a mapping of keys to values, not {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise RecipeError(f"{source}: " + "; ".join(_describe(error) for error in exc.errors())) from None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


def _describe(error: Any) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"{where}: unknown key"
    return f"{where}: {error['msg']} (got {error.get('input')!r})"


def load_recipe(name_or_path: str, overrides: list[str] = ()) -> TrainConfig:
    """A shipped recipe by name (``paper``, ``tiny``) or a YAML file, with ``KEY=VALUE`` overrides applied."""
    path = Path(name_or_path)
    if not path.suffix:
        path = RECIPES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        shipped = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no recipe {name_or_path!r} (shipped: {', '.join(shipped)})")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path.name}: not YAML ({str(exc).splitlines()[0]})") from None
    for override in overrides:
        data = apply_override(data, override)
    return TrainConfig.from_dict(data, path.name)


def apply_override(data: dict[str, Any], override: str) -> dict[str, Any]:
    """``KEY=VALUE`` set in a recipe's mapping: ``KEY`` is dotted (``stages.0.learning_rate``), ``VALUE`` is
    read as YAML (``2e-4``, ``true``, ``[0.9, 0.95]``); the result is validated with the whole recipe."""
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise RecipeError(f"--set {override!r}: expected KEY=VALUE, e.g. stages.0.learning_rate=2e-4")
    value = yaml.safe_load(text) if text.strip() else None
    parts = key.split(".")
    node: Any = data
    for depth, part in enumerate(parts):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise RecipeError(f"--set {key}: {'.'.join(parts[: depth + 1])} is not one of the {len(node)} entries")
            slot: int | str = int(part)
        elif isinstance(node, dict):
            slot = part
        else:
            raise RecipeError(f"--set {key}: {'.'.join(parts[:depth])} holds a value, not keys")
        if depth == len(parts) - 1:
            node[slot] = value
        else:
            node = node.setdefault(slot, {}) if isinstance(node, dict) else node[slot]
    return data


def field_help() -> list[str]:
    """One line per field, stages' fields included: the list ``vlreward train --help`` shows."""
    lines = []
    for prefix, model in (("", TrainConfig), ("stages.N.", StageConfig)):
        for name, field in model.model_fields.items():
            kind = _type_name(field.annotation)
            default = "required" if field.is_required() else repr(field.get_default(call_default_factory=True))
            lines.append(f"{prefix}{name} ({kind}; default {default}): {field.description}")
    return lines


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is Literal:
        return " | ".join(str(a) for a in typing.get_args(annotation))
    text = str(annotation) if not isinstance(annotation, type) else annotation.__name__
    return text.replace("typing.", "").replace("vlreward.training.config.", "")
