"""Training fixtures: a small synthetic dataset (all categories), generated once."""

from __future__ import annotations

import pytest

from vlreward.training.data.synthetic import build_synthetic


@pytest.fixture(scope="session")
def small_synthetic(tmp_path_factory):
    """(train_dir, heldout_dir) with a few pairs of every category, text-only included."""
    root = tmp_path_factory.mktemp("synthetic")
    return build_synthetic(
        root, {"hallucination": 24, "reasoning": 12, "general": 8, "text": 12}, {"hallucination": 8, "general": 4}
    )


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    """accelerate keeps one process-wide state; each test builds its own (e.g. bf16 vs fp32)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
