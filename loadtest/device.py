"""What the benchmarks measure of a device: its processor, its matrix-product rate (the MFU reference), synchronisation,
GPU memory, and one throughput row with its MFU."""

from __future__ import annotations

import time
from pathlib import Path

import torch


def matmul_tflops(device: str) -> float:
    """The device's measured bf16 (CUDA) or fp32 (CPU) matrix-product rate, TFLOP/s."""
    side, dtype = (8192, torch.bfloat16) if device.startswith("cuda") else (1024, torch.float32)
    a = torch.randn(side, side, device=device, dtype=dtype)
    b = torch.randn(side, side, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    repeats = 10
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * side**3 * repeats / (time.perf_counter() - started) / 1e12


def cpu_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The host's processor as /proc/cpuinfo names it, with its family and model numbers (machines of one
    kind differ in it, and a cloud's name, "AMD EPYC", does not tell one generation from the next)."""
    import platform

    from vlreward.service.model.cpu_kernels import cpuinfo_field

    name = cpuinfo_field("model name", cpuinfo) or platform.processor() or "unknown"
    family, model = cpuinfo_field("cpu family", cpuinfo), cpuinfo_field("model", cpuinfo)
    return f"{name} (family {family}, model {model})" if family and model else name


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reserved_memory_gb(device: str) -> float | None:
    """What torch's caching allocator holds on the GPU (None on the CPU)."""
    return torch.cuda.memory_reserved() / 1e9 if device.startswith("cuda") else None


def peak_memory_gb(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 1e9 if device.startswith("cuda") else None


def row(name: str, samples: int, tokens: int, seconds: float, flops_per_token: float, peak: float) -> dict:
    """One table row: throughput and MFU of ``samples`` samples (``tokens`` tokens) in ``seconds``."""
    tokens_per_s = tokens / seconds
    return {
        "mode": name,
        "samples": samples,
        "seconds": round(seconds, 4),
        "samples_per_s": round(samples / seconds, 2),
        "tokens_per_s": round(tokens_per_s, 1),
        "mfu": round(tokens_per_s * flops_per_token / (peak * 1e12), 4),
    }
