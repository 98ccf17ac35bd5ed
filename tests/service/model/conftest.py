"""Fixtures of the model tests: a published (Skywork-layout) checkpoint built from the tiny base, and mixed
samples formatted for the tiny reward model."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import save_file

from tests.helpers import shape_image, uri
from vlreward.service.media import MediaPolicy
from vlreward.service.prepare import prepare_sample
from vlreward.service.schemas import Sample

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


@pytest.fixture(scope="session")
def mixed_samples(hf_backend):
    """Different lengths and 0, 1 and 2 images of different sizes."""
    samples = [
        Sample(prompt="Hi", response="Hello there."),
        Sample(prompt="What colour is the circle?", response="Red.", image=uri(shape_image("red"))),
        Sample(
            prompt="Compare the two pictures and describe how the shapes and colours differ, in detail.",
            response="The first shows a blue square; the second a green circle. " * 3,
            images=[uri(shape_image("blue", "square", (140, 84))), uri(shape_image("green", size=(56, 56)))],
        ),
        Sample(prompt="Is it yellow?", response="No", system="Answer briefly.", image=uri(shape_image("yellow"))),
        Sample(prompt="Count to five.", response="one two three four five"),
    ]
    return [prepare_sample(s, hf_backend.processor, MediaPolicy()) for s in samples]
