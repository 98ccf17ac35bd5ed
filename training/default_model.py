"""The embedded default model served when no --model is given."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path


def build_default_model(destination: Path) -> Path:
    """Tiny base + a seeded random head, saved in the checkpoint contract with its probe.

    `vlreward bootstrap` trains the real default model (tiny recipe on synthetic data); it becomes the
    embedded default once it reaches its accuracy targets (see the training issue's note).
    """
    from service.backends.transformers import TransformersBackend
    from service.model.checkpoint import save_reward_model
    from training.base_model import build_base_model
    from training.model import reward_model_from_base

    destination = Path(destination)
    staging = Path(
        tempfile.mkdtemp(prefix="vlreward-default-", dir=destination.parent if destination.parent.exists() else None)
    )
    try:
        base = build_base_model(staging / "base", size="tiny", seed=0)
        model, processor = reward_model_from_base(base, seed=0)
        save_reward_model(model, processor, staging / "model")
        TransformersBackend(staging / "model", device="cpu").stamp_probe()
        if destination.exists():
            shutil.rmtree(destination)
        shutil.move(str(staging / "model"), destination)  # appears whole or not at all
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return destination
