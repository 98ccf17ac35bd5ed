"""The start-up probe: one known sample and the score the checkpoint must give it.

A head that silently failed to load gives garbage scores in vLLM with no error, so every backend
scores this sample at start-up and refuses to become ready when the result is off.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

PROBE_FILE = "vlreward_probe.json"
# Allowed |expected - actual| by the dtype the backend runs in.
TOLERANCE = {"float32": 1e-3, "bfloat16": 5e-2, "float16": 5e-2}


@dataclass
class Probe:
    """A sample (HTTP JSON shape, images inline) and the score it was given."""

    sample: dict
    score: float
    dtype: str
    device: str


class ProbeMismatch(RuntimeError):
    """The backend's score for the probe differs from the stored one by more than the tolerance."""


def probe_sample() -> dict:
    """A fixed two-image sample; drawn here so that it needs no stored files."""
    from PIL import Image, ImageDraw

    from vlreward.service.media import image_to_data_uri

    first = Image.new("RGB", (96, 64), (20, 40, 160))
    ImageDraw.Draw(first).ellipse((20, 10, 60, 50), fill=(220, 30, 30))
    second = Image.new("RGB", (64, 64), (240, 240, 240))
    ImageDraw.Draw(second).rectangle((8, 30, 20, 60), fill=(30, 160, 60))
    ImageDraw.Draw(second).rectangle((30, 10, 42, 60), fill=(30, 160, 60))
    return {
        "prompt": "What colour is the circle, and which bar is taller?",
        "response": "The circle is red, and the right bar is taller.",
        "images": [image_to_data_uri(first), image_to_data_uri(second)],
    }


def read_probe(directory: str | Path) -> Probe | None:
    """The checkpoint's probe, or None when it has none."""
    path = Path(directory) / PROBE_FILE
    if not path.is_file():
        return None
    return Probe(**json.loads(path.read_text()))


def write_probe(directory: str | Path, probe: Probe) -> Path:
    path = Path(directory) / PROBE_FILE
    path.write_text(json.dumps(asdict(probe), indent=2) + "\n")
    return path


def verify_probe(probe: Probe, actual: float, dtype: str) -> None:
    """Raise ProbeMismatch when ``actual`` is off by more than the tolerance for ``dtype``."""
    tolerance = TOLERANCE.get(dtype, 5e-2)
    if not abs(actual - probe.score) <= tolerance:
        raise ProbeMismatch(
            f"probe scored {actual:.6f}, expected {probe.score:.6f} (computed in {probe.dtype} on "
            f"{probe.device}); tolerance {tolerance} in {dtype}. The weights or head did not load as saved."
        )
