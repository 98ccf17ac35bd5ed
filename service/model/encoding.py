"""FormattedSample -> tensors for the transformers model, one sample at a time, then padded batches.

Each sample is run through the checkpoint's processor once (tokens, image patches, grid sizes and
the token-type ids that M-RoPE needs); :func:`collate` pads any mix of them into one batch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal

import torch
from PIL import Image

from vlreward.service.model.formatting import FormattedSample, template_opening


@dataclass
class EncodedSample:
    """One sample's model inputs, unpadded."""

    input_ids: torch.Tensor
    """Token ids, shape [L], image pads expanded."""
    mm_token_type_ids: torch.Tensor
    """0 for text, 1 for image tokens, shape [L]; needed for the 3-D (M-RoPE) positions."""
    pixel_values: torch.Tensor | None
    """Flattened image patches of all images, shape [patches, dim], or None for text-only."""
    image_grid_thw: torch.Tensor | None
    """(t, h, w) patch grid per image, shape [images, 3]."""
    prefix_key: bytes | None = None
    """Equal for samples that carry the same images after the same tokens (see :func:`image_prefix_key`):
    the batcher runs such samples from different requests as one shared-prefix group. Set by the
    service's backend (:func:`with_prefix_key`); training never needs it."""
    read_at: tuple[int, ...] | None = None
    """A process model's step-tag positions (the head is read at each); None: the last token (scalar)."""
    adapter: int = -1
    """The LoRA adapter the sample is scored with (its slot, :mod:`~vlreward.service.model.lora`); -1: the base."""

    @property
    def num_tokens(self) -> int:
        """Sequence length including the expanded image tokens."""
        return int(self.input_ids.shape[0])

    @property
    def num_images(self) -> int:
        return 0 if self.image_grid_thw is None else int(self.image_grid_thw.shape[0])


def set_pixel_bounds(processor: Any, min_pixels: int | None, max_pixels: int | None) -> None:
    """Override the checkpoint's image-processor pixel bounds (the score depends on resolution)."""
    from transformers.image_utils import SizeDict

    size = {k: v for k, v in dict(processor.image_processor.size).items() if v is not None}
    if min_pixels is not None:
        size["shortest_edge"] = min_pixels
    if max_pixels is not None:
        size["longest_edge"] = max_pixels
    processor.image_processor.size = SizeDict(**size)


def pixel_bounds(processor: Any) -> tuple[int, int]:
    size = processor.image_processor.size
    return int(size["shortest_edge"]), int(size["longest_edge"])


def images_digest(images: list[Image.Image]) -> bytes | None:
    """A digest of decoded images' pixels, sizes and modes (what their patches follow from, for one
    processor); hashing the uint8 pixels costs a quarter of hashing the float patches. None: no images."""
    if not images:
        return None
    digest = hashlib.blake2b(digest_size=16)
    for image in images:
        digest.update(f"{image.mode}{image.size}".encode())
        digest.update(image.tobytes())
    return digest.digest()


def image_prefix_key(input_ids: torch.Tensor, mm_token_type_ids: torch.Tensor, images: bytes | None) -> bytes | None:
    """A digest of everything up to a sample's last image token: the token ids and the images (their
    :func:`images_digest`). Samples with equal keys share at least that prefix exactly (a GRPO group sent
    as separate requests); the shared part may run on into the prompt, which the model finds itself.
    None for text-only samples (nothing costly to share)."""
    if images is None:
        return None
    last_image_token = int(mm_token_type_ids.nonzero().max())
    return hashlib.blake2b(input_ids[: last_image_token + 1].numpy().tobytes() + images, digest_size=16).digest()


def with_prefix_key(encoded: EncodedSample, images: bytes | None) -> EncodedSample:
    """``encoded`` with its :func:`image_prefix_key`, given its images' :func:`images_digest`."""
    encoded.prefix_key = image_prefix_key(encoded.input_ids, encoded.mm_token_type_ids, images)
    return encoded


def encode(formatted: FormattedSample, processor: Any) -> EncodedSample:
    """Tokenise the text and preprocess the images (resized into the processor's pixel bounds)."""
    batch = processor(
        text=[formatted.text],
        images=formatted.images or None,
        return_tensors="pt",
        return_mm_token_type_ids=True,
    )
    return EncodedSample(
        input_ids=batch["input_ids"][0],
        mm_token_type_ids=batch["mm_token_type_ids"][0],
        pixel_values=batch.get("pixel_values"),
        image_grid_thw=batch.get("image_grid_thw"),
    )


def opening_ids(processor: Any) -> torch.Tensor:
    """The tokens of :func:`~vlreward.service.model.formatting.template_opening`, encoded as :func:`encode`
    encodes a sample (a sample whose ids do not start with them simply does not share them)."""
    return encode(FormattedSample(text=template_opening(processor)), processor).input_ids


def encode_shared(samples: list[FormattedSample], processor: Any) -> list[EncodedSample]:
    """Encode samples that carry the same images (a /rank request): the images are preprocessed once.

    Gives exactly what :func:`encode` gives for each sample; only the image work is shared.
    """
    if not samples:
        return []
    first = encode(samples[0], processor)
    if first.image_grid_thw is None:
        return [first] + [encode(s, processor) for s in samples[1:]]
    tokenizer = processor.tokenizer
    image_token_id = processor.image_token_id
    merge = processor.image_processor.merge_size**2
    counts = [int(n) for n in (first.image_grid_thw.prod(-1) // merge)]
    encoded = [first]
    for sample in samples[1:]:
        pieces = sample.text.split(processor.image_token)
        if len(pieces) != len(counts) + 1:
            raise ValueError("encode_shared: samples do not carry the same number of images")
        expanded = pieces[0] + "".join(
            processor.image_token * n + piece for n, piece in zip(counts, pieces[1:], strict=True)
        )
        ids = torch.tensor(tokenizer(expanded, add_special_tokens=False)["input_ids"], dtype=torch.long)
        encoded.append(
            EncodedSample(
                input_ids=ids,
                mm_token_type_ids=(ids == image_token_id).to(first.mm_token_type_ids.dtype),
                pixel_values=first.pixel_values,
                image_grid_thw=first.image_grid_thw,
            )
        )
    return encoded


def collate(
    samples: list[EncodedSample], pad_token_id: int, padding_side: Literal["left", "right"] = "right"
) -> dict[str, torch.Tensor]:
    """Pad samples into one batch: input_ids, attention_mask, mm_token_type_ids (+ image tensors)."""
    length = max(s.num_tokens for s in samples)
    input_ids = torch.full((len(samples), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), length), dtype=torch.long)
    token_types = torch.zeros((len(samples), length), dtype=torch.int)
    for row, sample in enumerate(samples):
        n = sample.num_tokens
        cols = slice(length - n, length) if padding_side == "left" else slice(0, n)
        input_ids[row, cols] = sample.input_ids
        attention_mask[row, cols] = 1
        token_types[row, cols] = sample.mm_token_type_ids
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "mm_token_type_ids": token_types}
    with_images = [s for s in samples if s.pixel_values is not None]
    if with_images:
        batch["pixel_values"] = torch.cat([s.pixel_values for s in with_images])
        batch["image_grid_thw"] = torch.cat([s.image_grid_thw for s in with_images])
    return batch


def padded_positions(rows: list[list[int]] | list[tuple[int, ...]], shifts: list[int] | None = None) -> torch.Tensor:
    """Rows of positions (a process sample's step tags) as one tensor [rows, longest]: a shorter row
    repeats its last position (its extra values are dropped by the caller); ``shifts`` move each row
    (left padding)."""
    most = max(len(row) for row in rows)
    shifts = shifts or [0] * len(rows)
    return torch.tensor(
        [[shift + p for p in (*row, *[row[-1]] * (most - len(row)))] for row, shift in zip(rows, shifts, strict=True)]
    )
