"""Scoring preference pairs and their accuracy table: shared by evaluation, the trainer's held-out checks
and cleaning's surrogate (a small module both the trainer and evaluation import)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")
Item = TypeVar("Item")


def score_pairs(
    score: Callable[[list[T]], list[float]],
    items: Sequence[Item],
    as_pair: Callable[[Item], tuple[T, T]],
    batch_pairs: int = 16,
    progress: bool = False,
) -> list[tuple[float, float]]:
    """(chosen, rejected) scores of ``items``, ``batch_pairs`` per call of ``score`` (both sides in one call).
    ``as_pair`` makes an item's two inputs as its chunk comes up, so only one chunk's images are decoded at a
    time. The one pair scorer: evaluation, cleaning's surrogate and the trainer's held-out checks use it."""
    scores: list[tuple[float, float]] = []
    starts = range(0, len(items), batch_pairs)
    for start in tqdm(starts, desc="scoring", unit="batch", leave=False, disable=not progress):
        chunk = [as_pair(item) for item in items[start : start + batch_pairs]]
        values = score([c for c, _ in chunk] + [r for _, r in chunk])
        scores += list(zip(values[: len(chunk)], values[len(chunk) :], strict=True))
    return scores


def pairwise_accuracy(categories: list[str], scores: list[tuple[float, float]]) -> dict[str, Any]:
    """The one accuracy table: a pair is right only when the chosen response scores strictly higher
    (ties count as wrong). Overall (micro), per category, macro mean over categories, ties, mean margin."""
    per: dict[str, list[bool]] = {}
    ties = 0
    for category, (chosen, rejected) in zip(categories, scores, strict=True):
        per.setdefault(category, []).append(chosen > rejected)
        ties += chosen == rejected
    correct = [c for values in per.values() for c in values]
    table = {name: sum(v) / len(v) for name, v in sorted(per.items())}
    return {
        "n": len(correct),
        "overall": sum(correct) / max(1, len(correct)),
        "macro": sum(table.values()) / max(1, len(table)),
        "categories": table,
        "category_counts": {name: len(v) for name, v in sorted(per.items())},
        "ties": ties,
        "mean_margin": sum(c - r for c, r in scores) / max(1, len(scores)),
    }
