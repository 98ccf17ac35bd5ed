"""The embedded default model served when no --model is given."""

from __future__ import annotations

from pathlib import Path


def build_default_model(destination: Path) -> Path:
    """`vlreward bootstrap` into ``destination``: tiny base, synthetic data, the `tiny` recipe, export."""
    from training.bootstrap import bootstrap

    bootstrap(Path(destination))
    return Path(destination)
