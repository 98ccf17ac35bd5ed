"""Data curation on Ray Data: the scoring of ``vlreward pairs`` and ``vlreward data clean --surrogate-model``
on the offline engine (:mod:`vlreward.offline.ray_engine`), and the summary every curation run writes.

Each command turns what it must score into rows (a /rank body's responses; a pair's chosen and rejected), has
the Ray engine score them into a work folder (resumable: rerunning the command skips the finished shards), and
reads the scores back by id. What it then selects (pairs, top-k, flags) is the in-process commands' own logic.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlreward.offline.ray_engine import RayOptions, score_with_ray
from vlreward.offline.shards import ERRORS, read_output
from vlreward.training.data.schema import PreferenceRecord


@dataclass
class RayScoring:
    """What the Ray engine needs besides the rows: the model, its backend settings, Ray's options, and the work
    folder (the rows and the engine's output; keep it to resume)."""

    model_dir: Path
    work: Path
    settings: dict
    options: RayOptions


def score_rows(rows: Iterable[dict], scoring: RayScoring, media_root: Path) -> tuple[dict[str, float], dict]:
    """Score rows (each with a unique ``id`` and a Sample's fields) on Ray: score by id, and the reason each
    unscored row failed (by id). Image paths are read under ``media_root``."""
    scoring.work.mkdir(parents=True, exist_ok=True)
    path = scoring.work / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    output = scoring.work / "scored"
    score_with_ray(path, output, scoring.model_dir, scoring.settings, scoring.options, media_root=media_root)
    table = read_output(output)
    scores = dict(zip(table["id"].to_pylist(), table["score"].to_pylist(), strict=True)) if table.num_rows else {}
    failed = {e["id"]: e["reason"] for e in map(json.loads, (output / ERRORS).read_text().splitlines())}
    return scores, failed


def candidate_rows(rows: list[dict]) -> list[dict]:
    """One row per response of each /rank body (id ``<row id>#<n>``; a row without an id: its position)."""
    from vlreward.service.schemas import RankRequest

    out = []
    for number, row in enumerate(rows):
        body = {k: v for k, v in row.items() if k != "id"}
        for n, candidate in enumerate(RankRequest.model_validate(body).candidates()):
            out.append({"id": f"{row.get('id', number)}#{n}"} | candidate.model_dump(exclude_none=True))
    return out


def ranker(rows: list[dict], scores: dict[str, float]) -> Callable[[dict], list[float] | None]:
    """``rank(row)`` for :func:`vlreward.training.pairs.build_pairs` from scores by candidate id (None when a
    response of the row was not scored)."""
    position = {id(row): number for number, row in enumerate(rows)}

    def rank(row: dict) -> list[float] | None:
        key = row.get("id", position[id(row)])
        got = [scores.get(f"{key}#{n}") for n in range(len(row["responses"]))]
        return None if any(value is None for value in got) else got

    return rank


def pair_rows(records: list[PreferenceRecord], root: Path) -> list[dict]:
    """Each pair's chosen and rejected as rows (ids ``<pair id>:chosen`` / ``:rejected``)."""
    return [
        {"id": f"{record.id}:{side}"} | record.sample(response, root=root).model_dump(exclude_none=True)
        for record in records
        for side, response in (("chosen", record.chosen), ("rejected", record.rejected))
    ]


def pair_scores(records: list[PreferenceRecord], scores: dict[str, float]) -> list[tuple[float, float] | None]:
    """(chosen, rejected) per pair from scores by row id; None where either side failed."""
    out: list[tuple[float, float] | None] = []
    for record in records:
        chosen, rejected = scores.get(f"{record.id}:chosen"), scores.get(f"{record.id}:rejected")
        out.append(None if chosen is None or rejected is None else (chosen, rejected))
    return out


def label_agreement(scores: list[tuple[float, float]]) -> float:
    """The share of pairs whose scores agree with the data set's label (chosen scored above rejected)."""
    return sum(chosen > rejected for chosen, rejected in scores) / max(1, len(scores))


def write_summary(folder: Path, name: str, counts: dict[str, Any], scores: list[float], title: str) -> Path:
    """``<name>.json`` (the counts kept and dropped by rule, and the scores' quantiles) and ``<name>.png`` (a
    histogram of the scores) in ``folder``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    summary = dict(counts)
    if scores:
        values = np.asarray(scores, dtype=float)
        summary["scores"] = {"count": len(scores), "mean": float(values.mean()),
                             **{f"p{q}": float(np.percentile(values, q)) for q in (5, 25, 50, 75, 95)}}  # fmt: skip
    (folder / f"{name}.json").write_text(json.dumps(summary, indent=1) + "\n")
    figure, axes = plt.subplots(figsize=(6, 3.5))
    axes.hist(scores, bins=40)
    axes.set(xlabel="score", ylabel="rows", title=title)
    figure.tight_layout()
    figure.savefig(folder / f"{name}.png", dpi=100)
    plt.close(figure)
    return folder / f"{name}.json"
