"""Where a backend runs and in what precision: the one resolution of ``device`` and ``dtype``.

``device`` is ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; ``dtype`` is ``auto``, ``float32``, ``bfloat16``
or ``float16``. ``auto`` precision is bfloat16 on CUDA (half the memory of float32, and vLLM's
FlashAttention runs only 16-bit types) and float32 on the CPU (exact, and CPUs without AMX run bf16
matrix products slower than fp32). The transformers backend finds the device through torch (it must
run where vLLM is not installed); the vLLM backend through vLLM's own platform detection, so that a GPU
host with the CPU build of vLLM installed is refused instead of running on the host's memory.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

log = logging.getLogger("vlreward")

DTYPES = ("float32", "bfloat16", "float16")
AUTO = "auto"
_DEVICE = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


class DeviceError(ValueError):
    """The asked-for device or dtype cannot be used here; the message says why and what to do."""


@dataclass(frozen=True)
class Placement:
    """A resolved device and precision."""

    device_type: str
    """``cpu`` or ``cuda``."""
    index: int | None
    dtype: str

    @property
    def device(self) -> str:
        """``cpu`` or ``cuda:N`` (what /info reports and torch takes)."""
        return self.device_type if self.index is None else f"{self.device_type}:{self.index}"


def parse_device(device: str) -> tuple[str, int | None]:
    """Split ``cuda:1`` into ``("cuda", 1)``; refuse anything that is not auto, cpu, cuda or cuda:N."""
    match = _DEVICE.match(device.strip().lower())
    if match is None or (match.group(1) != "cuda" and match.group(2) is not None):
        raise DeviceError(f"device must be auto, cpu, cuda or cuda:N, not {device!r}")
    return match.group(1), None if match.group(2) is None else int(match.group(2))


def resolve_dtype(dtype: str, device_type: str) -> str:
    """``auto`` -> bfloat16 on CUDA, float32 on the CPU; explicit names are checked and kept."""
    if dtype == AUTO:
        return "bfloat16" if device_type == "cuda" else "float32"
    if dtype not in DTYPES:
        raise DeviceError(f"dtype must be {AUTO} or one of {', '.join(DTYPES)}, not {dtype!r}")
    return dtype


def torch_placement(device: str, dtype: str) -> Placement:
    """The transformers backend's placement: ``auto`` is the first CUDA device torch sees, else the CPU."""
    import torch

    kind, index = parse_device(device)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if kind == AUTO:
        kind, index = ("cuda", 0) if gpus else ("cpu", None)
    if kind == "cuda":
        if not gpus:
            raise DeviceError(f"device {device!r} asked for, but torch sees no CUDA GPU (torch {torch.__version__})")
        index = 0 if index is None else index
        if index >= gpus:
            raise DeviceError(f"device {device!r} asked for, but torch sees {gpus} CUDA GPU(s)")
    return Placement(kind, index, resolve_dtype(dtype, kind))


def choose_attention_kernels(placement: Placement, cudnn_attention: bool) -> None:
    """On CUDA, allow or forbid cuDNN's fused attention for torch's SDPA (a process-wide switch; see the
    ``cudnn_attention`` setting for why it is off by default). The CPU has no cuDNN: nothing to do."""
    if placement.device_type == "cuda":
        import torch

        torch.backends.cuda.enable_cudnn_sdp(cudnn_attention)


def _torch_sees_a_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def vllm_placement(device: str, dtype: str, tensor_parallel_size: int = 1) -> Placement:
    """The vLLM backend's placement, from the vLLM build's platform (CUDA or CPU).

    ``cuda:N`` runs the engine on GPU N by setting ``CUDA_VISIBLE_DEVICES`` for the engine process,
    which vLLM starts after this (its own workers number devices from 0).
    """
    from vllm.platforms import current_platform

    kind, index = parse_device(device)
    platform = "cuda" if current_platform.is_cuda() else "cpu" if current_platform.is_cpu() else None
    if platform is None:
        raise DeviceError(f"vLLM's platform here is {current_platform.device_type!r}; only cuda and cpu are supported")
    if kind == AUTO:
        kind = platform
        if platform == "cpu" and _torch_sees_a_gpu():
            log.warning(
                "a CUDA GPU is present but the CPU build of vLLM is installed: serving on the CPU "
                "(install the GPU build with `make dev VLLM_BUILD=gpu` to use the GPU)"
            )
    if kind != platform:
        fix = (
            "install the GPU build (`make dev VLLM_BUILD=gpu`, the gpu extra)"
            if kind == "cuda"
            else "serve with --backend transformers for the CPU, or install the CPU build (the vllm extra)"
        )
        raise DeviceError(f"device {device!r} asked for, but the installed vLLM build runs on {platform}: {fix}")
    if index is not None:
        if tensor_parallel_size != 1:
            raise DeviceError("cuda:N picks one GPU; with tensor parallelism choose GPUs with CUDA_VISIBLE_DEVICES")
        visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        if visible and index >= len(visible):
            raise DeviceError(f"device {device!r} asked for, but CUDA_VISIBLE_DEVICES lists {len(visible)}")
        os.environ["CUDA_VISIBLE_DEVICES"] = visible[index] if visible else str(index)
    return Placement(kind, index if kind == "cuda" else None, resolve_dtype(dtype, kind))


def release_device_memory(device: str) -> None:
    """Return freed tensors' memory to the device now: collect unreachable models, then hand torch's
    cached CUDA blocks back to the driver. A vLLM engine started next reserves a share of the card's total
    memory and refuses to start when that much is not free, so a model used before it (the probe's) must
    be gone from the GPU, not only from Python."""
    import gc

    gc.collect()
    if parse_device(device)[0] == "cuda":
        import torch

        if torch.cuda.is_initialized():
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
