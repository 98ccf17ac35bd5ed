"""One scale for every model: a checkpoint's reference statistics of its scores and its pairwise temperature.

Scores of different reward models live on unrelated scales. ``vlreward calibrate`` scores a reference set
(the responses of a preference dataset folder) and stores, in the checkpoint's :data:`REFERENCE_FILE`, the
scores' mean, standard deviation and quantiles, the reference data's hash and a ``version`` (a hash of all
of it: a training run can tell when the scale moved). It also fits a temperature T on held-out pairs, so
that P(a > b) = sigmoid((s_a - s_b) / T) is calibrated (fit and measured on disjoint halves; expected
calibration error with :data:`ECE_BINS` equal-width bins).

- ``normalize: "zscore"`` returns (s - mean) / std (:func:`zscore`) and says which version it used.
- ``/compare`` with a scalar or process model divides the score difference by T when the checkpoint has one.

Torch-free: JSON and arithmetic.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from vlreward.service.kinds import sigmoid

REFERENCE_FILE = "vlreward_reference.json"
"""In a checkpoint: its reference statistics (and temperature), written by ``vlreward calibrate``."""
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
ECE_BINS = 15
Normalize = Literal["none", "zscore"]
"""How /score and /rank return scores: raw, or as z-scores of the model's reference statistics."""


@dataclass(frozen=True)
class Reference:
    """A model's score statistics over a reference set, and its pairwise temperature."""

    mean: float
    std: float
    quantiles: dict[str, float]
    count: int
    data_hash: str
    """sha256 of the reference set's records (the folder's ``records.jsonl``)."""
    temperature: float = 1.0
    """T in P(a > b) = sigmoid((s_a - s_b) / T); 1.0 when not fitted."""
    calibration: dict = field(default_factory=dict)
    """How T was fitted and what it changed: pairs fitted and measured, ECE before and after."""

    @property
    def version(self) -> str:
        """A hash of everything above: equal versions mean the same scale."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def describe(self) -> dict:
        """What /info shows."""
        return {"mean": self.mean, "std": self.std, "version": self.version, "temperature": self.temperature,
                "count": self.count}  # fmt: skip

    def zscore(self, score: float) -> float:
        return (score - self.mean) / self.std


def statistics_of(scores: Sequence[float], data_hash: str) -> Reference:
    """The reference statistics of ``scores`` (at least two, not all equal)."""
    if len(scores) < 2:
        raise ValueError("reference statistics need at least two scores")
    std = statistics.pstdev(scores)
    if std == 0:
        raise ValueError("every reference score is the same: no scale to normalise by")
    ordered = sorted(scores)
    quantiles = {f"{q:g}": ordered[min(len(ordered) - 1, int(q * len(ordered)))] for q in QUANTILES}
    return Reference(statistics.fmean(scores), std, quantiles, len(scores), data_hash)


def read_references(directory: str | Path) -> dict[str | None, Reference]:
    """A checkpoint's reference statistics by head: ``{None: ...}`` for a one-head model, ``{head: ...}`` for
    a multi-head model (every head its own scale and temperature); empty when it has none."""
    path = Path(directory) / REFERENCE_FILE
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    if "heads" in data:
        return {head: _reference(stats) for head, stats in data["heads"].items()}
    return {None: _reference(data)}


def _reference(data: dict) -> Reference:
    data = dict(data)
    data.pop("version", None)  # derived; written for people reading the file
    return Reference(**data)


def read_reference(directory: str | Path, head: str | None = None) -> Reference | None:
    """A checkpoint's reference statistics (a multi-head model's: ``head``'s), or None when it has none."""
    return read_references(directory).get(head)


def write_reference(directory: str | Path, reference: Reference | dict[str, Reference]) -> Path:
    """Store a model's reference statistics (a multi-head model's: a mapping head -> statistics)."""
    path = Path(directory) / REFERENCE_FILE
    shown = lambda r: asdict(r) | {"version": r.version}  # noqa: E731
    data = {"heads": {h: shown(r) for h, r in reference.items()}} if isinstance(reference, dict) else shown(reference)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def file_hash(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# -- calibration --------------------------------------------------------------------------------------------


def reliability(probs: Sequence[float], outcomes: Sequence[bool], bins: int = ECE_BINS) -> list[dict]:
    """Per equal-width bin of the predicted probability (1.0 in the last): its range, count, mean predicted
    probability and observed frequency (the reliability plot)."""
    inside: list[list[tuple[float, bool]]] = [[] for _ in range(bins)]
    for prob, outcome in zip(probs, outcomes, strict=True):
        inside[min(bins - 1, int(prob * bins))].append((prob, outcome))
    return [
        {"low": b / bins, "high": (b + 1) / bins, "count": len(rows),
         "confidence": statistics.fmean(p for p, _ in rows) if rows else None,
         "frequency": statistics.fmean(float(o) for _, o in rows) if rows else None}
        for b, rows in enumerate(inside)
    ]  # fmt: skip


def expected_calibration_error(probs: Sequence[float], outcomes: Sequence[bool], bins: int = ECE_BINS) -> float:
    """Σ_b (n_b / n) |frequency_b - confidence_b| over the bins of :func:`reliability`."""
    rows = [row for row in reliability(probs, outcomes, bins) if row["count"]]
    return math.fsum(row["count"] / len(probs) * abs(row["frequency"] - row["confidence"]) for row in rows)


def oriented(chosen: Sequence[float]) -> tuple[list[float], list[bool]]:
    """P(chosen > rejected) of pairs as the questions a user asks: every second pair the other way round
    (asked P(rejected > chosen) = 1 - P, which did not happen), so that the outcomes are not all "A is better"
    and calibration can be measured. Returns the asked probabilities and whether A was better."""
    asked = [p if k % 2 == 0 else 1.0 - p for k, p in enumerate(chosen)]
    return asked, [k % 2 == 0 for k in range(len(chosen))]


def margin_questions(margins: Sequence[float], temperature: float = 1.0) -> tuple[list[float], list[bool]]:
    """Chosen-minus-rejected margins as :func:`oriented` questions, P = sigmoid(margin / T)."""
    return oriented([sigmoid(m / temperature) for m in margins])


def fit_temperature(margins: Sequence[float]) -> float:
    """The T > 0 minimising the negative log-likelihood of sigmoid(margin / T) over chosen-minus-rejected
    margins (golden-section search on log T; the likelihood is unimodal in it)."""
    if not margins:
        raise ValueError("fitting a temperature needs pairs")

    def nll(log_t: float) -> float:
        t = math.exp(log_t)
        return math.fsum(math.log1p(math.exp(-m / t)) if m / t > -30 else -m / t for m in margins)

    low, high = math.log(1e-3), math.log(1e3)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    for _ in range(100):
        if nll(a) < nll(b):
            high, b = b, a
            a = high - ratio * (high - low)
        else:
            low, a = a, b
            b = low + ratio * (high - low)
    return math.exp((low + high) / 2)


def calibrated(reference: Reference, margins: Sequence[float], split: float = 0.5) -> Reference:
    """``reference`` with T fitted on the first ``split`` of the pairs' margins and measured (ECE before and
    after, as pairs asked in alternating orientation) on the rest: disjoint halves."""
    cut = int(len(margins) * split)
    fit, measure = list(margins[:cut]), list(margins[cut:])
    if not fit or not measure:
        raise ValueError(f"calibration needs pairs to fit and to measure; got {len(margins)}")
    temperature = fit_temperature(fit)
    before = expected_calibration_error(*margin_questions(measure))
    after = expected_calibration_error(*margin_questions(measure, temperature))
    calibration = {"pairs_fitted": len(fit), "pairs_measured": len(measure), "ece_before": before,
                   "ece_after": after, "bins": ECE_BINS}  # fmt: skip
    return Reference(**(asdict(reference) | {"temperature": temperature, "calibration": calibration}))


def pair_calibration(pairs: Sequence[tuple[float, float]], probabilities: bool, temperature: float = 1.0) -> dict:
    """How calibrated a model's P(chosen > rejected) is over (chosen, rejected) values: a judge's
    probabilities as they are (``probabilities``), a score model's sigmoid((s_c - s_r) / T). ECE over the pairs
    asked in alternating orientation (:func:`oriented`), :data:`ECE_BINS` bins."""
    chosen = [c if probabilities else sigmoid((c - r) / temperature) for c, r in pairs]
    return {"ece": expected_calibration_error(*oriented(chosen)), "bins": ECE_BINS, "pairs": len(chosen),
            "temperature": None if probabilities else temperature}  # fmt: skip
