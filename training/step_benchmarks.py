"""Process-reward benchmarks from local files in their published formats, scored as their evaluation code
scores them.

- ``processbench`` (Qwen's ProcessBench): records with ``id``, ``generator``, ``problem``, ``steps``,
  ``final_answer_correct`` and ``label``, the index of the earliest wrong step (-1: none). The split is the
  id's prefix (``gsm8k-0`` -> gsm8k), so one file or a folder of the split files both work. A process
  model's prediction is the first step it scores below the threshold (-1: none). Per split, as
  QwenLM/ProcessBench's ``code/run_eval_prm_rlhflow.py`` computes it: the accuracy on the solutions with
  an error (prediction == label), the accuracy on the correct ones (label -1), and F1, their harmonic
  mean; "Avg. F1" is the mean over the splits present (the papers' average). The threshold is 0.5, or
  the one that maximises one stated split's F1, then applied to every split.
- ``visualprocessbench`` (VisualPRM's VisualProcessBench): records with ``image`` (a list of paths),
  ``question``, ``answer``, ``response`` = {``steps``, ``process_correctness``: 1 correct, -1 wrong, 0
  neutral}, ``policy_model`` and ``data_source``. Neutral steps are left out; a step is predicted correct
  when scored at or above the threshold. Macro-F1 over the classes correct and wrong, per data source
  and over every step pooled ("Overall"); ``sources_weighted`` is the per-source figures' mean weighted
  by their labelled steps. (VisualPRM's evaluation script is unpublished: this is the rule of the
  dataset card and of public re-implementations; docs/evaluation.md says so.)
Input: JSON, JSONL or parquet (the hub's layouts), or a folder of them. Never a download.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlreward.training.benchmarks import image_ref, read_rows
from vlreward.training.steps import first_error, macro_f1

STEP_BENCHMARKS = ("processbench", "visualprocessbench")
PROCESSBENCH_SPLITS = ("gsm8k", "math", "olympiadbench", "omnimath")
"""ProcessBench's splits in its paper's column order."""
VISUALPROCESSBENCH_SOURCES = ("MMMU", "MathVision", "MathVerse", "DynaMath", "WeMath")
"""VisualProcessBench's data sources in its paper's column order (others follow, sorted)."""
THRESHOLD = 0.5
"""A step scored below it is predicted wrong."""


@dataclass
class StepItem:
    """One benchmark solution: a problem (+ images) and its steps, with the benchmark's answer."""

    id: str
    category: str
    """ProcessBench: the split; VisualProcessBench: the data source."""
    prompt: str
    steps: list[str]
    images: list[str] = field(default_factory=list)
    """Image references (data URIs)."""
    label: int | None = None
    """ProcessBench: the earliest wrong step's index, -1 when none."""
    labels: list[int] | None = None
    """VisualProcessBench: each step's correctness (1, -1, 0 neutral)."""

    def sample(self, step_tag: str) -> dict:
        """The solution as a Sample dict with steps; the model's step tag is removed from every text (it
        would add a step; a server refuses it)."""
        clean = lambda text: text.replace(step_tag, "")  # noqa: E731
        return {"prompt": clean(self.prompt), "steps": [clean(s) for s in self.steps], "images": self.images}

    def answer(self) -> dict[str, Any]:
        """What the benchmark knows of this item (kept with its predictions, so tables can be recomputed)."""
        return {"label": self.label} if self.labels is None else {"labels": self.labels}


def processbench_split(item_id: str) -> str:
    """ProcessBench's split from the id (``olympiadbench-12`` -> olympiadbench)."""
    return item_id.rsplit("-", 1)[0]


def load_step_items(benchmark: str, path: Path) -> list[StepItem]:
    """The benchmark's solutions from a file or a folder (every file in it)."""
    suffixes = (".json", ".jsonl", ".parquet")
    files = sorted(p for p in path.iterdir() if p.suffix in suffixes) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"{path}: no .json, .jsonl or .parquet file")
    items = []
    for file in files:
        rows, folder = read_rows(file)
        for row in rows:
            if benchmark == "processbench":
                items.append(
                    StepItem(id=str(row["id"]), category=processbench_split(str(row["id"])), prompt=row["problem"],
                             steps=list(row["steps"]), label=int(row["label"]))
                )  # fmt: skip
            elif benchmark == "visualprocessbench":
                response = row["response"]
                steps, labels = list(response["steps"]), [int(x) for x in response["process_correctness"]]
                if len(steps) != len(labels):
                    raise ValueError(f"{file}: {len(steps)} steps but {len(labels)} labels ({row['question'][:40]!r})")
                images = row["image"] if isinstance(row["image"], list) else [row["image"]]
                items.append(
                    StepItem(id=str(row.get("id", f"{file.stem}-{len(items)}")), category=str(row["data_source"]),
                             prompt=row["question"], steps=steps, labels=labels,
                             images=[image_ref(image, folder) for image in images if image])
                )  # fmt: skip
            else:
                raise ValueError(f"unknown benchmark {benchmark!r}; choose one of {', '.join(STEP_BENCHMARKS)}")
    return items


def _mean(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def _ordered(names: set[str], order: tuple[str, ...]) -> list[str]:
    return [n for n in order if n in names] + sorted(names - set(order))


def processbench_split_figures(items: list[StepItem], scores: dict[str, list[float]], threshold: float) -> dict:
    """One split's error accuracy, correct accuracy and F1 (their harmonic mean; 0 when either is 0 or
    the split lacks one kind)."""
    matches = [(item.label, first_error(scores[item.id], threshold) == item.label) for item in items]
    erroneous = _mean([match for label, match in matches if label != -1])
    correct = _mean([match for label, match in matches if label == -1])
    both = erroneous is not None and correct is not None and erroneous + correct > 0
    f1 = 2 * erroneous * correct / (erroneous + correct) if both else 0.0
    return {"n": len(items), "error_accuracy": erroneous, "correct_accuracy": correct, "f1": f1}


def choose_threshold(items: list[StepItem], scores: dict[str, list[float]], split: str) -> float:
    """The threshold that maximises ``split``'s F1 (the smallest such, among the split's step scores and
    0.5): chosen on a stated split, then applied to every split."""
    chosen = [item for item in items if item.category == split]
    if not chosen:
        raise ValueError(f"no ProcessBench split {split!r} in the data")
    candidates = sorted({THRESHOLD, *(s for item in chosen for s in scores[item.id])})
    return max(candidates, key=lambda t: processbench_split_figures(chosen, scores, t)["f1"])  # the first best


def processbench_tables(
    items: list[StepItem], scores: dict[str, list[float]], threshold_split: str | None = None
) -> dict[str, Any]:
    """Per-split figures and the average F1 (``overall``), at 0.5 or the threshold chosen on a split."""
    threshold = THRESHOLD if threshold_split is None else choose_threshold(items, scores, threshold_split)
    splits = {
        split: processbench_split_figures([i for i in items if i.category == split], scores, threshold)
        for split in _ordered({i.category for i in items}, PROCESSBENCH_SPLITS)
    }
    average = sum(s["f1"] for s in splits.values()) / len(splits) if splits else 0.0
    return {
        "n": len(items), "unit": "solutions", "threshold": threshold, "threshold_from": threshold_split,
        "categories": {name: figures["f1"] for name, figures in splits.items()}, "splits": splits,
        "overall": average, "macro": average,
    }  # fmt: skip


def visualprocessbench_tables(
    items: list[StepItem], scores: dict[str, list[float]], threshold: float = THRESHOLD
) -> dict[str, Any]:
    """Macro-F1 per data source and pooled, neutral steps left out."""
    by_source: dict[str, list[tuple[bool, bool]]] = {}
    neutral = 0
    for item in items:
        step_scores = scores[item.id]
        if len(step_scores) != len(item.labels):
            raise ValueError(f"{item.id}: {len(step_scores)} step scores for {len(item.labels)} steps")
        for label, score in zip(item.labels, step_scores, strict=True):
            if label == 0:
                neutral += 1
                continue
            by_source.setdefault(item.category, []).append((label > 0, score >= threshold))
    sources = {name: macro_f1(by_source[name]) for name in _ordered(set(by_source), VISUALPROCESSBENCH_SOURCES)}
    pooled = macro_f1([pair for pairs in by_source.values() for pair in pairs])
    labelled = sum(s["steps"] for s in sources.values())
    weighted = sum(s["macro_f1"] * s["steps"] for s in sources.values()) / labelled if labelled else 0.0
    return {
        "n": len(items), "unit": "solutions", "threshold": threshold, "steps": labelled, "neutral_steps": neutral,
        "categories": {name: figures["macro_f1"] for name, figures in sources.items()}, "sources": sources,
        "overall": pooled["macro_f1"], "pooled": pooled, "sources_weighted": weighted,
        "macro": sum(s["macro_f1"] for s in sources.values()) / len(sources) if sources else 0.0,
    }  # fmt: skip


def step_tables(
    benchmark: str, items: list[StepItem], scores: dict[str, list[float]], threshold_split: str | None = None
) -> dict[str, Any]:
    """The benchmark's figures from each solution's step scores (activated: P(step correct))."""
    if benchmark == "processbench":
        return {"benchmark": benchmark, **processbench_tables(items, scores, threshold_split)}
    if threshold_split is not None:
        raise ValueError("a threshold chosen on a split is ProcessBench's option")
    return {"benchmark": benchmark, **visualprocessbench_tables(items, scores)}
