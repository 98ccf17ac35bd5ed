"""Seeded synthetic multi-step solutions about our synthetic images, with an error at a known step.

Built on the preference generators of :mod:`.synthetic` (what a tiny model can learn from 3x3 image
tokens: a shape's colour, a caption's colour, the tallest bar, the larger shape). Each solution has
0-2 neutral opening steps, the claim about the image, and a conclusion that restates the claim. A correct
solution makes the true claim (every step labelled 1.0); an erroneous one makes the false claim, or
makes the true claim and concludes the false one. Labels follow PRM800K and ProcessBench: the steps up to
the first error are labelled (correct 1.0, the error 0.0), the steps after it are not (None). The first
error's index therefore varies with the opening's length and with where the error sits.
Train and held-out never share an item.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from vlreward.training.data.schema import StepRecord, Turn, write_records
from vlreward.training.data.synthetic import GENERATORS, Item, drawn_items

OPENINGS = (
    "I look at the picture first.",
    "Let me check the image carefully.",
    "I read the question again.",
    "The image has a white background.",
)
CONCLUSION = "So my answer: {claim}"
ERROR_PLACES = ("none", "claim", "conclusion")
"""Where a solution's first error is: nowhere, at the claim, or at the conclusion (after a true claim)."""
STEP_GENERATORS = {category: GENERATORS[category] for category in ("hallucination", "reasoning")}
"""The image categories whose claims a tiny model learns (the general and text pairs have no image claim)."""


@dataclass(frozen=True)
class Solution:
    """The steps and labels of one solution, and where its error is (``-1``: none)."""

    steps: list[str]
    labels: list[float | None]
    first_error: int


def solution(rng: random.Random, true_claim: str, false_claim: str, error: str) -> Solution:
    """A solution whose error (``ERROR_PLACES``) sits where asked, after 0-2 opening steps."""
    opening = rng.sample(OPENINGS, rng.randint(0, 2))
    claim = false_claim if error == "claim" else true_claim
    concluded = false_claim if error != "none" else true_claim
    steps = [*opening, claim, CONCLUSION.format(claim=concluded)]
    if error == "none":
        return Solution(steps, [1.0] * len(steps), -1)
    wrong = len(opening) + (0 if error == "claim" else 1)
    labels: list[float | None] = [1.0] * wrong + [0.0] + [None] * (len(steps) - wrong - 1)
    return Solution(steps, labels, wrong)


def step_record(
    record_id: str, category: str, item: Item, paths: list[str], made: Solution, source: str, meta: dict
) -> StepRecord:
    """A synthetic solution about ``item`` (its prompt, its images at ``paths``) as a step record."""
    return StepRecord(
        id=record_id,
        source=source,
        category=category,
        images=paths,
        conversation=[Turn(role="user", content=item.prompt)],
        steps=made.steps,
        labels=made.labels,
        meta=meta,
    )


def generate_steps(
    out_dir: Path,
    per_category: dict[str, int],
    seed: int,
    split: str,
    exclude: set[tuple] | None = None,
    every_place: bool = False,
) -> tuple[list[StepRecord], set[tuple]]:
    """Write ``per_category`` items' step-labelled solutions (and their images) into ``out_dir``: one per
    item, the three error places in turn, or with ``every_place`` one per error place for every item (the
    same image with a right and a wrong claim: what lets a tiny model learn to read the image). Items in
    ``exclude`` are skipped. Returns the records and the item keys used."""
    rng = random.Random(f"steps-{seed}-{split}")
    records, keys = [], set()
    for category, made, record_id, item, paths in drawn_items(
        out_dir, STEP_GENERATORS, per_category, rng, split, exclude, keys
    ):
        places = ERROR_PLACES if every_place else (ERROR_PLACES[made % len(ERROR_PLACES)],)
        for error in places:
            made_solution = solution(rng, item.chosen, item.rejected, error)
            meta = {"subtype": item.subtype, "split": split, "error": error}
            solution_id = record_id if len(places) == 1 else f"{record_id}-{error}"
            records.append(step_record(solution_id, category, item, paths, made_solution, "synthetic", meta))
    write_records(records, out_dir)
    return records, keys


def build_synthetic_steps(
    out_dir: Path, train_per_category: dict[str, int], heldout_per_category: dict[str, int], seed: int = 0
) -> tuple[Path, Path]:
    """Held-out first (one solution per item), then a train split that shares no item with it (every
    error place for every item)."""
    heldout_dir, train_dir = out_dir / "heldout", out_dir / "train"
    _, heldout_keys = generate_steps(heldout_dir, heldout_per_category, seed, "heldout")
    generate_steps(train_dir, train_per_category, seed, "train", exclude=heldout_keys, every_place=True)
    return train_dir, heldout_dir
