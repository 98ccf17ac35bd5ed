"""Sample -> FormattedSample: decode its images (media) and apply the chat template (formatting)."""

from __future__ import annotations

from typing import Any

from service.media import MediaError, MediaPolicy, load_image
from service.model.formatting import FormattedSample, format_sample
from service.schemas import Sample


def prepare_sample(sample: Sample, processor: Any, policy: MediaPolicy, param_prefix: str = "") -> FormattedSample:
    """Decode the sample's images in order and format it; MediaErrors name the failing field."""
    images = []
    for ref, param in zip(sample.image_refs(), sample.image_params(), strict=True):
        try:
            images.append(load_image(ref, policy))
        except MediaError as exc:
            raise exc.at(param_prefix + param) from exc
    return format_sample(sample, images, processor)
