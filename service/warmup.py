"""The start-up probe through a backend: one real request before serving, checked against the score the
checkpoint stored (:mod:`vlreward.service.model.probe`). The one place probes are verified, for every
backend, asynchronously (serving's warm-up) or blocking (offline tools, tests)."""

from __future__ import annotations

from vlreward.service.backends.base import Backend
from vlreward.service.model.probe import Probe, read_probe, verify_probe
from vlreward.service.prepare import prepare_request_sample

WARM_UP_SAMPLE = {"prompt": "warm-up", "response": "ok"}
"""What warm-up scores when the checkpoint has no probe (a process model: with one step)."""


def warm_up_sample(backend: Backend) -> dict:
    if backend.step_tag is None:
        return WARM_UP_SAMPLE
    return {"prompt": WARM_UP_SAMPLE["prompt"], "steps": [WARM_UP_SAMPLE["response"]]}


def _formatted(backend: Backend, sample: dict):
    return prepare_request_sample(sample, backend.processor, None, backend.step_tag, backend.judge)


def _checked(backend: Backend, probe: Probe | None, score: float | list[float]) -> float | None:
    """The probe's score (a process model's: its last step's) once verified; None without a probe."""
    if probe is None:
        return None
    verify_probe(probe, score, backend.dtype)
    return score if isinstance(score, float) else score[-1]


async def probe_warm_up(backend: Backend) -> float | None:
    """One real request through ``backend.score``: the checkpoint's probe (verified; its score is
    returned) or, without a probe, a fixed text sample (None is returned)."""
    probe = read_probe(backend.model_dir)
    formatted = _formatted(backend, probe.sample if probe else warm_up_sample(backend))
    return _checked(backend, probe, (await backend.score([formatted]))[0])


def check_probe(backend: Backend) -> float | None:
    """The checkpoint's probe scored with ``backend.score_sync`` and verified (ProbeMismatch when off);
    None when the checkpoint has no probe."""
    probe = read_probe(backend.model_dir)
    if probe is None:
        return None
    return _checked(backend, probe, backend.score_sync([_formatted(backend, probe.sample)])[0])
