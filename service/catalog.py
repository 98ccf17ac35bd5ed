"""Which models a server serves: ``--model [NAME=]PATH_OR_REPO`` (repeatable), ``--models FILE``, and
each model's own settings.

A server holds one or more named models. Each has its own backend, probe, batcher and per-model settings
(:data:`PER_MODEL_SETTINGS`: backend, dtype, device, batching, per-sample limits, the vLLM engine's
memory share, ...); everything else (HTTP, admission's queue bound, auth, media policy) is the server's.

The models file is YAML, a mapping from name to that model's settings::

    helpful:
      model: /models/helpful          # a checkpoint directory or a Hugging Face repo id
      backend: vllm
      vllm_gpu_memory_utilization: 0.45
    safety:
      model: Skywork/Skywork-VL-Reward-Qwen2.5VL-7B
      default: true                   # requests without `model` go here (else: the first model)
      max_tokens: 4096
    guarded:
      ensemble: {helpful: 0.7, safety: 0.3}   # answers as one model: service/ensemble.py
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vlreward.service.ensemble import Ensemble, EnsembleError, member_parts
from vlreward.service.settings import Settings

PER_MODEL_SETTINGS = frozenset(
    {
        "model",
        "revision",
        "base",
        "judge",
        "normalize",
        "backend",
        "dtype",
        "device",
        "attn_implementation",
        "cudnn_attention",
        "pack_batches",
        "max_batch_tokens",
        "max_batch_size",
        "cpu_lanes",
        "max_wait_ms",
        "max_tokens",
        "max_images",
        "max_steps",
        "max_step_tokens",
        "min_pixels",
        "max_pixels",
    }
    | {name for name in Settings.model_fields if name.startswith("vllm_")}
)
"""The settings a model may set for itself; the others are the server's."""

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
"""A served model's name: what requests send as ``model`` and metrics carry as a label."""


class CatalogError(ValueError):
    """A model flag or models file that cannot be served (one line, for the CLI)."""


class ModelSpec(BaseModel):
    """One served model: its name, where its checkpoint is, and the settings it sets for itself."""

    model_config = ConfigDict(frozen=True)

    name: str | None = Field(None, description="None: named after its checkpoint once that is resolved.")
    source: str | None = Field(None, description="Checkpoint directory or repo id; None: the embedded default.")
    default: bool = False
    settings: dict[str, Any] = Field(default_factory=dict)
    ensemble: dict[str, float] | None = Field(
        None, description="An ensemble of the other served models (member -> weight) instead of a checkpoint."
    )


def parse_model_flag(value: str) -> ModelSpec:
    """``NAME=PATH_OR_REPO`` or a bare ``PATH_OR_REPO`` (one ``--model`` flag or ``VLREWARD_MODEL``)."""
    name, separator, source = value.partition("=")
    if separator and MODEL_NAME.match(name) and source:
        return ModelSpec(name=name, source=source)
    return ModelSpec(source=value)


def read_models_file(path: str | Path) -> list[ModelSpec]:
    """The models of a YAML models file (see the module's docstring), in the file's order."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CatalogError(f"cannot read the models file {path}: {exc}") from None
    if not isinstance(data, Mapping) or not data:
        raise CatalogError(f"{path}: expected a mapping from model name to its settings")
    specs = []
    for name, entry in data.items():
        entry = dict(entry or {})
        default = entry.pop("default", False)
        source = entry.pop("model", None)
        ensemble = entry.pop("ensemble", None)
        if ensemble is not None and (source is not None or entry or not isinstance(ensemble, Mapping)):
            raise CatalogError(f"{path}: ensemble {name!r} is a mapping of member -> weight, with nothing else")
        spec = ModelSpec(name=str(name), source=source, default=default, settings=entry, ensemble=ensemble)
        specs.append(spec)
    return specs


def model_specs(settings: Settings, model_flags: Iterable[str] = ()) -> list[ModelSpec]:
    """The models a server serves: the ``--model`` flags (or else ``settings.model``), then the models
    file's; with none, the embedded default. Names are checked here; sources later."""
    specs = [parse_model_flag(flag) for flag in model_flags]
    if not specs and settings.model is not None:
        specs = [parse_model_flag(settings.model)]
    if settings.models is not None:
        specs += read_models_file(settings.models)
    specs = specs or [ModelSpec()]
    check_specs(specs)
    return specs


def check_specs(specs: list[ModelSpec]) -> None:
    """Names valid and distinct (several models each need one), at most one default, settings per-model."""
    for spec in specs:
        if spec.name is not None and not MODEL_NAME.match(spec.name):
            raise CatalogError(f"model name {spec.name!r}: use letters, digits, '.', '_' and '-' (at most 128)")
        server_wide = sorted(set(spec.settings) - PER_MODEL_SETTINGS)
        if server_wide:
            raise CatalogError(
                f"model {spec.name!r}: {', '.join(server_wide)} cannot be set per model (server-wide settings, or "
                f"unknown); a model may set {', '.join(sorted(PER_MODEL_SETTINGS))}"
            )
    if len(specs) > 1:
        unnamed = [spec.source for spec in specs if spec.name is None]
        if unnamed:
            raise CatalogError(f"with several models each needs a name: --model NAME={unnamed[0]}")
        names = [spec.name for spec in specs]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise CatalogError(f"model name {repeated[0]!r} is given twice")
    defaults = [spec.name for spec in specs if spec.default]
    if len(defaults) > 1:
        raise CatalogError(f"more than one default model: {', '.join(map(str, defaults))}")
    served = {spec.name for spec in specs if spec.ensemble is None}
    adapters = {spec.name: spec.settings["base"] for spec in specs if spec.settings.get("base") is not None}
    for name, base in adapters.items():
        if base not in served or base in adapters:
            raise CatalogError(f"adapter {name!r}: its base {base!r} is not a served model (adapters adapt models)")
    for spec in specs:
        if spec.ensemble is None:
            continue
        if spec.default:
            raise CatalogError(f"ensemble {spec.name!r} cannot be the default model (name it in requests)")
        unknown = sorted({member_parts(m)[0] for m in spec.ensemble} - served)
        if unknown:
            raise CatalogError(f"ensemble {spec.name!r}: {unknown[0]!r} is not a served model (ensembles hold models)")
        try:
            Ensemble(spec.name, spec.ensemble)
        except EnsembleError as exc:
            raise CatalogError(str(exc)) from None


def model_settings(server: Settings, spec: ModelSpec) -> Settings:
    """The settings one model runs with: the server's, with the model's own on top."""
    values = server.model_dump() | spec.settings | {"model": spec.source, "models": None}
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"]) or "settings"
        raise CatalogError(f"model {spec.name!r}: {field}: {error['msg']}") from None


def default_index(specs: list[ModelSpec]) -> int:
    """The model requests without ``model`` go to: the one marked default, else the first."""
    return next((i for i, spec in enumerate(specs) if spec.default), 0)
