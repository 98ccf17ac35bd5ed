"""Backends turn FormattedSamples into scores: transformers (``hf``) and vLLM (``vllm``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vlreward.service.backends.base import Backend

if TYPE_CHECKING:
    from vlreward.service.settings import Settings

BACKENDS = ("hf", "vllm")


def create_backend(name: str, model_dir: str, **options: Any) -> Backend:
    """Build the named backend around a checkpoint directory."""
    if name == "hf":
        from vlreward.service.backends.transformers import TransformersBackend

        return TransformersBackend(model_dir, **options)
    if name == "vllm":
        from vlreward.service.backends.vllm import VLLMBackend

        return VLLMBackend(model_dir, **options)
    raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


def backend_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``create_backend`` from the settings."""
    options: dict[str, Any] = {
        "dtype": settings.dtype,
        "device": settings.device,
        "max_batch_size": settings.max_batch_size,
        "max_batch_tokens": settings.max_batch_tokens,
        "min_pixels": settings.min_pixels,
        "max_pixels": settings.max_pixels,
    }
    if settings.backend == "vllm":
        from vlreward.service.backends.vllm import EngineSettings

        options["max_images"] = settings.max_images
        options["engine"] = EngineSettings(
            max_model_len=settings.vllm_max_model_len,
            gpu_memory_utilization=settings.vllm_gpu_memory_utilization,
            tensor_parallel_size=settings.vllm_tensor_parallel_size,
            max_num_seqs=settings.vllm_max_num_seqs,
            max_num_batched_tokens=settings.vllm_max_num_batched_tokens,
            enable_prefix_caching=settings.vllm_enable_prefix_caching,
            enforce_eager=settings.vllm_enforce_eager,
        )
    return options
