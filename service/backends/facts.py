"""What /info, metrics and evaluations report about a loaded backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlreward.service.kinds import checkpoint_kind
from vlreward.service.model.checkpoint import checkpoint_hash, model_name
from vlreward.service.model.encoding import pixel_bounds


def backend_facts(name: str, model_dir: Path, dtype: str, device: str, processor: Any) -> dict[str, Any]:
    """The facts of a loaded backend (computed once, at load)."""
    min_pixels, max_pixels = pixel_bounds(processor)
    return {
        "model": model_name(model_dir),
        "kind": checkpoint_kind(model_dir).name,
        "backend": name,
        "dtype": dtype,
        "device": device,
        "checkpoint_hash": checkpoint_hash(model_dir),
        "min_pixels": min_pixels,
        "max_pixels": max_pixels,
    }
