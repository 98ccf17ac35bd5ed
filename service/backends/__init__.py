"""Backends turn FormattedSamples into scores: transformers (``hf``) and vLLM (``vllm``)."""

from __future__ import annotations

from typing import Any

from service.backends.base import Backend

BACKENDS = ("hf",)


def create_backend(name: str, model_dir: str, **options: Any) -> Backend:
    """Build the named backend around a checkpoint directory."""
    if name == "hf":
        from service.backends.transformers import TransformersBackend

        return TransformersBackend(model_dir, **options)
    raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
