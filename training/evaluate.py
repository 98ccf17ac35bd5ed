"""Pairwise evaluation: per-item scores, accuracy tables (markdown + JSON), a PNG per category.

A pair is correct only when the preferred response scores strictly higher; ties count as wrong.
Output files follow DESIGN.md ("Evaluation outputs").
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from tqdm import tqdm

from service.media import MediaPolicy
from service.model.checkpoint import checkpoint_hash, model_name
from service.prepare import prepare_sample
from training.data.schema import PreferenceRecord, read_records


def score_records(
    backend: Any, records: list[PreferenceRecord], root: Path, counterfactual: bool = False, batch_pairs: int = 16
) -> list[tuple[float, float]]:
    """(chosen, rejected) scores per record; with ``counterfactual`` the image is swapped for the one
    matching the rejected response (``meta["counter_image"]``)."""
    policy = MediaPolicy(media_root=root)
    scores: list[tuple[float, float]] = []
    for start in tqdm(range(0, len(records), batch_pairs), desc="scoring", unit="batch", leave=False):
        chunk = records[start : start + batch_pairs]
        formatted = []
        for record in chunk:
            images = [record.meta["counter_image"]] if counterfactual else None
            for response in (record.chosen, record.rejected):
                sample = record.sample(response, root=root, images=images)
                formatted.append(prepare_sample(sample, backend.processor, policy))
        values = backend.score_sync(formatted)
        scores += [(values[2 * i], values[2 * i + 1]) for i in range(len(chunk))]
    return scores


def accuracy_tables(categories: list[str], scores: list[tuple[float, float]]) -> dict[str, Any]:
    """Overall (micro) accuracy, per-category accuracy, macro mean over categories, and ties."""
    per: dict[str, list[bool]] = {}
    ties = 0
    for category, (chosen, rejected) in zip(categories, scores, strict=True):
        per.setdefault(category, []).append(chosen > rejected)
        ties += chosen == rejected
    correct = [c for values in per.values() for c in values]
    table = {name: sum(v) / len(v) for name, v in sorted(per.items())}
    return {
        "n": len(correct),
        "overall": sum(correct) / max(1, len(correct)),
        "macro": sum(table.values()) / max(1, len(table)),
        "categories": table,
        "category_counts": {name: len(v) for name, v in sorted(per.items())},
        "ties": ties,
    }


def write_results(output_dir: Path, results: dict[str, Any], predictions: list[dict]) -> None:
    """results.json, results.md (the table), predictions.jsonl and results.png."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    with (output_dir / "predictions.jsonl").open("w") as handle:
        for row in predictions:
            handle.write(json.dumps(row) + "\n")
    names = list(results["categories"])
    lines = [
        f"# {results['benchmark']} — {results['model']}",
        "",
        "| " + " | ".join([*names, "Overall", "Macro"]) + " |",
        "|" + "---|" * (len(names) + 2),
        "| "
        + " | ".join(f"{100 * results['categories'][n]:.1f}" for n in names)
        + f" | {100 * results['overall']:.1f} | {100 * results['macro']:.1f} |",
        "",
        f"{results['n']} pairs; ties (counted wrong): {results.get('ties', 0)}.",
    ]
    for key, value in results.items():
        if key.startswith("extra_"):
            lines.append(f"{key.removeprefix('extra_').replace('_', ' ')}: {value}")
    (output_dir / "results.md").write_text("\n".join(lines) + "\n")
    _plot(results, output_dir / "results.png")


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [*results["categories"], "Overall", "Macro"]
    values = [*(100 * v for v in results["categories"].values()), 100 * results["overall"], 100 * results["macro"]]
    figure, axis = plt.subplots(figsize=(max(4, 1.2 * len(names)), 3.5))
    bars = axis.bar(names, values, color=["#4c72b0"] * (len(names) - 2) + ["#dd8452", "#55a868"])
    axis.bar_label(bars, fmt="%.1f", fontsize=8)
    axis.set_ylim(0, 105)
    axis.set_ylabel("pairwise accuracy (%)")
    axis.set_title(f"{results['benchmark']}: {results['model']}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def evaluate_synthetic(backend: Any, model_dir: Path, output_dir: Path, seed: int | None = None) -> dict[str, Any]:
    """Our held-out synthetic set (regenerated from its seed): per-category accuracy, plus the image-swap
    check on hallucination pairs (with the image matching the rejected response, is it preferred?)."""
    from training.bootstrap import HELDOUT_PER_CATEGORY, SYNTHETIC_SEED
    from training.data.synthetic import generate

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
        **accuracy_tables([r.category for r in records], scores),
    }
    results["extra_image_swap_hallucination"] = sum(r > c for c, r in swapped) / max(1, len(swapped))
    predictions = [{"id": r.id, "scores": [c, rj]} for r, (c, rj) in zip(records, scores, strict=True)]
    write_results(output_dir, results, predictions)
    return results
