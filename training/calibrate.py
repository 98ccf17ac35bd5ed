"""``vlreward calibrate``: a reward model's reference statistics and pairwise temperature, stored in its
checkpoint (:mod:`vlreward.service.reference`), with a reliability plot before and after.

Every response of a preference dataset folder (chosen and rejected) is scored in process; their mean, std
and quantiles are the model's scale. The pairs (ties dropped), in an order fixed by their ids' hashes, are
split in two halves: T is fitted on the first and the expected calibration error measured on the second,
before (T = 1) and after. A process model scores each response as its one step, and its statistics and T
are of its checkpoint's aggregate, the score its ``/compare`` compares.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from vlreward.service.reference import (
    ECE_BINS,
    Reference,
    calibrated,
    file_hash,
    margin_questions,
    reliability,
    statistics_of,
    write_reference,
)
from vlreward.training.data.schema import RECORDS_FILE, read_records

RESULTS_FILE = "calibration.json"


def calibrate(model_dir: Path, data_dir: Path, output: Path | None = None, base: Path | None = None) -> dict[str, Any]:
    """Score ``data_dir``'s pairs with the model at ``model_dir`` (a scalar or process model), store its reference
    statistics and temperature in the checkpoint, and write ``calibration.json`` + ``calibration.png``
    (the reliability diagram before and after) to ``output`` (default: the checkpoint). A multi-head model
    gets statistics per head, each head's T fitted on the pairs labelled for it
    (:func:`~vlreward.training.multihead.pair_labels`: unlabelled pairs are the default head's). A LoRA adapter
    is scored on its ``base`` and gets its own statistics (in its folder)."""
    from vlreward.service.backends.transformers import TransformersBackend
    from vlreward.service.model.lora import is_adapter
    from vlreward.training.evaluate import score_records
    from vlreward.training.multihead import pair_labels

    if is_adapter(model_dir):
        from vlreward.service.backends.adapter import AdapterBackend

        if base is None:
            raise ValueError(f"{model_dir} is a LoRA adapter: give its base (--base)")
        backend = AdapterBackend(TransformersBackend(base, dtype="float32", device="cpu"), model_dir, model_dir.name)
    else:
        backend = TransformersBackend(model_dir, dtype="float32", device="cpu")
    if backend.judge is not None:  # a judge's /compare gives probabilities itself (vlreward eval reports their ECE)
        raise ValueError(f"{model_dir}: vlreward calibrate takes a scalar or process reward model, not a judge")
    records = sorted(
        (r for r in read_records(data_dir) if not r.tie), key=lambda r: hashlib.sha256(r.id.encode()).hexdigest()
    )
    pairs = score_records(backend, records, data_dir)
    data_hash = file_hash(data_dir / RECORDS_FILE)
    heads = backend.heads
    if heads is None:
        reference, results = calibrated_scale(pairs, pairs, data_hash)
        write_reference(model_dir, reference)
    else:
        labels = [pair_labels(record, heads) for record in records]
        references, results = {}, {"heads": {}}
        for k, head in enumerate(heads.names):
            own = [(c[k], r[k]) for (c, r), (pref, ratings) in zip(pairs, labels, strict=True)
                   if pref == k or ratings[k] > ratings[len(heads.names) + k]]  # fmt: skip
            everything = [(c[k], r[k]) for c, r in pairs]
            references[head], results["heads"][head] = calibrated_scale(everything, own, data_hash)
        write_reference(model_dir, references)
    results = {"model": str(model_dir), "data": str(data_dir)} | results
    output = Path(output or model_dir)
    output.mkdir(parents=True, exist_ok=True)
    (output / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
    plot_reliability(results.get("heads", {"": results}), output / "calibration.png")
    return results


def calibrated_scale(
    scored: list[tuple[float, float]], preferred: list[tuple[float, float]], data_hash: str
) -> tuple[Reference, dict[str, Any]]:
    """Reference statistics over every response of ``scored`` and T fitted on (chosen, rejected) ``preferred``
    pairs' margins (first half; measured on the second), with what calibration.json shows of them."""
    reference = statistics_of([s for pair in scored for s in pair], data_hash)
    margins = [chosen - rejected for chosen, rejected in preferred]
    reference = calibrated(reference, margins)
    measured = margins[reference.calibration["pairs_fitted"] :]
    return reference, {
        "reference": reference.describe(), "quantiles": reference.quantiles, "calibration": reference.calibration,
        "reliability_before": reliability(*margin_questions(measured)),
        "reliability_after": reliability(*margin_questions(measured, reference.temperature)),
    }  # fmt: skip


def plot_reliability(by_head: dict[str, dict[str, Any]], path: Path) -> None:
    """Observed frequency against predicted probability per bin, before and after T (the diagonal: calibrated),
    one panel per head (a one-head model's: one, named "")."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(by_head), figsize=(5 * len(by_head), 5), squeeze=False)
    for axis, (head, results) in zip(axes[0], by_head.items(), strict=True):
        axis.plot([0, 1], [0, 1], color="grey", linewidth=0.8)
        calibration = results["calibration"]
        fitted = f"T = {results['reference']['temperature']:.3g}"
        for key, label in (("reliability_before", "T = 1"), ("reliability_after", fitted)):
            rows = [r for r in results[key] if r["count"]]
            ece = calibration["ece_before" if key.endswith("before") else "ece_after"]
            axis.plot([r["confidence"] for r in rows], [r["frequency"] for r in rows], marker="o",
                      label=f"{label} (ECE {ece:.3f})")  # fmt: skip
        axis.set_xlabel(f"predicted P(A > B) ({ECE_BINS} equal-width bins)")
        axis.set_ylabel("observed frequency")
        axis.set_title(f"{head + ': ' if head else ''}{calibration['pairs_measured']} held-out pairs", fontsize=9)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
