"""The backbone's linear layers on oneDNN when scoring in float32 on an AMD processor with AVX-512.

torch sends a float32 ``nn.Linear`` on the CPU to MKL's SGEMM. MKL chooses its code by the processor's
vendor and takes a generic path on AMD's; oneDNN (also inside torch, the library it uses for bfloat16 and
convolutions) chooses by instruction set and computes the same products faster there. On Intel's
processors MKL's own kernels are as fast in a loop and faster in a forward pass (docs/performance.md, "The
measurements behind the defaults"), and on an AMD processor without AVX-512 (AVX2 only) oneDNN's kernels
are the slower ones. So :func:`choose_cpu_linears` switches the backbone's large linears to
:class:`OneDnnLinear` only on the vendors of :data:`ONEDNN_CPU_VENDORS` with the instruction sets of
:data:`ONEDNN_CPU_FLAGS`. :class:`OneDnnLinear` calls
oneDNN's linear (``torch.ops.mkldnn._linear_pointwise``, the op torch's own compiler emits for CPU
linears) where that applies: float32 on the CPU, no gradient needed. Elsewhere (a GPU, bfloat16,
training) it is ``nn.Linear``. Only layers whose weight has at least :data:`ONEDNN_MIN_WEIGHT` elements
switch: each oneDNN call costs about 13 microseconds more than MKL's, which a small layer's arithmetic does
not pay back (docs/performance.md, "Small models"). These are fixed rules (the processor, the weight's size),
not a timing at load, so that a model runs the same kernels on every start of a host and a request always
gets the same score. The weights are not repacked (no second copy in memory); parameters, names and state
dict are unchanged. Results differ from MKL's by float rounding only (about 1e-6 on a score).

:func:`torch_kernels` turns it off on the calling thread, and with it the blocked causal attention
(:mod:`.causal_attention`): the model card's plain forward pass (the benchmarks' naive loop) runs torch's
default kernels and transformers' sdpa, as a user's own transformers loop would.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path

import torch
from torch import nn

_TORCH_KERNELS_ONLY: ContextVar[bool] = ContextVar("vlreward_torch_kernels_only", default=False)


def onednn_linear_available() -> bool:
    """Whether this torch build has oneDNN's CPU linear."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def torch_kernels_only() -> bool:
    """Whether the calling thread is inside :func:`torch_kernels`."""
    return _TORCH_KERNELS_ONLY.get()


@contextlib.contextmanager
def torch_kernels() -> Iterator[None]:
    """Within the block, on this thread, :class:`OneDnnLinear` is plain ``nn.Linear`` and attention is
    transformers' sdpa."""
    token = _TORCH_KERNELS_ONLY.set(True)
    try:
        yield
    finally:
        _TORCH_KERNELS_ONLY.reset(token)


class OneDnnLinear(nn.Linear):
    """``nn.Linear`` computed by oneDNN for float32 inference on the CPU (see the module's docstring)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if (
            weight.device.type == "cpu"
            and weight.dtype == torch.float32
            and input.dtype == torch.float32
            and not (torch.is_grad_enabled() and (weight.requires_grad or input.requires_grad))
            and not torch_kernels_only()
        ):
            return torch.ops.mkldnn._linear_pointwise(input, weight, self.bias, "none", [], "")
        return super().forward(input)


ONEDNN_MIN_WEIGHT = 1 << 17
"""Weight elements (in x out features) from which a linear runs on oneDNN. Measured on the 2-core AMD
machines (float32, 16 to 1,024 tokens, one and two threads): 512x512 and larger are 4-25 % faster on oneDNN at
every token count; 512x128 and smaller are up to 3x slower below 256 tokens (the call's fixed cost)."""


ONEDNN_CPU_VENDORS = frozenset({"AuthenticAMD"})
"""Processor vendors (``vendor_id`` in /proc/cpuinfo) whose hosts run the backbone's large float32 linears
on oneDNN: AMD's, where MKL takes a generic code path. On Intel's (``GenuineIntel``) and any other, torch's
default kernels run."""

ONEDNN_CPU_FLAGS = frozenset({"avx512f"})
"""Instruction sets (``flags`` in /proc/cpuinfo) such a host must also have: an AMD EPYC with AVX-512
(family 26) runs the bench model's pass faster on oneDNN, one with AVX2 only (family 25, model 1) slower
(docs/performance.md, "The linear kernels")."""


def cpuinfo_field(name: str, cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The first value of ``name`` in /proc/cpuinfo (``vendor_id``, ``model name``); '' where there is none."""
    if not cpuinfo.exists():
        return ""
    for line in cpuinfo.read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return ""


@functools.cache
def cpu_vendor() -> str:
    """This host's processor vendor, read once per process: ``AuthenticAMD``, ``GenuineIntel``, or ''."""
    return cpuinfo_field("vendor_id")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This host's instruction sets (``flags`` in /proc/cpuinfo), read once per process."""
    return frozenset(cpuinfo_field("flags").split())


def cpu_linear_kernels(vendor: str | None = None, flags: frozenset[str] | None = None) -> str:
    """The kernels the backbone's large float32 linears run on, on a host of ``vendor`` with the instruction
    sets ``flags`` (default: this one's): ``onednn`` or ``torch`` (MKL's SGEMM)."""
    vendor = cpu_vendor() if vendor is None else vendor
    flags = cpu_flags() if flags is None else flags
    chosen = vendor in ONEDNN_CPU_VENDORS and flags >= ONEDNN_CPU_FLAGS
    return "onednn" if onednn_linear_available() and chosen else "torch"


def linear_kernels_of(module: nn.Module) -> str:
    """What ``module``'s large float32 linears run on: ``onednn`` where any of its layers switched
    (:func:`choose_cpu_linears`), else ``torch``. A model whose layers are all under
    :data:`ONEDNN_MIN_WEIGHT` reads ``torch`` on any host."""
    return "onednn" if any(isinstance(m, OneDnnLinear) for m in module.modules()) else "torch"


def choose_cpu_linears(module: nn.Module) -> int:
    """The backbone's linears on this host's kernels (:func:`cpu_linear_kernels`); how many switched to
    oneDNN."""
    return use_onednn_linears(module) if cpu_linear_kernels() == "onednn" else 0


def use_onednn_linears(module: nn.Module, min_weight: int = ONEDNN_MIN_WEIGHT) -> int:
    """Make every ``nn.Linear`` in ``module`` with at least ``min_weight`` weight elements a
    :class:`OneDnnLinear` (its class changes, nothing else, so checkpoints load and save as before); how
    many. Nothing changes where torch has no oneDNN linear."""
    if not onednn_linear_available():
        return 0
    linears = [m for m in module.modules() if type(m) is nn.Linear and m.weight.numel() >= min_weight]
    for linear in linears:
        linear.__class__ = OneDnnLinear
    return len(linears)
