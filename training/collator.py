"""Preference pairs -> model input: chosen and rejected of every pair in one padded batch.

Formatting and encoding are the service's (``vlreward.service.model.formatting`` / ``encoding``): a trained
model sees exactly the input it will be served with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from vlreward.service.media import MediaPolicy
from vlreward.service.model.encoding import EncodedSample, collate, encode_shared
from vlreward.service.prepare import prepare_sample
from vlreward.training.data.schema import PreferenceRecord


def encode_pair(record: PreferenceRecord, root: Path, processor: Any) -> tuple[EncodedSample, EncodedSample]:
    """Chosen and rejected encoded; their shared images are preprocessed once."""
    policy = MediaPolicy(media_root=root)
    formatted = [
        prepare_sample(record.sample(response, root=root), processor, policy)
        for response in (record.chosen, record.rejected)
    ]
    chosen, rejected = encode_shared(formatted, processor)
    return chosen, rejected


class PairDataset(Dataset):
    """Records of one dataset folder, encoded on first access and kept (each pair is seen every epoch)."""

    def __init__(self, records: list[PreferenceRecord], root: Path, processor: Any, cache: bool = True):
        self.records = records
        self.root = Path(root)
        self.processor = processor
        self.cache: dict[int, tuple[EncodedSample, EncodedSample]] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[EncodedSample, EncodedSample]:
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        pair = encode_pair(self.records[index], self.root, self.processor)
        if self.cache is not None:
            self.cache[index] = pair
        return pair


class ConcatPairs(Dataset):
    """Several PairDatasets as one (stage 2: image pairs + text-only pairs)."""

    def __init__(self, parts: list[PairDataset]):
        self.parts = parts
        self.offsets = []
        total = 0
        for part in parts:
            self.offsets.append(total)
            total += len(part)
        self.total = total

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, index: int) -> tuple[EncodedSample, EncodedSample]:
        for part, offset in zip(reversed(self.parts), reversed(self.offsets), strict=True):
            if index >= offset:
                return part[index - offset]
        raise IndexError(index)


class PairCollator:
    """[(chosen, rejected), ...] -> one batch: rows 0..n-1 chosen, rows n..2n-1 rejected."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, pairs: list[tuple[EncodedSample, EncodedSample]]) -> dict[str, torch.Tensor]:
        chosen = [c for c, _ in pairs]
        rejected = [r for _, r in pairs]
        batch = collate(chosen + rejected, self.pad_token_id, padding_side="right")
        batch["num_pairs"] = torch.tensor(len(pairs))
        return batch
