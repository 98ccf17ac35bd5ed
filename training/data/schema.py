"""One preference pair, stored as a JSONL line plus image files beside it (loadable with `datasets`).

A record holds the conversation *before* the judged turn, the images of its first user turn (paths
relative to the dataset folder), and the chosen and rejected responses. :meth:`PreferenceRecord.sample`
turns it into the Sample every part of vlreward scores, so training and serving format identically.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from vlreward.service.schemas import Message, Sample

RECORDS_FILE = "records.jsonl"
IMAGES_DIR = "images"


class Turn(BaseModel):
    """A text-only turn of the conversation before the judged response."""

    role: Literal["system", "user", "assistant"]
    content: str


class PreferenceRecord(BaseModel):
    """One preference pair."""

    id: str
    source: str = Field(description="Where the pair came from (synthetic, rlaif-v, llava-critic, skywork-80k, ...).")
    category: str = Field(description="hallucination, reasoning, general, text, ... (for per-category metrics).")
    images: list[str] = Field(default_factory=list, description="Image paths relative to the dataset folder.")
    conversation: list[Turn] = Field(description="Turns before the judged one; ends with a user turn.")
    chosen: str
    rejected: str
    tie: bool = False
    margin: float | None = None
    scores: dict[str, float] | None = None
    critiques: dict[str, str] | None = Field(
        None,
        description="What a judge writes before its verdict, per question: chosen_first and rejected_first (the "
        "pairwise question in each order), chosen and rejected (the pointwise ones). A judge trained on them "
        "learns critique + verdict (its generate mode).",
    )
    head: str | None = Field(
        None,
        description="Multi-head training: the preference head this pair trains (a source feeding its head); None: "
        "the default head, when the pair has no `attributes`. Heads it does not name are masked.",
    )
    attributes: dict[str, tuple[float, float]] | None = Field(
        None,
        description="Multi-head training: attribute ratings (HelpSteer2-style) of chosen and rejected per head, "
        "regression targets of those heads.",
    )
    meta: dict[str, Any] = Field(default_factory=dict, description="Generator or source details.")

    @property
    def prompt(self) -> str:
        """The last user turn's text."""
        return next(t.content for t in reversed(self.conversation) if t.role == "user")

    def sample(self, response: str, root: Path | str | None = None, images: list[str] | None = None) -> Sample:
        """The conversation + ``response`` as a Sample; the images go at the start of the first user turn."""
        messages = _with_images(self.conversation, images if images is not None else self.images, root)
        messages.append(Message(role="assistant", content=response))
        return Sample(messages=messages)

    def text_key(self) -> str:
        """Normalised text of the pair (for duplicate detection)."""
        parts = [t.content for t in self.conversation] + [self.chosen, self.rejected]
        return "\x1f".join(" ".join(p.lower().split()) for p in parts)


class StepRecord(BaseModel):
    """One multi-step solution with a label per step, for process reward models.

    ``labels[i]`` is step i's: 1.0 correct, 0.0 wrong, a value between for a soft (Monte-Carlo) label, or
    None for a step not labelled (hard-labelled sets leave the steps after the first error unlabelled, as
    PRM800K and ProcessBench do)."""

    id: str
    source: str = Field(description="Where the solution came from (synthetic, visualprm400k, prm800k, ...).")
    category: str = Field(description="For per-category metrics.")
    images: list[str] = Field(default_factory=list, description="Image paths relative to the dataset folder.")
    conversation: list[Turn] = Field(description="Turns before the solution; ends with a user turn.")
    steps: list[str] = Field(min_length=1)
    labels: list[float | None]
    meta: dict[str, Any] = Field(default_factory=dict, description="Generator or source details.")

    @model_validator(mode="after")
    def _a_label_per_step(self) -> StepRecord:
        if len(self.labels) != len(self.steps):
            raise ValueError(f"{len(self.labels)} labels for {len(self.steps)} steps")
        if any(label is not None and not 0.0 <= label <= 1.0 for label in self.labels):
            raise ValueError("labels are probabilities of a correct step (0..1) or null")
        return self

    @property
    def first_error(self) -> int:
        """Index of the first step labelled wrong (below 0.5), -1 when none is (ProcessBench's convention)."""
        return next((i for i, label in enumerate(self.labels) if label is not None and label < 0.5), -1)

    def sample(self, root: Path | str | None = None) -> Sample:
        """The conversation + the steps as a Sample (the last message's ``steps``)."""
        messages = _with_images(self.conversation, self.images, root)
        messages.append(Message(role="assistant", steps=self.steps))
        return Sample(messages=messages)


def _with_images(conversation: list[Turn], refs: list[str], root: Path | str | None) -> list[Message]:
    """The turns as messages, the images at the start of the first user turn (paths relative to ``root``
    when given)."""
    if root is not None:  # explicit file:// + absolute path: a relative one could read as base64
        refs = [f"file://{(Path(root) / ref).resolve()}" for ref in refs]
    messages: list[Message] = []
    placed = False
    for turn in conversation:
        if turn.role == "user" and not placed:
            parts: list[dict] = [{"type": "image_url", "image_url": {"url": ref}} for ref in refs]
            parts.append({"type": "text", "text": turn.content})
            messages.append(Message.model_validate({"role": "user", "content": parts}))
            placed = True
        else:
            messages.append(Message(role=turn.role, content=turn.content))
    return messages


def write_records(records: Iterable[PreferenceRecord | StepRecord], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RECORDS_FILE
    with path.open("w") as handle:
        for record in records:
            handle.write(record.model_dump_json(exclude_defaults=False) + "\n")
    return path


def read_records(folder_or_file: Path, kind: type[BaseModel] = PreferenceRecord) -> Iterator[Any]:
    """The records of a dataset folder (or its records file), as ``kind`` (StepRecord: step-labelled)."""
    path = folder_or_file / RECORDS_FILE if folder_or_file.is_dir() else folder_or_file
    with path.open() as handle:
        for line in handle:
            if line.strip():
                yield kind.model_validate_json(line)


def load_hf_dataset(folder: Path):
    """The records as a `datasets.Dataset` (image paths stay relative to ``folder``)."""
    from datasets import load_dataset

    return load_dataset("json", data_files=str(folder / RECORDS_FILE), split="train")


def dump_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True)
