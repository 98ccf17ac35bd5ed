"""Converters from the published step-labelled sets into StepRecords, and the cleaning they share.

- PRM800K (openai/prm800k, ``data/phase{1,2}_{train,test}.jsonl``): ``question.problem`` and
  ``label.steps``, each with ``completions`` (``text``, ``rating`` -1 / 0 / +1, ``flagged``),
  ``human_completion`` and ``chosen_completion``. The trajectory follows the README's reconstruction
  (the chosen completion, else the human one, rated +1 as the labelling instructions give it); at a
  step where neither is set the labeller stopped: its first completion rated -1 ends the solution as
  its first error, and without one the solution ends before it. Ratings: +1 -> 1.0, -1 -> 0.0, 0
  (neutral: "isn't incorrect, but it does not make any progress", the README says) -> 1.0
  (``neutral=None`` leaves it unlabelled); a flagged step is unlabelled. Quality-control and screening copies and
  solutions whose ``finish_reason`` is ``bad_problem`` or ``give_up`` are skipped.
- Math-Shepherd (peiyi9979/Math-Shepherd): ``input`` is the problem and its steps, each ending with
  the tag ``ки``; ``label`` is the same text with ``+`` or ``-`` in place of each tag; ``task`` is
  GSM8K or MATH. The problem is the text before "Step 1:"; each step's "Step N:" prefix is dropped.
  Labels are the set's Monte-Carlo (hard-estimate) ones as published: ``+`` 1.0, ``-`` 0.0.
- VisualPRM400K (OpenGVLab): the conversation form (``image``, ``conversations``: a system turn, then
  per step a human turn with the step — the first one prefixed by "### Question:" and "### Solution
  Process:" — and a gpt turn ``+`` or ``-``: labels 1.0 / 0.0), or the raw form (``image``,
  ``question``, ``answer``, ``response``, ``steps_with_score`` [{``step``, ``score``}]: the
  Monte-Carlo expected accuracy, kept as a soft label).
Images are copied into the dataset's images folder. :func:`clean_steps` then drops records with an
empty step, removes the step tag's text wherever it occurs (it would add a step) and drops exact
duplicates (same prompt, images and steps), counting each.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from vlreward.training.benchmarks import read_rows
from vlreward.training.data.schema import StepRecord, Turn
from vlreward.training.data.sources import ConversionError, store_image

STEP_SOURCES = ("prm800k", "math-shepherd", "visualprm400k")
MATH_SHEPHERD_TAG = "ки"
_STEP_PREFIX = re.compile(r"^\s*Step \d+:\s*")
_SKIPPED_FINISH = ("bad_problem", "give_up")
_QUESTION_HEAD = "### Question:\n"
_PROCESS_HEAD = "\n\n### Solution Process:\n"


def _rating_label(rating: int | None, flagged: bool | None, neutral: float | None) -> float | None:
    if flagged or rating is None:
        return None
    return {1: 1.0, -1: 0.0}.get(rating, neutral)


def prm800k_solution(row: dict, neutral: float | None = 1.0) -> tuple[list[str], list[float | None]]:
    """(steps, labels) of one PRM800K line, reconstructed as its README describes."""
    steps: list[str] = []
    labels: list[float | None] = []
    for step in row["label"]["steps"]:
        chosen, human = step.get("chosen_completion"), step.get("human_completion")
        if chosen is not None:
            completion = step["completions"][chosen]
            steps.append(completion["text"])
            labels.append(_rating_label(completion["rating"], completion.get("flagged"), neutral))
        elif human is not None:
            steps.append(human if isinstance(human, str) else human["text"])
            labels.append(1.0)
        else:  # the labeller stopped here: the first completion rated -1 is the first error
            wrong = next((c for c in step["completions"] if c["rating"] == -1), None)
            if wrong is not None:
                steps.append(wrong["text"])
                labels.append(_rating_label(-1, wrong.get("flagged"), neutral))
            break
        if labels[-1] == 0.0:  # a chosen step rated -1 (phase 1): the solution's first error
            break
    return steps, labels


def convert_prm800k(rows: Iterable[dict], neutral: float | None = 1.0) -> Iterator[StepRecord]:
    """PRM800K lines -> records (skipping quality-control and screening copies and unfinished labelling)."""
    for number, row in enumerate(rows):
        if row.get("is_quality_control_question") or row.get("is_initial_screening_question"):
            continue
        if row["label"].get("finish_reason") in _SKIPPED_FINISH:
            continue
        steps, labels = prm800k_solution(row, neutral)
        if not steps:
            continue
        yield StepRecord(
            id=f"prm800k-{number}", source="prm800k", category="math", conversation=[
                Turn(role="user", content=row["question"]["problem"])], steps=steps, labels=labels,
            meta={"labeler": row.get("labeler"), "generation": row.get("generation"),
                  "finish_reason": row["label"].get("finish_reason")},
        )  # fmt: skip


def math_shepherd_solution(text: str, labelled: str) -> tuple[str, list[str], list[float]]:
    """(problem, steps, labels) of one Math-Shepherd row: each tag's label is the character at its place
    in ``labelled`` (each earlier two-character tag became one character there)."""
    tags = [match.start() for match in re.finditer(MATH_SHEPHERD_TAG, text)]
    if not tags:
        raise ConversionError("no step tag 'ки' in the input")
    marks = [labelled[position - index] for index, position in enumerate(tags)]
    if any(mark not in "+-" for mark in marks):
        raise ConversionError(f"label text has {marks!r} where the input has its step tags")
    starts = [0, *[tag + len(MATH_SHEPHERD_TAG) for tag in tags[:-1]]]
    pieces = [text[start:end] for start, end in zip(starts, tags, strict=True)]
    first = pieces[0].find("Step 1:")
    problem = pieces[0][:first].strip() if first >= 0 else ""
    pieces[0] = pieces[0][first:] if first >= 0 else pieces[0]
    steps = [_STEP_PREFIX.sub("", piece).strip() for piece in pieces]
    return problem, steps, [1.0 if mark == "+" else 0.0 for mark in marks]


def convert_math_shepherd(rows: Iterable[dict]) -> Iterator[StepRecord]:
    """Math-Shepherd rows -> text-only records."""
    for number, row in enumerate(rows):
        problem, steps, labels = math_shepherd_solution(row["input"], row["label"])
        yield StepRecord(id=f"math-shepherd-{number}", source="math-shepherd", category=str(row.get("task", "math")),
                         conversation=[Turn(role="user", content=problem)], steps=steps, labels=labels)  # fmt: skip


def _visualprm_conversation(turns: list[dict]) -> tuple[str, list[str], list[float]]:
    """(question, steps, labels) of VisualPRM400K's multi-turn form."""
    humans = [t["value"] for t in turns if t["from"] == "human"]
    marks = [t["value"].strip() for t in turns if t["from"] == "gpt"]
    if not humans or len(humans) != len(marks) or any(m not in ("+", "-") for m in marks):
        raise ConversionError("expected alternating human steps and '+'/'-' gpt turns")
    first = humans[0].replace("<image>\n", "").replace("<image>", "")
    if not first.startswith(_QUESTION_HEAD) or _PROCESS_HEAD not in first:
        raise ConversionError("the first human turn lacks '### Question:' and '### Solution Process:'")
    question, first_step = first[len(_QUESTION_HEAD) :].split(_PROCESS_HEAD, 1)
    return question.strip(), [first_step, *humans[1:]], [1.0 if m == "+" else 0.0 for m in marks]


def convert_visualprm400k(rows: Iterable[dict], out_dir: Path, images_root: Path | None = None) -> Iterator[StepRecord]:
    """VisualPRM400K rows in either published form -> records (images copied into ``out_dir``)."""
    for number, row in enumerate(rows):
        if "conversations" in row:
            question, steps, labels = _visualprm_conversation(row["conversations"])
        else:
            question = row["question"]
            steps = [s["step"] for s in row["steps_with_score"]]
            labels = [float(s["score"]) for s in row["steps_with_score"]]
        images = row["image"] if isinstance(row["image"], list) else [row["image"]]
        yield StepRecord(
            id=f"visualprm400k-{row.get('id', number)}-{number}", source="visualprm400k", category="visual-math",
            images=[store_image(image, out_dir, images_root) for image in images if image],
            conversation=[Turn(role="user", content=question)], steps=[s.strip() for s in steps], labels=labels,
            meta={"answer": row.get("answer")} if row.get("answer") is not None else {},
        )  # fmt: skip


@dataclass(frozen=True)
class StepCleaning:
    """What :func:`clean_steps` did."""

    empty_step: int
    tag_removed: int
    duplicates: int


def clean_steps(records: Iterable[StepRecord], step_tag: str) -> tuple[list[StepRecord], StepCleaning]:
    """Drop records with an empty step, remove the step tag's text from prompts and steps, drop exact
    duplicates (the first copy stays)."""
    kept, seen = [], set()
    empty = tagged = duplicates = 0
    for record in records:
        if any(not step.strip() for step in record.steps):
            empty += 1
            continue
        texts = [turn.content for turn in record.conversation] + record.steps
        if any(step_tag in text for text in texts):
            tagged += 1
            record = record.model_copy(update={
                "steps": [s.replace(step_tag, "") for s in record.steps],
                "conversation": [t.model_copy(update={"content": t.content.replace(step_tag, "")})
                                 for t in record.conversation]})  # fmt: skip
        key = (tuple(t.content for t in record.conversation), tuple(record.images), tuple(record.steps))
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        kept.append(record)
    return kept, StepCleaning(empty, tagged, duplicates)


def convert_steps(source: str, input_path: Path, out_dir: Path, images_root: Path | None = None) -> list[StepRecord]:
    """Convert one step-labelled source file into records (images copied into ``out_dir``)."""
    rows, _ = read_rows(input_path)  # plain JSON: PRM800K's nested, partly null fields as they are
    if source == "prm800k":
        return list(convert_prm800k(rows))
    if source == "math-shepherd":
        return list(convert_math_shepherd(rows))
    if source == "visualprm400k":
        return list(convert_visualprm400k(rows, out_dir, images_root))
    raise ConversionError(f"unknown step source {source!r}; choose one of {', '.join(STEP_SOURCES)}")
