"""Backends turn FormattedSamples into scores: ``transformers`` (``hf`` accepted) and vLLM (``vllm``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlreward.service.backends.base import Backend
from vlreward.service.settings import BACKENDS, backend_name

if TYPE_CHECKING:
    from vlreward.service.settings import Settings


def backend_class(name: str) -> type:
    """The class of the named backend (imported only when asked for: vLLM is an optional extra)."""
    name = backend_name(name)
    if name == "transformers":
        from vlreward.service.backends.transformers import TransformersBackend

        return TransformersBackend
    if name == "vllm":
        from vlreward.service.backends.vllm import VLLMBackend

        return VLLMBackend
    raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


def create_backend(name: str, model_dir: str | Path, **options: Any) -> Backend:
    """Build the named backend around a checkpoint directory with explicit options."""
    return backend_class(name)(model_dir, **options)


def load_backend(
    settings: Settings, model_dir: str | Path | None = None, adapters: Sequence[str | Path] = ()
) -> Backend:
    """Build the backend the settings name, configured by them, around ``model_dir`` (default: ``settings.model``),
    ready to serve the LoRA ``adapters`` folders (vLLM sizes its engine for them at start)."""
    return backend_class(settings.backend).from_settings(Path(model_dir or settings.model), settings, adapters)
