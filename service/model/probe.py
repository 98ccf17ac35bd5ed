"""The start-up probe: one known sample and the score the checkpoint must give it.

A head that silently failed to load gives garbage scores in vLLM with no error, so every backend
scores this sample at start-up and refuses to become ready when the result is off.

How far off is too far depends on the precision served. A float32 backend must match to 1e-3. A 16-bit
backbone perturbs the final hidden state ``h`` by a relative amount, so its score moves by at most that
much of ``|w| * |h|`` (the head's norm times the hidden state's: the largest score a head of that norm
could give this sample); the probe stores that ``scale`` and 16-bit backends are allowed
:data:`RELATIVE_TOLERANCE` of it: three times the largest bfloat16-vs-float32 deviation measured, as a
share of the scale (the figures: docs/serving.md, "Backends"; re-measured on a CPU by
``tests/service/model/test_probe.py`` with transformers and ``tests/service/backends/test_vllm.py`` with
vLLM's CPU build, on a GPU by ``loadtest/gpu_check.py``, ``loadtest/results/gpu_check_7b.json``). Every
backend and device checks its probe against this one table. vLLM's CUDA build has not been measured.
A head that did not load moves the score by a sizeable share of the scale (a random head by about
sqrt(2 / hidden size) of it). Probe files without a scale (written before it existed) are checked
with the older absolute tolerances.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

PROBE_FILE = "vlreward_probe.json"
ABSOLUTE_TOLERANCE = {"float32": 1e-3, "bfloat16": 5e-2, "float16": 5e-2}
"""Allowed |expected - actual| by dtype: float32 always; 16-bit only for probes without a scale."""
RELATIVE_TOLERANCE = {"bfloat16": 1e-2, "float16": 1e-2}
"""Allowed |expected - actual| for 16-bit backbones, as a share of the probe's scale."""


@dataclass
class Probe:
    """A sample (HTTP JSON shape, images inline) and the score it was given."""

    sample: dict
    score: float
    dtype: str
    device: str
    scale: float | None = None
    """|head weight| * |final hidden state| of the sample: the bound 16-bit errors are relative to."""
    step_scores: list[float] | None = None
    """A process model's head at each step tag (raw logits), or a judge's verdict tokens' logits (relative to
    the first's); ``score`` is the last. None for scalar models."""


class ProbeMismatch(RuntimeError):
    """The backend's score for the probe differs from the stored one by more than the tolerance."""


def probe_sample(steps: bool = False) -> dict:
    """A fixed two-image sample; drawn here so that it needs no stored files (``steps``: its response as
    two steps, for process models)."""
    from PIL import Image, ImageDraw

    from vlreward.service.media import image_to_data_uri

    first = Image.new("RGB", (96, 64), (20, 40, 160))
    ImageDraw.Draw(first).ellipse((20, 10, 60, 50), fill=(220, 30, 30))
    second = Image.new("RGB", (64, 64), (240, 240, 240))
    ImageDraw.Draw(second).rectangle((8, 30, 20, 60), fill=(30, 160, 60))
    ImageDraw.Draw(second).rectangle((30, 10, 42, 60), fill=(30, 160, 60))
    sample = {
        "prompt": "What colour is the circle, and which bar is taller?",
        "response": "The circle is red, and the right bar is taller.",
        "images": [image_to_data_uri(first), image_to_data_uri(second)],
    }
    if steps:
        sample["steps"] = ["The circle is red.", "The right bar is taller."]
        del sample["response"]
    return sample


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


def tolerance(probe: Probe, dtype: str) -> float:
    """Allowed |expected - actual| when the probe (stamped in ``probe.dtype``) is served in ``dtype``."""

    def allowed(name: str) -> float:
        if name in RELATIVE_TOLERANCE and probe.scale is not None:
            return ABSOLUTE_TOLERANCE["float32"] + RELATIVE_TOLERANCE[name] * probe.scale
        return ABSOLUTE_TOLERANCE.get(name, ABSOLUTE_TOLERANCE["bfloat16"])

    return max(allowed(probe.dtype), allowed(dtype))


def verify_probe(probe: Probe, actual: float | list[float], dtype: str) -> None:
    """Raise ProbeMismatch when ``actual`` (a process model's: its step scores) is off by more than the
    tolerance for ``dtype``."""
    allowed = tolerance(probe, dtype)
    expected = probe.score if probe.step_scores is None else probe.step_scores
    if isinstance(expected, list) and (not isinstance(actual, list) or len(actual) != len(expected)):
        raise ProbeMismatch(f"probe gave {actual!r}; expected {len(expected)} step scores (the checkpoint's kind)")
    pairs = [(actual, expected)] if isinstance(expected, float) else list(zip(actual, expected, strict=True))
    for got, want in pairs:
        if not abs(got - want) <= allowed:
            raise ProbeMismatch(
                f"probe scored {got:.6f}, expected {want:.6f} (computed in {probe.dtype} on "
                f"{probe.device}); tolerance {allowed:.4g} in {dtype}. The weights or head did not load as saved."
            )
