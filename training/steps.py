"""The process objective: step-labelled solutions -> the head read at every step tag, trained with binary
cross-entropy where a step is labelled, and measured as PRM benchmarks measure (step-level macro-F1 over
correct / wrong, and the accuracy of the first wrong step's index).

Formatting and encoding are the service's (``prepare_sample`` with the model's step tag, then the
tokenizer's tag positions), so a trained model reads exactly the input it is served with.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch.utils.data import Dataset

from vlreward.service.kinds import ProcessHead
from vlreward.service.media import MediaPolicy
from vlreward.service.model.checkpoint import step_tag_id
from vlreward.service.model.encoding import EncodedSample, collate, encode, padded_positions
from vlreward.service.prepare import prepare_sample
from vlreward.service.steps import step_ends
from vlreward.training.data.schema import StepRecord

UNLABELLED = float("nan")
"""A step without a label (after the first error, or padding): no loss, not measured."""


def encode_solution(
    record: StepRecord, root: Path, processor: Any, head: ProcessHead, tag_id: int, policy: MediaPolicy
) -> EncodedSample:
    """A solution encoded with its step tags' positions (one per step, or the record is refused);
    ``tag_id``: the step tag's token id, ``policy``: media read from ``root``."""
    formatted = prepare_sample(record.sample(root=root), processor, policy, step_tag=head.step_tag)
    encoded = encode(formatted, processor)
    encoded.read_at = step_ends(encoded.input_ids.tolist(), tag_id, head.step_tag)
    if len(encoded.read_at) != len(record.steps):
        raise ValueError(f"{record.id}: {len(encoded.read_at)} step tags for {len(record.steps)} steps")
    return encoded


class StepDataset(Dataset):
    """Solutions of one dataset folder, each encoded on first access and kept, with its labels."""

    def __init__(self, records: list[StepRecord], root: Path, processor: Any, head: ProcessHead):
        self.records = records
        self.root = Path(root)
        self.processor = processor
        self.head = head
        self.tag_id = step_tag_id(processor.tokenizer, head.step_tag)
        self.policy = MediaPolicy(media_root=self.root)
        self.cache: dict[int, tuple[EncodedSample, list[float | None]]] = {}

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[EncodedSample, list[float | None]]:
        if index not in self.cache:
            record = self.records[index]
            encoded = encode_solution(record, self.root, self.processor, self.head, self.tag_id, self.policy)
            self.cache[index] = (encoded, record.labels)
        return self.cache[index]


def read_at_and_labels(items: list[tuple[EncodedSample, list[float | None]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every row's step-tag positions and labels, [batch, most steps] (a shorter row repeats its last tag,
    labelled :data:`UNLABELLED`)."""
    positions = padded_positions([encoded.read_at for encoded, _ in items])
    labels = [[UNLABELLED if label is None else label for label in row_labels] for _, row_labels in items]
    labels = [row + [UNLABELLED] * (positions.shape[1] - len(row)) for row in labels]
    return positions, torch.tensor(labels, dtype=torch.float32)


class StepCollator:
    """[(solution, labels), ...] -> one right-padded batch with ``read_at`` and ``labels``."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, items: list[tuple[EncodedSample, list[float | None]]]) -> dict[str, torch.Tensor]:
        batch = collate([encoded for encoded, _ in items], self.pad_token_id, padding_side="right")
        batch["read_at"], batch["labels"] = read_at_and_labels(items)
        return batch


def step_loss(
    logits: torch.Tensor, labels: torch.Tensor, total: torch.Tensor | None = None, processes: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean binary cross-entropy over the labelled steps (soft labels as they are) and the share of them
    the head gets on the right side of 0.5. Data parallel: ``total`` is the labelled steps of every
    process's batch; each process then returns its share of the whole batch's mean, scaled by
    ``processes``, so that the mean over processes (what DDP averages gradients by, and what the trainer
    logs) is the mean over all labelled steps, as one process with the whole batch computes it (ranks hold
    different numbers of labelled steps)."""
    labelled = ~torch.isnan(labels)
    logits, labels = logits[labelled], labels[labelled].to(logits.dtype)
    count = labelled.sum() if total is None else total
    scale = processes / count.clamp(min=1).to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, labels, reduction="sum") * scale
    right = ((logits > 0) == (labels >= 0.5)).to(logits.dtype).sum() * scale
    return loss, right


def first_error(step_scores: list[float], threshold: float = 0.5) -> int:
    """The first step scored below ``threshold``, -1 when none is (ProcessBench's convention)."""
    return next((i for i, score in enumerate(step_scores) if score < threshold), -1)


def _f1(true_positive: int, false_positive: int, false_negative: int) -> float:
    denominator = 2 * true_positive + false_positive + false_negative
    return 2 * true_positive / denominator if denominator else 0.0


def macro_f1(pairs: Iterable[tuple[bool, bool]]) -> dict[str, float]:
    """Step-level macro-F1 over the classes correct / wrong of (truly correct, predicted correct) pairs,
    with each class's F1 and the number of steps."""
    counts = Counter(pairs)
    f1_correct = _f1(counts[True, True], counts[False, True], counts[True, False])
    f1_wrong = _f1(counts[False, False], counts[True, False], counts[False, True])
    return {"macro_f1": (f1_correct + f1_wrong) / 2, "f1_correct": f1_correct, "f1_wrong": f1_wrong,
            "steps": sum(counts.values())}  # fmt: skip


def step_metrics(records: list[StepRecord], step_scores: list[list[float]], threshold: float = 0.5) -> dict:
    """Step-level macro-F1 over the classes correct / wrong (labelled steps; soft labels read at 0.5),
    first-error accuracy (the predicted first wrong step equals the labelled one, -1 for none), overall
    and per category."""

    def measure(pairs: list[tuple[StepRecord, list[float]]]) -> dict[str, float]:
        steps = [(label >= 0.5, score >= threshold) for record, scores in pairs
                 for label, score in zip(record.labels, scores, strict=True) if label is not None]  # fmt: skip
        first_right = sum(first_error(scores, threshold) == record.first_error for record, scores in pairs)
        return {"macro_f1": macro_f1(steps)["macro_f1"], "first_error_accuracy": first_right / max(len(pairs), 1)}

    pairs = list(zip(records, step_scores, strict=True))
    by_category: dict[str, list] = defaultdict(list)
    for record, scores in pairs:
        by_category[record.category].append((record, scores))
    overall = measure(pairs)
    return {
        "n": len(pairs),
        "steps": sum(label is not None for record in records for label in record.labels),
        **overall,
        "categories": {category: measure(items) for category, items in sorted(by_category.items())},
    }


def score_solutions(model: Any, dataset: StepDataset, head: ProcessHead, batch_size: int = 16) -> list[list[float]]:
    """Step scores (the head's activation) of every solution of ``dataset``, in order."""
    scores: list[list[float]] = []
    with torch.inference_mode():
        for start in range(0, len(dataset), batch_size):
            batch = [dataset[i][0] for i in range(start, min(len(dataset), start + batch_size))]
            scores += [head.step_scores(logits) for logits in model.score_batch(batch)]
    return scores
