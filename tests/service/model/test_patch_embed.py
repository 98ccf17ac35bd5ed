"""The vision tower's patch embedding as a matrix product: the convolution's numbers, in inference only."""

from __future__ import annotations

import pytest
import torch
from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as qwen

from vlreward.service.model.cpu_kernels import torch_kernels
from vlreward.service.model.patch_embed import LinearPatchEmbed, embed_patches_as_linear


@pytest.fixture
def embed(hf_backend):
    return hf_backend.model.model.visual.patch_embed


def pixels(embed, patches: int = 64) -> torch.Tensor:
    volume = embed.in_channels * embed.temporal_patch_size * embed.patch_size**2
    return torch.randn(patches, volume, generator=torch.Generator().manual_seed(0))


def convolution_calls(embed, run) -> int:
    calls = []
    handle = embed.proj.register_forward_hook(lambda *args: calls.append(1))
    try:
        run()
    finally:
        handle.remove()
    return len(calls)


def test_the_reward_model_embeds_patches_with_the_product_and_gets_the_convolutions_numbers(embed):
    assert type(embed) is LinearPatchEmbed
    x = pixels(embed)
    with torch.inference_mode():
        product = embed(x)
        convolution = qwen.Qwen2_5_VisionPatchEmbed.forward(embed, x)
    assert product.shape == convolution.shape == (64, embed.embed_dim)
    assert torch.allclose(product, convolution, atol=1e-5)
    assert not torch.equal(product, torch.zeros_like(product))


def test_inference_runs_no_convolution_while_training_and_the_plain_pass_keep_it(embed):
    x = pixels(embed, 4)
    with torch.inference_mode():
        assert convolution_calls(embed, lambda: embed(x)) == 0
        with torch_kernels():  # the model card's plain pass
            assert convolution_calls(embed, lambda: embed(x)) == 1
    with torch.enable_grad():  # training: DeepSpeed ZeRO-3 gathers the weight when its own module runs
        assert convolution_calls(embed, lambda: embed(x)) == 1


def test_a_convolution_whose_patches_overlap_is_refused():
    tower = torch.nn.Module()
    tower.patch_embed = qwen.Qwen2_5_VisionPatchEmbed(patch_size=14, temporal_patch_size=2, in_channels=3, embed_dim=8)
    tower.patch_embed.proj.stride = (1, 7, 7)
    with pytest.raises(ValueError, match="not a per-patch product"):
        embed_patches_as_linear(tower)
    assert type(tower.patch_embed) is qwen.Qwen2_5_VisionPatchEmbed
