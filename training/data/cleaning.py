"""Cleaning steps, each reporting how many records went in and came out.

- exact duplicates across sources: normalised text + image content hashes;
- near duplicates: MinHash LSH (datasketch) over word shingles of the pair's text, among pairs with the
  same images (a different image makes a different item, however similar the text);
- ties and "equal quality" pairs dropped;
- a surrogate stage: a reward model scores every pair, and pairs whose chosen response scores low or
  whose margin is small (percentiles per source) go to a `regenerate` file with the reason; their
  chosen responses can be regenerated through any OpenAI-compatible chat endpoint.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from datasketch import MinHash, MinHashLSH

from vlreward.training.data.schema import PreferenceRecord


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


@dataclass
class Flag:
    """A pair the surrogate stage sends to regeneration, and why."""

    id: str
    source: str
    reasons: list[str]
    chosen_score: float
    margin: float


def surrogate_flags(
    records: list[PreferenceRecord],
    scores: list[tuple[float, float]],
    low_percentile: float = 10.0,
    margin_percentile: float = 10.0,
) -> tuple[list[PreferenceRecord], list[Flag]]:
    """Store each pair's scores and margin; flag, per source, pairs whose chosen score is at or below the
    ``low_percentile``-th percentile of that source's chosen scores, or whose margin is at or below the
    ``margin_percentile``-th percentile of its margins."""
    import numpy as np

    scored = [
        r.model_copy(update={"scores": {"chosen": c, "rejected": j}, "margin": c - j})
        for r, (c, j) in zip(records, scores, strict=True)
    ]
    thresholds = {}
    for source in {r.source for r in scored}:
        mine = [r for r in scored if r.source == source]
        thresholds[source] = (
            float(np.percentile([r.scores["chosen"] for r in mine], low_percentile)),
            float(np.percentile([r.margin for r in mine], margin_percentile)),
        )
    flags = []
    for record in scored:
        low, small = thresholds[record.source]
        reasons = [name for name, hit in (("low_chosen_score", record.scores["chosen"] <= low),
                                          ("small_margin", record.margin <= small)) if hit]  # fmt: skip
        if reasons:
            flags.append(Flag(record.id, record.source, reasons, record.scores["chosen"], record.margin))
    return scored, flags


def write_flags(flags: list[Flag], path: Path) -> None:
    """The `regenerate` file: one JSON line per flagged pair with its reasons."""
    import json
    from dataclasses import asdict

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(asdict(flag)) + "\n" for flag in flags))


def regenerate_chosen(
    records: list[PreferenceRecord], root: Path, base_url: str, model: str, api_key: str | None = None,
    max_tokens: int = 512, timeout_s: float = 120.0,
) -> list[PreferenceRecord]:  # fmt: skip
    """Ask any OpenAI-compatible chat endpoint for a new chosen response of each flagged record."""
    import httpx

    from vlreward.service.media import MediaPolicy, read_image_bytes

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    policy = MediaPolicy(media_root=root)
    out = []
    with httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s) as client:
        for record in records:
            sample = record.sample("", root=root)
            messages = []
            for message in sample.messages[:-1]:
                if isinstance(message.content, str):
                    messages.append({"role": message.role, "content": message.content})
                    continue
                parts = []
                for part in message.content:
                    if part.type == "text":
                        parts.append({"type": "text", "text": part.text})
                    else:
                        raw = read_image_bytes(part.image_url.url, policy)
                        url = "data:image/png;base64," + base64.b64encode(raw).decode()
                        parts.append({"type": "image_url", "image_url": {"url": url}})
                messages.append({"role": message.role, "content": parts})
            response = client.post("/v1/chat/completions", json={"model": model, "messages": messages,
                                                                 "max_tokens": max_tokens})  # fmt: skip
            response.raise_for_status()
            text = response.json()["choices"][0]["message"]["content"]
            meta = {**record.meta, "regenerated_from": record.chosen}
            out.append(record.model_copy(update={"chosen": text, "meta": meta, "scores": None, "margin": None}))
    return out
