"""Converters from the public sources' row layouts into PreferenceRecords.

- LLaVA-Critic (pairwise): the question and both answers sit inside a judge prompt; the verdict
  ("The better response: [1]" / "[2]", or "equally good") is in the model turn. Parsing anchors on the
  literal labels, since answers can contain brackets.
- RLAIF-V: image, question, chosen, rejected (+ origin fields).
- Skywork-Reward-Preference-80K-v0.2: chosen/rejected are full message lists repeating the prompt turns.
Images are written into the dataset's images folder and referenced by relative path.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from vlreward.training.data.schema import IMAGES_DIR, PreferenceRecord, Turn

_QUESTION = "Question:"
_FIRST = "The first response:"
_SECOND = "The second response:"
_TRAILERS = ("\nASSISTANT", "\n\nASSISTANT", "\n\nPlease", "\nPlease", "\n\nWhich", "\n\nYour")
_VERDICT = re.compile(r"better response\s*(?:is)?\s*:?\s*\[?\s*(1|2)\s*\]?", re.IGNORECASE)
_TIE = re.compile(r"(equally (good|bad|well)|equal quality|both responses are (equally|the same))", re.IGNORECASE)


class ConversionError(ValueError):
    """A row does not have the source's layout."""


def _unbracket(text: str) -> str:
    text = text.strip()
    if text.startswith("[") and "]" in text:
        return text[1 : text.rindex("]")].strip()
    return text


def parse_llava_critic_prompt(prompt: str) -> tuple[str, str, str]:
    """(question, first response, second response) from a LLaVA-Critic pairwise judge prompt."""
    positions = [prompt.find(label) for label in (_QUESTION, _FIRST, _SECOND)]
    if min(positions) < 0 or positions != sorted(positions):
        raise ConversionError("judge prompt lacks the Question / first / second response labels")
    question = prompt[positions[0] + len(_QUESTION) : positions[1]]
    first = prompt[positions[1] + len(_FIRST) : positions[2]]
    second = prompt[positions[2] + len(_SECOND) :]
    cut = min((second.find(t) for t in _TRAILERS if t in second), default=-1)
    if cut >= 0:
        second = second[:cut]
    return _unbracket(question), _unbracket(first), _unbracket(second)


def parse_llava_critic_verdict(answer: str) -> int | None:
    """1 or 2 for the better response, 0 for a tie, None when no verdict is found."""
    if _TIE.search(answer):
        return 0
    match = _VERDICT.search(answer)
    return int(match.group(1)) if match else None


def store_image(data: Any, out_dir: Path, images_root: Path | None) -> str:
    """Copy or write an image into ``out_dir/images`` (named by content hash); returns the relative path."""
    if isinstance(data, dict):  # the hub's parquet layout: {"bytes": ..., "path": ...}
        data = data.get("bytes") or data.get("path")
    if isinstance(data, str) and not Path(data).is_absolute() and images_root is not None:
        data = images_root / data
    if isinstance(data, (str, Path)) and Path(data).is_file():
        raw = Path(data).read_bytes()
    elif isinstance(data, str):
        raw = base64.b64decode(data)
    elif isinstance(data, (bytes, bytearray)):
        raw = bytes(data)
    elif isinstance(data, Image.Image):
        buffer = io.BytesIO()
        data.save(buffer, format="PNG")
        raw = buffer.getvalue()
    else:
        raise ConversionError(f"unsupported image value of type {type(data).__name__}")
    fmt = (Image.open(io.BytesIO(raw)).format or "png").lower()
    relative = f"{IMAGES_DIR}/{hashlib.sha256(raw).hexdigest()[:24]}.{fmt}"
    target = out_dir / relative
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(raw)
    return relative


def convert_llava_critic(
    rows: Iterable[dict], out_dir: Path, images_root: Path | None = None
) -> Iterator[PreferenceRecord]:
    """LLaVA-Critic pairwise rows -> records (ties kept with ``tie=True``; cleaning drops them)."""
    for row in rows:
        turns = row["conversations"]
        prompt = next(t["value"] for t in turns if t["from"] in ("human", "user"))
        answer = next(t["value"] for t in turns if t["from"] in ("gpt", "assistant"))
        question, first, second = parse_llava_critic_prompt(prompt.replace("<image>", "").strip())
        verdict = parse_llava_critic_verdict(answer)
        if verdict is None:
            continue
        chosen, rejected = (second, first) if verdict == 2 else (first, second)
        images = [store_image(row["image"], out_dir, images_root)] if row.get("image") else []
        yield PreferenceRecord(
            id=f"llava-critic-{row['id']}",
            source="llava-critic",
            category="general",
            images=images,
            conversation=[Turn(role="user", content=question)],
            chosen=chosen,
            rejected=rejected,
            tie=verdict == 0,
            meta={"origin": row.get("source")},
        )


def convert_rlaif_v(rows: Iterable[dict], out_dir: Path, images_root: Path | None = None) -> Iterator[PreferenceRecord]:
    """RLAIF-V rows -> records (several pairs share an image and question; each stays its own pair)."""
    for number, row in enumerate(rows):
        image = row.get("image") if row.get("image") is not None else row.get("image_path")
        yield PreferenceRecord(
            id=f"rlaif-v-{row.get('idx', number)}-{number}",
            source="rlaif-v",
            category="hallucination",
            images=[store_image(image, out_dir, images_root)],
            conversation=[Turn(role="user", content=row["question"])],
            chosen=row["chosen"],
            rejected=row["rejected"],
            meta={k: row.get(k) for k in ("ds_name", "origin_dataset", "origin_split") if row.get(k) is not None},
        )


def convert_skywork_preference(rows: Iterable[dict]) -> Iterator[PreferenceRecord]:
    """Skywork-Reward-Preference-80K rows (chosen/rejected message lists) -> text-only records."""
    for number, row in enumerate(rows):
        chosen, rejected = row["chosen"], row["rejected"]
        if chosen[:-1] != rejected[:-1] or chosen[-1]["role"] != "assistant":
            raise ConversionError(f"row {number}: chosen and rejected do not share their prompt turns")
        yield PreferenceRecord(
            id=f"skywork-80k-{number}",
            source="skywork-80k",
            category="text",
            conversation=[Turn(role=m["role"], content=m["content"]) for m in chosen[:-1]],
            chosen=chosen[-1]["content"],
            rejected=rejected[-1]["content"],
            meta={"origin": row.get("source")},
        )


SOURCES = ("llava-critic", "rlaif-v", "skywork-80k")


def read_rows(path: Path) -> Iterator[dict]:
    """Rows of a JSONL, JSON or parquet file (the hub's layouts), via `datasets`."""
    from datasets import load_dataset

    kind = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}.get(path.suffix)
    if kind is None:
        raise ConversionError(f"{path}: expected .jsonl, .json or .parquet")
    yield from load_dataset(kind, data_files=str(path), split="train")


def convert(source: str, input_path: Path, out_dir: Path, images_root: Path | None = None) -> list[PreferenceRecord]:
    """Convert one source file into records (images copied into ``out_dir``)."""
    rows = read_rows(input_path)
    if source == "llava-critic":
        return list(convert_llava_critic(rows, out_dir, images_root))
    if source == "rlaif-v":
        return list(convert_rlaif_v(rows, out_dir, images_root))
    if source == "skywork-80k":
        return list(convert_skywork_preference(rows))
    raise ConversionError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
