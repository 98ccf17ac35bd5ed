"""Input rows for the offline-scoring tests: distinct prompts and responses, a third with an image (inline, or a
file beside the input), and a few rows that cannot be scored."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import COLOURS, shape_image, uri

MALFORMED = [
    '{"prompt": "no response"}',
    '{"prompt": "x", "response": "y", "image": "data:image/png;base64,AAAA"}',
    "not json at all",
]


def write_rows(folder: Path, count: int, steps: bool = False) -> tuple[Path, list[str]]:
    """``count`` scorable rows then :data:`MALFORMED` as ``folder/in.jsonl``; returns it and the malformed rows'
    ids. ``steps``: responses as steps (a process model's input)."""
    folder.mkdir(parents=True, exist_ok=True)
    colours = list(COLOURS)
    for colour in colours:
        shape_image(colour, "square").save(folder / f"{colour}.png")
    lines = []
    for i in range(count):
        words = " ".join(f"w{(i * 7 + k) % 97}" for k in range(3 + i % 11))
        row: dict = {"prompt": f"Question {i}: {words}?", "topic": f"t{i % 5}"}
        if steps:
            row["steps"] = [f"Step {k} of {i}." for k in range(1 + i % 3)]
        else:
            row["response"] = f"Answer {i}: {words[::-1]}"
        if i % 3 == 1:
            colour = colours[i % len(colours)]
            row["image"] = uri(shape_image(colour)) if i % 2 else f"./{colour}.png"
        if i % 4 == 0:
            row["id"] = f"row-{i}"
        lines.append(json.dumps(row))
    path = folder / "in.jsonl"
    path.write_text("\n".join(lines + MALFORMED) + "\n")
    return path, [f"in.jsonl:{count + k + 1}" for k in range(len(MALFORMED))]


def good_rows(path: Path, count: int) -> Path:
    """The scorable rows alone, each with its id, for the in-process engine (which stops at a bad row)."""
    out = path.with_name("good.jsonl")
    lines = path.read_text().splitlines()[:count]
    rows = [{k: v for k, v in json.loads(line).items() if k != "topic"} for line in lines]  # Sample's fields only
    out.write_text("".join(json.dumps({"id": f"in.jsonl:{n}"} | row) + "\n" for n, row in enumerate(rows, 1)))
    return out
