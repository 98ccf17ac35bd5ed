"""Test helpers: images drawn with Pillow, samples, and reward checkpoints built from the tiny base."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageDraw

from service.media import image_to_data_uri

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (30, 60, 220),
    "yellow": (230, 210, 30),
    "purple": (130, 40, 170),
    "orange": (240, 140, 20),
}


def shape_image(colour: str = "red", shape: str = "circle", size: tuple[int, int] = (84, 84)) -> Image.Image:
    """One coloured circle or square on white."""
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    box = (size[0] // 4, size[1] // 4, 3 * size[0] // 4, 3 * size[1] // 4)
    (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=COLOURS[colour])
    return image


def uri(image: Image.Image) -> str:
    return image_to_data_uri(image)


def build_reward_checkpoint(base_dir: Path, out_dir: Path, bias: float | None = None, seed: int = 1) -> Path:
    """Base model + random head (+ bias) saved in the checkpoint contract, with a probe."""
    from service.backends.transformers import TransformersBackend
    from service.model.checkpoint import save_reward_model
    from training.model import reward_model_from_base

    model, processor = reward_model_from_base(base_dir, head_bias=bias is not None, seed=seed)
    if bias is not None:
        with torch.no_grad():
            model.score.bias.fill_(bias)
    save_reward_model(model, processor, out_dir)
    TransformersBackend(out_dir, device="cpu").stamp_probe()
    return out_dir
