"""Public reward-model benchmarks from local files: loading, categories and the official tables.

- ``vl-rewardbench``: id, query, response [2], image, human_ranking ([0, 1]: the first is preferred).
  Category from the id prefix (RLAIF/RLHF/hallucination -> Hallucination; mathverse/mmmu -> Reasoning;
  anything else -> General; older copies mapped "hallucination" to General, a known bug). Overall is
  micro accuracy, Macro the mean of the three categories.
- ``rewardbench``: prompt, chosen, rejected, subset, id. Sections weight their subsets by example count
  (math-prm counted as 984 so math and code weigh equally); the plain mean of the sections is reported,
  and the 2/2/2/2/1 variant when prior sets are present.
- ``mm-rewardbench``: ID, Text, Image, Output1, Output2, Better, Category; safety splits into bias (IDs
  starting "pairs") and toxicity, reasoning into math (IDs starting "math") and coding.
Input: JSONL, the hub's parquet layout (embedded image bytes), or a folder with a JSON/JSONL file and
images beside it. Never a download.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCHMARKS = ("vl-rewardbench", "rewardbench", "mm-rewardbench", "synthetic")

REWARDBENCH_SECTIONS = {
    "Chat": ["alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"],
    "Chat Hard": ["mt-bench-hard", "llmbar-natural", "llmbar-adver-neighbor", "llmbar-adver-GPTInst",
                  "llmbar-adver-GPTOut", "llmbar-adver-manual"],
    "Safety": ["refusals-dangerous", "refusals-offensive", "xstest-should-refuse", "xstest-should-respond",
               "donotanswer"],
    "Reasoning": ["math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"],
}  # fmt: skip
# The leaderboard's section weights: EXAMPLE_COUNTS of allenai/reward-bench's rewardbench/constants.py.
# The xstest pair looks swapped (should-refuse has 154 items, should-respond 250) but these are the
# weights the official scores are computed with, so the same predictions give the leaderboard's Safety.
REWARDBENCH_COUNTS = {
    "alpacaeval-easy": 100, "alpacaeval-length": 95, "alpacaeval-hard": 95, "mt-bench-easy": 28,
    "mt-bench-med": 40, "mt-bench-hard": 37, "llmbar-natural": 100, "llmbar-adver-neighbor": 134,
    "llmbar-adver-GPTInst": 92, "llmbar-adver-GPTOut": 47, "llmbar-adver-manual": 46,
    "refusals-dangerous": 100, "refusals-offensive": 100, "xstest-should-refuse": 250,
    "xstest-should-respond": 154, "donotanswer": 136, "math-prm": 984, "hep-cpp": 164, "hep-go": 164,
    "hep-java": 164, "hep-js": 164, "hep-python": 164, "hep-rust": 164,
}  # fmt: skip
REWARDBENCH_PRIOR_SETS = ("anthropic_helpful", "anthropic_hhh", "shp", "summarize")


@dataclass
class EvalPair:
    """One benchmark item: a prompt (+ images) and two responses, the first or second preferred."""

    id: str
    category: str
    prompt: str
    responses: tuple[str, str]
    preferred: int
    """0 or 1: which response the benchmark prefers."""
    images: list[str] = field(default_factory=list)
    """Image references (data URIs or absolute paths)."""
    subset: str | None = None

    def samples(self) -> list[dict]:
        """The two responses as Samples (HTTP JSON shape)."""
        return [{"prompt": self.prompt, "response": r, "images": self.images} for r in self.responses]


def vl_rewardbench_category(item_id: str) -> str:
    """VL-RewardBench's category from the id prefix (text before the first '_' or '-')."""
    prefix = item_id.replace("-", "_").split("_", 1)[0].lower()
    if prefix in ("rlaif", "rlhf", "hallucination"):
        return "Hallucination"
    if prefix in ("mathverse", "mmmu"):
        return "Reasoning"
    return "General"


def image_ref(value: Any, folder: Path) -> str | None:
    """An image cell (path, bytes, {"bytes", "path"}, PIL image) as a data URI, so that in-process and
    server evaluation send the same bytes (a server cannot read this machine's files)."""
    if value is None:
        return None
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if hasattr(value, "save"):  # a PIL image (datasets decodes image columns)
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        value = buffer.getvalue()
    if not isinstance(value, (bytes, bytearray)):
        path = Path(str(value))
        value = (path if path.is_absolute() else folder / path).read_bytes()
    return "data:image;base64," + base64.b64encode(bytes(value)).decode()


def read_rows(path: Path) -> tuple[list[dict], Path]:
    """Rows of a benchmark file or folder, and the folder image paths are relative to."""
    if path.is_dir():
        candidates = sorted([*path.glob("*.jsonl"), *path.glob("*.json"), *path.glob("*.parquet")])
        if not candidates:
            raise FileNotFoundError(f"{path}: no .jsonl, .json or .parquet file")
        path = candidates[0]
    if path.suffix == ".parquet":
        import pandas as pd

        return pd.read_parquet(path).to_dict("records"), path.parent
    text = path.read_text()
    if path.suffix == ".json":
        data = json.loads(text)
        return (data if isinstance(data, list) else data["data"]), path.parent
    return [json.loads(line) for line in text.splitlines() if line.strip()], path.parent


def load_pairs(benchmark: str, path: Path) -> list[EvalPair]:
    """The benchmark's items as EvalPairs."""
    rows, folder = read_rows(path)
    pairs = []
    for row in rows:
        if benchmark == "vl-rewardbench":
            ranking = list(row["human_ranking"])
            image = image_ref(row.get("image"), folder)
            pairs.append(
                EvalPair(
                    id=str(row["id"]),
                    category=vl_rewardbench_category(str(row["id"])),
                    prompt=row["query"],
                    responses=(row["response"][0], row["response"][1]),
                    preferred=0 if ranking[0] < ranking[1] else 1,
                    images=[image] if image else [],
                )
            )
        elif benchmark == "rewardbench":
            subset = row["subset"]
            section = next((s for s, names in REWARDBENCH_SECTIONS.items() if subset in names), None)
            if section is None and subset not in REWARDBENCH_PRIOR_SETS:
                raise ValueError(f"unknown RewardBench subset {subset!r}")
            pairs.append(
                EvalPair(
                    id=str(row["id"]),
                    category=section or "Prior Sets",
                    prompt=row["prompt"],
                    responses=(row["chosen"], row["rejected"]),
                    preferred=0,
                    subset=subset,
                )
            )
        elif benchmark == "mm-rewardbench":
            item_id, category = str(row["ID"]), row["Category"]
            subset = None
            if category == "safety":
                subset = "safety/bias" if item_id.startswith("pairs") else "safety/toxicity"
            elif category == "reasoning":
                subset = "reasoning/math" if item_id.startswith("math") else "reasoning/coding"
            image = image_ref(row.get("Image"), folder)
            pairs.append(
                EvalPair(
                    id=item_id,
                    category=category,
                    prompt=row["Text"],
                    responses=(row["Output1"], row["Output2"]),
                    preferred=0 if row["Better"] == "Output1" else 1,
                    images=[image] if image else [],
                    subset=subset,
                )
            )
        else:
            raise ValueError(f"unknown benchmark {benchmark!r}; choose one of {', '.join(BENCHMARKS)}")
    return pairs


# Column order of each benchmark's table (the papers' layout).
COLUMNS = {
    "vl-rewardbench": ["General", "Hallucination", "Reasoning"],
    "rewardbench": list(REWARDBENCH_SECTIONS),
}


def _accuracy(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else 0.0


def tables(benchmark: str, pairs: list[EvalPair], scores: dict[str, list[float]]) -> dict[str, Any]:
    """The benchmark's figures from per-item scores; a pair is right only when strictly preferred."""
    correct: dict[str, bool] = {}
    ties = 0
    for pair in pairs:
        s = scores[pair.id]
        ties += s[0] == s[1]
        correct[pair.id] = s[pair.preferred] > s[1 - pair.preferred]
    by_category: dict[str, list[bool]] = {}
    by_subset: dict[str, list[bool]] = {}
    for pair in pairs:
        by_category.setdefault(pair.category, []).append(correct[pair.id])
        if pair.subset is not None:
            by_subset.setdefault(pair.subset, []).append(correct[pair.id])
    results: dict[str, Any] = {"benchmark": benchmark, "n": len(pairs), "ties": ties}
    results["overall"] = _accuracy(list(correct.values()))
    if benchmark == "rewardbench":
        sections = {}
        for section, names in REWARDBENCH_SECTIONS.items():
            present = [n for n in names if n in by_subset]
            if present:
                weight = sum(REWARDBENCH_COUNTS[n] for n in present)
                sections[section] = sum(_accuracy(by_subset[n]) * REWARDBENCH_COUNTS[n] for n in present) / weight
        results["categories"] = sections
        results["subsets"] = {n: _accuracy(v) for n, v in sorted(by_subset.items())}
        results["macro"] = sum(sections.values()) / len(sections) if sections else 0.0
        priors = [n for n in REWARDBENCH_PRIOR_SETS if n in by_subset]
        if priors and len(sections) == 4:
            prior = sum(_accuracy(by_subset[n]) for n in priors) / len(priors)
            results["prior_sets"] = prior
            results["weighted_2_2_2_2_1"] = (2 * sum(sections.values()) + prior) / 9
    else:
        results["categories"] = {name: _accuracy(v) for name, v in sorted(by_category.items())}
        results["macro"] = sum(results["categories"].values()) / len(results["categories"]) if by_category else 0.0
        if by_subset:
            results["subsets"] = {n: _accuracy(v) for n, v in sorted(by_subset.items())}
    return results
