"""Best-of-N with a process model: how each aggregate of the step scores (min, last, mean, product) picks
the right solution among candidates, on a seeded synthetic set (``vlreward eval --benchmark synthetic-bon``).

Each item (an image and its question, from the step data's generators) gets ``PER_PLACE`` candidates for
each error place of :data:`~vlreward.training.data.synthetic_steps.ERROR_PLACES` — error-free, a wrong
claim, a wrong conclusion after a true claim — with different opening steps, so N = 6 and one or two of
them are right. An aggregate picks the item right when the candidate it scores highest is error-free
(ties between a right and a wrong candidate count as wrong, as ties do in the pairwise benchmarks). The
right aggregate depends on the model, which is why every one is reported.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from vlreward.service.kinds import AGGREGATES, ProcessHead
from vlreward.training.data.schema import StepRecord
from vlreward.training.data.synthetic import drawn_items
from vlreward.training.data.synthetic_steps import ERROR_PLACES, STEP_GENERATORS, solution, step_record

BON_PER_CATEGORY = {"hallucination": 100, "reasoning": 100}
"""Items per category of the best-of-N set."""
PER_PLACE = 2
"""Candidates per error place (their opening steps differ): N = 2 x 3 = 6."""
BON_SEED = 1234
"""The set's seed (other than the step data's train and held-out seeds; its items may recur there)."""


def bon_groups(out_dir: Path, per_category: dict[str, int], seed: int = BON_SEED) -> list[list[StepRecord]]:
    """Each item's candidates (their images written into ``out_dir``)."""
    rng = random.Random(f"bon-{seed}")
    groups = []
    for category, _, item_id, item, paths in drawn_items(out_dir, STEP_GENERATORS, per_category, rng, "bon"):
        group = []
        for error in ERROR_PLACES:
            for copy in range(PER_PLACE):
                made = solution(rng, item.chosen, item.rejected, error)
                group.append(step_record(f"{item_id}-{error}-{copy}", category, item, paths, made, "synthetic-bon",
                                         {"error": error}))  # fmt: skip
        groups.append(group)
    return groups


def picks_right(group: list[StepRecord], values: dict[str, float]) -> bool:
    """Whether the highest value belongs to an error-free candidate and to no wrong one."""
    best = max(values[record.id] for record in group)
    top = [record for record in group if values[record.id] == best]
    return all(record.first_error == -1 for record in top)


def bon_tables(groups: list[list[StepRecord]], step_scores: dict[str, list[float]]) -> dict[str, Any]:
    """Top-1 accuracy of every aggregate, overall (``categories``: one column per aggregate) and per item
    category (``subsets``)."""
    head = ProcessHead()
    by_aggregate: dict[str, dict[str, list[bool]]] = {}
    for aggregate in AGGREGATES:
        values = {r.id: head.aggregate_of(step_scores[r.id], aggregate) for g in groups for r in g}
        for group in groups:
            flags = by_aggregate.setdefault(aggregate, {})
            flags.setdefault("all", []).append(picks_right(group, values))
            flags.setdefault(group[0].category, []).append(picks_right(group, values))
    accuracy = {a: sum(f["all"]) / len(f["all"]) for a, f in by_aggregate.items()}
    subsets = {f"{a}/{c}": sum(v) / len(v) for a, f in by_aggregate.items() for c, v in sorted(f.items()) if c != "all"}
    best = max(accuracy.values())
    return {
        "benchmark": "synthetic-bon", "n": len(groups), "unit": f"groups of N={len(groups[0])}",
        "categories": accuracy, "subsets": subsets, "overall": best, "macro": best,
        "best_aggregates": [a for a, value in accuracy.items() if value == best],
    }  # fmt: skip
