"""`vlreward pairs`: score N sampled responses per prompt and write DPO/MPO preference pairs, or the top k
responses per prompt (best-of-N data).

Input lines are /rank bodies (``prompt`` or ``messages``, ``images``, ``responses``) plus an optional
``id``; output lines carry what TRL's DPO trainer reads (prompt, chosen, rejected, images) and both scores
(top-k: prompt, images, response, score, rank).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

STRATEGIES = ("best-worst", "all-above-margin", "top-k")


def select_pairs(scores: list[float], strategy: str, margin: float = 0.0) -> list[tuple[int, int]]:
    """(chosen index, rejected index) pairs from one prompt's response scores.

    best-worst: the top- against the bottom-scored response, if they differ by more than ``margin``;
    all-above-margin: every ordered pair whose score difference exceeds ``margin``, best pairs first.
    """
    if strategy not in STRATEGIES or strategy == "top-k":
        raise ValueError(f"pair strategies: {', '.join(STRATEGIES[:2])}")
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    if strategy == "best-worst":
        best, worst = order[0], order[-1]
        return [(best, worst)] if scores[best] - scores[worst] > margin else []
    pairs = [(i, j) for i in order for j in order if scores[i] - scores[j] > margin]
    return sorted(pairs, key=lambda p: -(scores[p[0]] - scores[p[1]]))


def build_pairs(
    rows: list[dict],
    rank: Callable[[dict], list[float] | None],
    strategy: str = "best-worst",
    margin: float = 0.0,
    k: int = 1,
    counts: dict[str, int] | None = None,
) -> list[dict[str, Any]]:
    """Score every row's responses with ``rank`` (a /rank body -> scores; None: a response could not be
    scored, the row is skipped) and select pairs, or with ``top-k`` the ``k`` best responses. ``counts``, when
    given, receives how many prompts were kept and dropped, by reason."""
    out = []
    counts = {} if counts is None else counts
    for key in ("prompts", "kept", "unscored", "no_pair_above_margin"):
        counts.setdefault(key, 0)
    for number, row in enumerate(tqdm(rows, desc="pairs", unit="prompt")):
        counts["prompts"] += 1
        scores = rank(row)
        if scores is None:
            counts["unscored"] += 1
            continue
        prompt = row.get("prompt") if row.get("prompt") is not None else row.get("messages")
        images = row.get("images") or ([row["image"]] if row.get("image") else [])
        if strategy == "top-k":
            order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]
            out += [{"id": row.get("id", str(number)), "prompt": prompt, "images": images,
                     "response": row["responses"][i], "score": scores[i], "rank": place}
                    for place, i in enumerate(order)]  # fmt: skip
            counts["kept"] += 1
            continue
        selected = select_pairs(scores, strategy, margin)
        counts["kept" if selected else "no_pair_above_margin"] += 1
        for chosen, rejected in selected:
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
