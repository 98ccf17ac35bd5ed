"""The backbone's linear layers on oneDNN when scoring in float32 on the CPU.

torch sends a float32 ``nn.Linear`` on the CPU to MKL's SGEMM; oneDNN (also inside torch, the library it
uses for bfloat16 and convolutions) computes the same products faster on the AMD processors this project
is measured on (docs/performance.md, "The measurements behind the defaults"). :class:`OneDnnLinear` calls
oneDNN's linear (``torch.ops.mkldnn._linear_pointwise``, the op torch's own compiler emits for CPU
linears) where that applies: float32 on the CPU, no gradient needed. Elsewhere (a GPU, bfloat16,
training) it is ``nn.Linear``. Only layers whose weight has at least :data:`ONEDNN_MIN_WEIGHT` elements
switch: each oneDNN call costs about 13 microseconds more than MKL's, which a small layer's arithmetic does
not pay back (docs/performance.md, "Small models"); a fixed rule, not a timing at load, so that a model
runs the same kernels on every start and a request always gets the same score. The weights are not
repacked (no second copy in memory); parameters, names and state dict are unchanged. Results differ from
MKL's by float rounding only (about 1e-6 on a score).

:func:`torch_kernels` turns it off on the calling thread, and with it the blocked causal attention
(:mod:`.causal_attention`): the model card's plain forward pass (the benchmarks' naive loop) runs torch's
default kernels and transformers' sdpa, as a user's own transformers loop would.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

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
