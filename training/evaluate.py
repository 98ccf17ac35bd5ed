"""Evaluation runs: per-item scores, the benchmark's tables (markdown + JSON) and a PNG.

Pairwise benchmarks: a pair is correct only when the preferred response scores strictly higher; ties
count as wrong. A judge that compares is asked each pair in both orders: its scores are (P, 1 - P) of the
debiased P(first response better), read from logits as ``/compare`` reads them. Process benchmarks
(:mod:`vlreward.training.step_benchmarks`): each solution's step scores.
Output files: ``results.json``, ``results.md``, ``predictions.jsonl`` and ``results.png``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from vlreward.service.backends.base import Backend
from vlreward.service.media import MediaPolicy
from vlreward.service.model.checkpoint import checkpoint_hash, model_name
from vlreward.service.model.formatting import format_judged_orders
from vlreward.service.prepare import load_images, prepare_request_sample, prepare_sample
from vlreward.service.reference import pair_calibration, read_reference
from vlreward.service.schemas import Sample
from vlreward.service.steps import as_one_step
from vlreward.training.benchmarks import COLUMNS, EvalPair, load_pairs, tables
from vlreward.training.data.schema import PreferenceRecord, read_records
from vlreward.training.data.synthetic import HELDOUT_PER_CATEGORY, SYNTHETIC_SEED, generate
from vlreward.training.pair_metrics import pairwise_accuracy, score_pairs
from vlreward.training.step_benchmarks import STEP_BENCHMARKS, StepItem, load_step_items, step_tables


class OneHead:
    """A multi-head model's backend seen as a one-head model: its scores are ``head``'s (None: the default
    head's). Evaluation and the accuracy tables read one score per response."""

    heads = None

    def __init__(self, backend: Backend, head: str | None = None):
        if backend.heads is None:
            raise ValueError(f"{backend.model_dir}: one head; there is no head to choose")
        if head is not None and head not in backend.heads.names:
            raise ValueError(
                f"{backend.model_dir} has no head {head!r}; its heads are {', '.join(backend.heads.names)}"
            )
        self.backend, self.head = backend, head or backend.heads.default
        self.index = backend.heads.index(self.head)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

    def score_sync(self, samples: list) -> list[float]:
        return [values[self.index] for values in self.backend.score_sync(samples)]


def one_head(backend: Backend, head: str | None) -> Any:
    """``backend`` scoring one head (:class:`OneHead`) when it is a multi-head model's; else itself (``head``
    must then be None)."""
    if backend.heads is None and head is None:
        return backend
    return OneHead(backend, head)


def score_records(
    backend: Backend, records: list[PreferenceRecord], root: Path, counterfactual: bool = False
) -> list[tuple[float, float]]:
    """(chosen, rejected) scores per record through a service backend; with ``counterfactual`` the image
    is swapped for the one matching the rejected response (``meta["counter_image"]``). A process model scores
    each response as its one step (``response_as_step``): its checkpoint's aggregate, as ``/compare`` uses."""
    policy = MediaPolicy(media_root=root)
    process = backend.process

    def formatted(record: PreferenceRecord, response: str):
        images = [record.meta["counter_image"]] if counterfactual else None
        sample = record.sample(response, root=root, images=images)
        if process is not None:
            sample = as_one_step(sample)
        return prepare_sample(sample, backend.processor, policy, step_tag=backend.step_tag)

    def as_pair(record: PreferenceRecord):
        return formatted(record, record.chosen), formatted(record, record.rejected)

    if backend.judge is not None and backend.judge.compares:
        samples = []
        for record in records:
            images = [record.meta["counter_image"]] if counterfactual else None
            samples += [
                record.sample(response, root=root, images=images) for response in (record.chosen, record.rejected)
            ]
        values = judge_preferences(backend, samples, policy)
        return list(zip(values[0::2], values[1::2], strict=True))
    if process is None:
        return score_pairs(backend.score_sync, records, as_pair, progress=True)

    def aggregates(samples: list) -> list[float]:
        return [process.aggregate_of(process.step_scores(raw)) for raw in backend.score_sync(samples)]

    return score_pairs(aggregates, records, as_pair, progress=True)


def judge_preferences(
    backend: Backend, samples: list[Sample], policy: MediaPolicy, batch_pairs: int = 8
) -> list[float]:
    """Samples in twos (A, B of a pair: the same prompt and images) -> P(A better), P(B better) in turn: the
    judge asked in both orders, debiased, as ``/compare`` answers."""
    judge = backend.judge
    values: list[float] = []
    for start in tqdm(range(0, len(samples), 2 * batch_pairs), desc="judging", unit="batch", leave=False):
        chunk = samples[start : start + 2 * batch_pairs]
        questions = []
        for a, b in zip(chunk[0::2], chunk[1::2], strict=True):
            images = load_images(a.image_refs(), a.image_params(), policy, 1 << 30, None)
            questions += format_judged_orders(a, b, images, backend.processor, judge)
        logits = backend.score_sync(questions)
        for start_pair in range(0, len(logits), 2):
            prob = judge.prob_a(logits[start_pair : start_pair + 2])
            values += [prob, 1.0 - prob]
    return values


def _table_columns(results: dict[str, Any]) -> list[tuple[str, float]]:
    """(label, value) cells of the headline table, in the benchmark paper's layout."""
    categories = results["categories"]
    if results["benchmark"] == "synthetic-bon":  # one column per aggregate
        return list(categories.items())
    if results["benchmark"] in STEP_BENCHMARKS:  # the benchmark's own order; then its headline figure
        headline = "Avg. F1" if results["benchmark"] == "processbench" else "Overall"
        return [*categories.items(), (headline, results["overall"])]
    names = [n for n in COLUMNS.get(results["benchmark"], []) if n in categories]
    names += [n for n in sorted(categories) if n not in names]
    cells = [(n, categories[n]) for n in names]
    if results["benchmark"] == "rewardbench":
        cells.append(("Avg", results["macro"]))
        if "weighted_2_2_2_2_1" in results:
            cells.append(("Avg 2/2/2/2/1", results["weighted_2_2_2_2_1"]))
    else:
        cells += [("Overall", results["overall"]), ("Macro", results["macro"])]
    return cells


def write_results(output_dir: Path, results: dict[str, Any]) -> None:
    """results.json, results.md (the table) and results.png."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (output_dir / "results.md").write_text(
        f"# {results['benchmark']} — {results['model']}\n\n" + results_markdown(results)
    )
    label = {"synthetic-bon": "best-of-N top-1 accuracy (%)"}.get(
        results["benchmark"], "F1 (%)" if results["benchmark"] in STEP_BENCHMARKS else "pairwise accuracy (%)"
    )
    _plot(_table_columns(results), f"{results['benchmark']}: {results['model']}", output_dir / "results.png", label)


def results_markdown(results: dict[str, Any]) -> str:
    """The accuracy table of a results.json, with its pair count, ties and extra figures (results.md; the
    docs' tables are generated from it too)."""
    cells = _table_columns(results)
    lines = [
        "| " + " | ".join(label for label, _ in cells) + " |",
        "|" + "---|" * len(cells),
        "| " + " | ".join(f"{100 * value:.1f}" for _, value in cells) + " |",
        "",
        f"{results['n']} pairs; ties (counted wrong): {results.get('ties', 0)}."
        if results.get("unit", "pairs") == "pairs"
        else f"{results['n']} {results['unit']}"
        + (f"; threshold {results['threshold']:g}" if "threshold" in results else "")
        + (f" (chosen on {results['threshold_from']})" if results.get("threshold_from") else ""),
    ]
    for name, value in results.get("subsets", {}).items():
        lines.append(f"- {name}: {100 * value:.1f}")
    for key, value in results.items():
        if key.startswith("extra_"):
            lines.append(f"{key.removeprefix('extra_').replace('_', ' ')}: {value}")
    return "\n".join(lines) + "\n"


def _plot(cells: list[tuple[str, float]], title: str, path: Path, label: str = "pairwise accuracy (%)") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [label for label, _ in cells]
    values = [100 * value for _, value in cells]
    figure, axis = plt.subplots(figsize=(max(4, 1.2 * len(names)), 3.5))
    bars = axis.bar(names, values, color="#4c72b0")
    axis.bar_label(bars, fmt="%.1f", fontsize=8)
    axis.set_ylim(0, 105)
    axis.set_ylabel(label)
    axis.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def evaluate_synthetic(backend: Any, model_dir: Path, output_dir: Path, seed: int | None = None) -> dict[str, Any]:
    """Our held-out synthetic set (regenerated from its seed): per-category accuracy, plus the image-swap
    check on hallucination pairs (with the image matching the rejected response, is it preferred?)."""

    with tempfile.TemporaryDirectory(prefix="vlreward-heldout-") as folder:
        root = Path(folder)
        generate(root, HELDOUT_PER_CATEGORY, SYNTHETIC_SEED if seed is None else seed, "heldout", counterfactuals=True)
        records = list(read_records(root))
        scores = score_records(backend, records, root)
        swapped_records = [r for r in records if r.category == "hallucination"]
        swapped = score_records(backend, swapped_records, root, counterfactual=True)
    results = {
        "benchmark": "synthetic",
        "model": model_name(model_dir),
        "checkpoint_hash": checkpoint_hash(model_dir),
        **pairwise_accuracy([r.category for r in records], scores),
    }
    results["extra_image_swap_hallucination"] = sum(r > c for c, r in swapped) / max(1, len(swapped))
    results["calibration"] = pair_calibration(scores, **calibration_of(backend, model_dir))
    output_dir.mkdir(parents=True, exist_ok=True)
    with (output_dir / PREDICTIONS_FILE).open("w") as handle:
        for record, (chosen, rejected) in zip(records, scores, strict=True):
            row = {"id": record.id, "scores": [chosen, rejected], "category": record.category, "preferred": 0}
            handle.write(json.dumps(row) + "\n")
    write_results(output_dir, results)
    return results


def calibration_of(backend: Any, model_dir: Path) -> dict[str, Any]:
    """How a model's pair values read as P(chosen better) (:func:`~vlreward.service.reference.pair_calibration`'s
    keywords): a comparing judge's are probabilities; a score model's margins go through its stored T (its
    head's, for :class:`OneHead`)."""
    if backend.judge is not None and backend.judge.compares:
        return {"probabilities": True}
    reference = read_reference(model_dir, getattr(backend, "head", None))
    return {"probabilities": False, "temperature": 1.0 if reference is None else reference.temperature}


def in_process_scorer(backend: Backend, steps: bool = False) -> Callable[[list[dict]], list]:
    """Score Sample dicts (the HTTP JSON shape) with a loaded backend: raw scores, or with ``steps`` a
    process model's step scores (its activation at each tag) per sample; a judge that compares takes the
    samples as the (A, B) twos of pairs (as :func:`run_benchmark` gives them) and gives P(A), P(B) better."""
    policy = MediaPolicy()
    step_tag = backend.step_tag if steps else None
    if backend.judge is not None and backend.judge.compares and not steps:  # samples come as (A, B) twos
        return lambda samples: judge_preferences(backend, [Sample.model_validate(s) for s in samples], policy)

    def score(samples: list[dict]) -> list:
        values = backend.score_sync([prepare_request_sample(s, backend.processor, policy, step_tag) for s in samples])
        return [backend.process.step_scores(v) for v in values] if steps else values

    return score


def evaluate_best_of_n(backend: Any, model_dir: Path, output_dir: Path, seed: int | None = None) -> dict[str, Any]:
    """Best-of-N on the synthetic set of :mod:`vlreward.training.best_of_n`: every aggregate's top-1
    accuracy, with each candidate's step scores as predictions."""
    from vlreward.training.best_of_n import BON_PER_CATEGORY, BON_SEED, bon_groups, bon_tables

    if backend.process is None:
        raise ValueError(f"{model_dir} is not a process model: best-of-N aggregates step scores")
    with tempfile.TemporaryDirectory(prefix="vlreward-bon-") as folder:
        root = Path(folder)
        groups = bon_groups(root, BON_PER_CATEGORY, BON_SEED if seed is None else seed)
        records = [record for group in groups for record in group]
        policy = MediaPolicy(media_root=root)
        step_scores = {}
        for start in tqdm(range(0, len(records), 48), desc="synthetic-bon", unit="batch"):
            chunk = records[start : start + 48]
            formatted = [prepare_sample(r.sample(root=root), backend.processor, policy, step_tag=backend.step_tag)
                         for r in chunk]  # fmt: skip
            for record, logits in zip(chunk, backend.score_sync(formatted), strict=True):
                step_scores[record.id] = backend.process.step_scores(logits)
    results = {"model": model_name(model_dir), "checkpoint_hash": checkpoint_hash(model_dir)}
    results |= bon_tables(groups, step_scores)
    output_dir.mkdir(parents=True, exist_ok=True)
    with (output_dir / PREDICTIONS_FILE).open("w") as handle:
        for record in records:
            row = {"id": record.id, "category": record.category, "first_error": record.first_error,
                   "step_scores": step_scores[record.id]}  # fmt: skip
            handle.write(json.dumps(row) + "\n")
    write_results(output_dir, results)
    return results


PREDICTIONS_FILE = "predictions.jsonl"


def read_predictions(path: Path) -> dict[str, dict]:
    """Saved per-item rows by id (a partial file from an interrupted run is fine)."""
    rows = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by an interruption
                continue
            rows[row["id"]] = row
    return rows


def score_resumably(
    items: list, output_dir: Path, desc: str, batch: int, rows_of: Callable[[list], list[dict]]
) -> dict[str, dict]:
    """Every item's prediction row by id, reusing the rows ``predictions.jsonl`` already holds (an
    interrupted run resumes): ``rows_of`` scores a chunk of the others, whose rows are appended as they come."""
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / PREDICTIONS_FILE
    done = read_predictions(path)
    todo = [item for item in items if item.id not in done]
    with path.open("a") as handle, tqdm(total=len(items), initial=len(items) - len(todo), desc=desc) as bar:
        for start in range(0, len(todo), batch):
            chunk = todo[start : start + batch]
            for row in rows_of(chunk):
                done[row["id"]] = row
                handle.write(json.dumps(row) + "\n")
            handle.flush()
            bar.update(len(chunk))
    return done


def run_benchmark(
    benchmark: str,
    data: Path,
    output_dir: Path,
    score_samples: Callable[[list[dict]], list[float]],
    model: str,
    checkpoint: str | None,
    limit: int | None = None,
    batch_pairs: int = 16,
    calibration: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score a benchmark's pairs (resuming from saved predictions), then write its tables; with
    ``calibration`` (:func:`calibration_of`) also the ECE of P(preferred better)."""

    def rows_of(chunk: list[EvalPair]) -> list[dict]:  # a pair's two samples in turn (judges rely on it)
        values = score_samples([sample for pair in chunk for sample in pair.samples()])
        return [{"id": pair.id, "scores": values[2 * index : 2 * index + 2], "category": pair.category,
                 "preferred": pair.preferred, "subset": pair.subset} for index, pair in enumerate(chunk)]  # fmt: skip

    pairs = load_pairs(benchmark, data)[:limit]
    done = score_resumably(pairs, output_dir, benchmark, batch_pairs, rows_of)
    results = tables(benchmark, pairs, {p.id: done[p.id]["scores"] for p in pairs})
    results = {"benchmark": benchmark, "model": model, "checkpoint_hash": checkpoint, **results}
    if calibration is not None:
        values = [done[p.id]["scores"] for p in pairs]
        preferred = [(v[p.preferred], v[1 - p.preferred]) for v, p in zip(values, pairs, strict=True)]
        results["calibration"] = pair_calibration(preferred, **calibration)
    write_results(output_dir, results)
    return results


def run_step_benchmark(
    benchmark: str,
    data: Path,
    output_dir: Path,
    score_steps: Callable[[list[dict]], list[list[float]]],
    model: str,
    checkpoint: str | None,
    step_tag: str,
    limit: int | None = None,
    threshold_split: str | None = None,
    batch: int = 16,
) -> dict[str, Any]:
    """Score a process benchmark's solutions (``score_steps``: Sample dicts -> each one's step scores, the
    model's activation), resuming from saved predictions, then write its tables."""

    def rows_of(chunk: list[StepItem]) -> list[dict]:
        scored = score_steps([item.sample(step_tag) for item in chunk])
        return [{"id": item.id, "category": item.category, "step_scores": step_scores, **item.answer()}
                for item, step_scores in zip(chunk, scored, strict=True)]  # fmt: skip

    items = load_step_items(benchmark, data)[:limit]
    done = score_resumably(items, output_dir, benchmark, batch, rows_of)
    results = step_tables(benchmark, items, {i.id: done[i.id]["step_scores"] for i in items}, threshold_split)
    results = {"benchmark": benchmark, "model": model, "checkpoint_hash": checkpoint, **results}
    write_results(output_dir, results)
    return results


def recompute(
    benchmark: str, predictions: Path, output_dir: Path, model: str = "predictions", threshold_split: str | None = None
) -> dict[str, Any]:
    """All tables again from saved per-item scores; no model needed."""

    rows = list(read_predictions(predictions).values())
    if benchmark in STEP_BENCHMARKS:
        items = [StepItem(id=r["id"], category=r["category"], prompt="", steps=[""] * len(r["step_scores"]),
                          label=r.get("label"), labels=r.get("labels")) for r in rows]  # fmt: skip
        results = {"benchmark": benchmark, "model": model, "checkpoint_hash": None}
        results |= step_tables(benchmark, items, {r["id"]: r["step_scores"] for r in rows}, threshold_split)
        write_results(output_dir, results)
        return results
    pairs = [
        EvalPair(id=r["id"], category=r["category"], prompt="", responses=("", ""), preferred=r.get("preferred", 0),
                 subset=r.get("subset"))
        for r in rows
    ]  # fmt: skip
    results = {"benchmark": benchmark, "model": model, "checkpoint_hash": None}
    results |= tables(benchmark, pairs, {r["id"]: r["scores"] for r in rows})
    write_results(output_dir, results)
    return results
