"""The metrics contract: every rejection reason declared and exported from the start (per model for a
model's reasons), process metrics, and a model's series apart from another's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from vlreward.service.metrics import (
    MODEL_REJECTION_REASONS,
    REJECTION_REASONS,
    SERVER,
    SERVER_REJECTION_REASONS,
    Metrics,
)

SERVICE = Path(__file__).resolve().parents[2] / "service"


def _samples(metrics: Metrics) -> dict[tuple[str, tuple], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_every_rejection_reason_in_the_code_is_declared_and_exported_at_zero():
    used = set()
    for path in SERVICE.rglob("*.py"):
        used |= set(re.findall(r'\.reject\("([a-z_]+)"', path.read_text()))
    assert used and used <= set(REJECTION_REASONS), used - set(REJECTION_REASONS)
    metrics = Metrics()
    for model in ("a", "b"):
        metrics.for_model(model)
    samples = _samples(metrics)
    for reason in SERVER_REJECTION_REASONS:
        assert samples[("vlreward_rejected_total", (("model", SERVER), ("reason", reason)))] == 0
    for reason in MODEL_REJECTION_REASONS:
        for model in ("a", "b"):
            assert samples[("vlreward_rejected_total", (("model", model), ("reason", reason)))] == 0


def test_an_undeclared_reason_is_refused_and_a_declared_one_counts_for_its_model():
    metrics = Metrics()
    a, b = metrics.for_model("a"), metrics.for_model("b")
    with pytest.raises(ValueError, match="REJECTION_REASONS"):
        a.reject("made_up")
    a.reject("overloaded", 3)
    b.score.observe(1.0)
    samples = _samples(metrics)
    assert samples[("vlreward_rejected_total", (("model", "a"), ("reason", "overloaded")))] == 3
    assert samples[("vlreward_rejected_total", (("model", "b"), ("reason", "overloaded")))] == 0
    assert samples[("vlreward_score_count", (("model", "b"),))] == 1
    assert samples[("vlreward_score_count", (("model", "a"),))] == 0


def test_process_cpu_and_memory_are_exported():
    names = {name for name, _ in _samples(Metrics())}
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes"} <= names
    assert "vlreward_queue_limit" in names
