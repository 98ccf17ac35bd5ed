"""The vision tower's patch embedding as the matrix product it is, for inference.

Qwen2.5-VL embeds each image patch with an ``nn.Conv3d`` whose kernel equals its stride (no overlap, no
padding), so every output is one patch's pixels times the kernel: a linear layer over the flattened
patch. torch 2.9 and later no longer run that convolution on cuDNN on CUDA, and its fallback is far
slower than the product (vLLM runs this layer as ``F.linear`` for that reason:
``vllm/model_executor/layers/conv.py``, vllm-project/vllm#27406, pytorch/pytorch#166122). On the CPU too
the product is several times faster than the convolution (docs/performance.md, "The measurements behind
the defaults").

:class:`LinearPatchEmbed` computes ``F.linear`` on the convolution's own weight, viewed as a matrix (the
parameter, its name and its checkpoint layout are unchanged). Training (gradients on: DeepSpeed ZeRO-3
gathers a parameter when its own module runs) and the model card's plain pass
(:func:`~vlreward.service.model.cpu_kernels.torch_kernels`) keep transformers' convolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as qwen

from vlreward.service.model.cpu_kernels import torch_kernels_only


class LinearPatchEmbed(qwen.Qwen2_5_VisionPatchEmbed):
    """Qwen2.5-VL's patch embedding; in inference, ``F.linear`` on the flattened patches."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or torch_kernels_only():
            return super().forward(hidden_states)
        weight = self.proj.weight  # [embed_dim, channels, temporal, patch, patch]: each row one patch's kernel
        patches = hidden_states.to(weight.dtype).view(-1, weight[0].numel())
        return F.linear(patches, weight.view(weight.shape[0], -1), self.proj.bias)


def embed_patches_as_linear(vision_tower: torch.nn.Module) -> None:
    """Make a built Qwen2.5-VL vision tower's patch embedding a :class:`LinearPatchEmbed` (its class changes,
    nothing else). Refuses a convolution whose patches could overlap or that pads."""
    embed = vision_tower.patch_embed
    proj = embed.proj
    if type(embed) is not qwen.Qwen2_5_VisionPatchEmbed:
        raise TypeError(f"expected a Qwen2_5_VisionPatchEmbed, got {type(embed).__name__}")
    if proj.kernel_size != proj.stride or any(proj.padding) or proj.groups != 1 or set(proj.dilation) != {1}:
        raise ValueError(f"the patch convolution is not a per-patch product: {proj}")
    embed.__class__ = LinearPatchEmbed
