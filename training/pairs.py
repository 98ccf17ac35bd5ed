"""`vlreward pairs`: score N sampled responses per prompt and write DPO/MPO preference pairs.

Input lines are /rank bodies (``prompt`` or ``messages``, ``images``, ``responses``) plus an optional
``id``; output lines carry what TRL's DPO trainer reads (prompt, chosen, rejected, images) and both scores.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

STRATEGIES = ("best-worst", "all-above-margin")


def select_pairs(scores: list[float], strategy: str, margin: float = 0.0) -> list[tuple[int, int]]:
    """(chosen index, rejected index) pairs from one prompt's response scores.

    best-worst: the top- against the bottom-scored response, if they differ by more than ``margin``;
    all-above-margin: every ordered pair whose score difference exceeds ``margin``, best pairs first.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}")
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    if strategy == "best-worst":
        best, worst = order[0], order[-1]
        return [(best, worst)] if scores[best] - scores[worst] > margin else []
    pairs = [(i, j) for i in order for j in order if scores[i] - scores[j] > margin]
    return sorted(pairs, key=lambda p: -(scores[p[0]] - scores[p[1]]))


def build_pairs(
    rows: list[dict],
    rank: Callable[[dict], list[float]],
    strategy: str = "best-worst",
    margin: float = 0.0,
) -> list[dict[str, Any]]:
    """Score every row's responses with ``rank`` (a /rank body -> scores) and select pairs."""
    out = []
    for number, row in enumerate(tqdm(rows, desc="pairs", unit="prompt")):
        scores = rank(row)
        prompt = row.get("prompt") if row.get("prompt") is not None else row.get("messages")
        images = row.get("images") or ([row["image"]] if row.get("image") else [])
        for chosen, rejected in select_pairs(scores, strategy, margin):
            out.append(
                {
                    "id": row.get("id", str(number)),
                    "prompt": prompt,
                    "images": images,
                    "chosen": row["responses"][chosen],
                    "rejected": row["responses"][rejected],
                    "chosen_score": scores[chosen],
                    "rejected_score": scores[rejected],
                }
            )
    return out


def write_pairs(pairs: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        for pair in pairs:
            handle.write(json.dumps(pair) + "\n")
