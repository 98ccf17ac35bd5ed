"""Offline scoring of a JSONL file of Samples (``vlreward score``)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from tqdm import tqdm

from vlreward.service.backends.base import Backend
from vlreward.service.media import MediaError, MediaPolicy
from vlreward.service.prepare import prepare_sample
from vlreward.service.schemas import Sample


class InputError(ValueError):
    """A line of the input file is not a valid Sample; the message names the line."""


def read_samples(path: Path) -> list[Sample]:
    """Parse every non-empty line of a JSONL file as a Sample."""
    samples = []
    with path.open() as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                samples.append(Sample.model_validate_json(line))
            except ValidationError as exc:
                raise InputError(f"{path}:{number}: {exc}") from exc
    return samples


def score_file(backend: Backend, input_path: Path, output_path: Path, batch_size: int = 16) -> int:
    """Score each line of ``input_path`` and write ``{"score"[, "id"]}`` lines in input order (a process
    model: ``score`` is the checkpoint's aggregate and ``step_scores`` the steps', as ``/score`` gives them; a
    judge: its expected rating; a multi-head model: its default head's and ``heads`` every head's).

    Image paths are resolved relative to the input file's folder. Returns the number of samples.
    """
    judge = backend.judge
    pointwise_judge_check(backend)
    samples = read_samples(input_path)
    policy = MediaPolicy(media_root=input_path.resolve().parent)
    output_path.parent.mkdir(parents=True, exist_ok=True)

    async def run() -> list[float]:
        scores: list[float] = []
        with tqdm(total=len(samples), desc="scoring", unit="sample") as progress:
            for start in range(0, len(samples), batch_size):
                chunk = samples[start : start + batch_size]
                formatted = []
                for offset, sample in enumerate(chunk):
                    try:
                        tag = backend.step_tag
                        formatted.append(prepare_sample(sample, backend.processor, policy, step_tag=tag, judge=judge))
                    except MediaError as exc:
                        raise InputError(f"{input_path}: sample {start + offset} ({exc.param}): {exc.message}") from exc
                scores += await backend.score(formatted)
                progress.update(len(chunk))
        return scores

    scores = asyncio.run(run())
    with output_path.open("w") as out:
        for sample, score in zip(samples, scores, strict=True):
            record = {} if sample.id is None else {"id": sample.id}
            out.write(json.dumps(record | score_record(backend, score)) + "\n")
    return len(samples)


def offline_backend(settings: Any, model_dir: Path, adapter: Path | None = None) -> Backend:
    """The backend offline scoring uses: the model in ``model_dir``, or the LoRA ``adapter`` served on it."""
    from vlreward.service.backends import load_backend

    if adapter is None:
        return load_backend(settings, model_dir)
    from vlreward.service.backends.adapter import AdapterBackend

    base = load_backend(settings, model_dir, [adapter])
    return AdapterBackend(base, adapter, Path(adapter).name)


def score_record(backend: Backend, score: float | list[float]) -> dict:
    """What offline scoring writes for one sample's raw output: ``score`` as ``/score`` gives it (a process
    model: the checkpoint's aggregate, with ``step_scores``; a judge: its expected rating; a multi-head model:
    its default head's, with ``heads``)."""
    if backend.judge is not None:
        return {"score": backend.judge.rating(score)}
    if backend.heads is not None:  # the default head's score, and every head's
        return {"score": score[backend.heads.index(None)], "heads": backend.heads.named(score)}
    if backend.process is None:
        return {"score": score}
    steps = backend.process.step_scores(score)
    return {"score": backend.process.aggregate_of(steps), "step_scores": steps}


def pointwise_judge_check(backend: Backend) -> None:
    """A judge scores offline only with a pointwise template (one rating per sample)."""
    judge = backend.judge
    if judge is not None and not judge.rates:
        raise InputError(f"judge {judge.name!r} only compares (no pointwise template): it gives no score per sample")
