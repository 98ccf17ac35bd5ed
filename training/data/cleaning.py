"""Cleaning steps, each reporting how many records went in and came out.

- exact duplicates across sources: normalised text + image content hashes;
- near duplicates: MinHash LSH (datasketch) over word shingles of the pair's text, among pairs with the
  same images (a different image makes a different item, however similar the text);
- ties and "equal quality" pairs dropped.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from datasketch import MinHash, MinHashLSH

from training.data.schema import PreferenceRecord


@dataclass
class StepReport:
    """One cleaning step's counts."""

    step: str
    count_in: int
    count_out: int

    @property
    def removed(self) -> int:
        return self.count_in - self.count_out


def _image_hashes(record: PreferenceRecord, root: Path) -> tuple[str, ...]:
    return tuple(hashlib.sha256((root / path).read_bytes()).hexdigest() for path in record.images)


def drop_exact_duplicates(records: list[PreferenceRecord], root: Path) -> tuple[list[PreferenceRecord], StepReport]:
    """Keep the first of records with the same normalised text and the same image contents."""
    seen, kept = set(), []
    for record in records:
        key = (record.text_key(), _image_hashes(record, root))
        if key not in seen:
            seen.add(key)
            kept.append(record)
    return kept, StepReport("exact duplicates", len(records), len(kept))


_WORD = re.compile(r"\w+")


def _minhash(record: PreferenceRecord, num_perm: int, shingle: int = 3) -> MinHash:
    words = _WORD.findall(record.text_key().lower())
    tokens = {" ".join(words[i : i + shingle]) for i in range(max(1, len(words) - shingle + 1))}
    signature = MinHash(num_perm=num_perm, seed=1)
    for token in tokens:
        signature.update(token.encode())
    return signature


def drop_near_duplicates(
    records: list[PreferenceRecord], root: Path, threshold: float = 0.85, num_perm: int = 128
) -> tuple[list[PreferenceRecord], StepReport]:
    """Keep the first of records whose estimated Jaccard similarity is at least ``threshold``."""
    indexes: dict[tuple[str, ...], MinHashLSH] = {}
    kept = []
    for record in records:
        index = indexes.setdefault(_image_hashes(record, root), MinHashLSH(threshold=threshold, num_perm=num_perm))
        signature = _minhash(record, num_perm)
        if index.query(signature):
            continue
        index.insert(record.id, signature)
        kept.append(record)
    return kept, StepReport(f"near duplicates (jaccard >= {threshold})", len(records), len(kept))


def drop_ties(records: list[PreferenceRecord]) -> tuple[list[PreferenceRecord], StepReport]:
    """Drop ties, "equal quality" verdicts and pairs whose two responses are the same text."""
    kept = [r for r in records if not r.tie and " ".join(r.chosen.split()) != " ".join(r.rejected.split())]
    return kept, StepReport("ties and equal-quality pairs", len(records), len(kept))


def clean(
    records: list[PreferenceRecord], root: Path, near_threshold: float = 0.85
) -> tuple[list[PreferenceRecord], list[StepReport]]:
    """All deterministic steps in order; returns the kept records and each step's report."""
    reports = []
    records, report = drop_ties(records)
    reports.append(report)
    records, report = drop_exact_duplicates(records, root)
    reports.append(report)
    records, report = drop_near_duplicates(records, root, near_threshold)
    reports.append(report)
    return records, reports
