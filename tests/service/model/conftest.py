"""Fixtures of the model tests: a published (Skywork-layout) checkpoint built from the tiny base."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import save_file

BIAS = 0.375


@pytest.fixture(scope="session")
def skywork_dir(tiny_base, tmp_path_factory):
    """The tiny base in Skywork's published layout: CG weights + value_head.safetensors."""
    directory = tmp_path_factory.mktemp("skywork") / "Skywork-VL-Reward-tiny"
    shutil.copytree(tiny_base, directory)
    generator = torch.Generator().manual_seed(7)
    save_file(
        {
            "v_head.summary.weight": torch.randn(1, 128, generator=generator) / 128**0.5,
            "v_head.summary.bias": torch.tensor([BIAS]),
        },
        directory / "value_head.safetensors",
    )
    return directory
