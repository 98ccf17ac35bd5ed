"""Reference statistics and calibration: the z-score formula, the version that names a scale, the expected
calibration error, and a temperature fit that recovers a known one and lowers the error on held-out pairs."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from vlreward.service.kinds import sigmoid
from vlreward.service.reference import (
    Reference,
    calibrated,
    expected_calibration_error,
    fit_temperature,
    read_reference,
    reliability,
    statistics_of,
    write_reference,
)


def test_statistics_and_zscores_follow_the_formula_and_the_version_names_the_scale(tmp_path):
    scores = [0.5, 1.5, 2.0, -1.0, 3.0]
    reference = statistics_of(scores, "abc")
    assert reference.mean == pytest.approx(statistics.fmean(scores))
    assert reference.std == pytest.approx(statistics.pstdev(scores))
    assert reference.zscore(2.0) == (2.0 - reference.mean) / reference.std
    write_reference(tmp_path, reference)
    assert read_reference(tmp_path) == reference and read_reference(tmp_path).version == reference.version
    assert statistics_of(scores, "abd").version != reference.version  # other reference data: another scale
    assert read_reference(tmp_path / "missing") is None
    with pytest.raises(ValueError, match="the same"):
        statistics_of([1.0, 1.0], "x")


def test_expected_calibration_error_is_the_binned_gap_between_confidence_and_frequency():
    probs, outcomes = [0.95, 0.95, 0.05, 0.55], [True, False, False, True]
    # bins of width 1/15: {0.95, 0.95} -> |0.5 - 0.95|; {0.05} -> |0 - 0.05|; {0.55} -> |1 - 0.55|
    expected = (2 * 0.45 + 0.05 + 0.45) / 4
    assert expected_calibration_error(probs, outcomes) == pytest.approx(expected)
    assert sum(row["count"] for row in reliability(probs, outcomes)) == 4
    assert expected_calibration_error([1.0], [True]) == 0.0  # 1.0 falls in the last bin


def pairs_from(true_temperature: float, n: int, seed: int) -> list[float]:
    """Chosen-minus-rejected margins of pairs whose labels follow sigmoid(s / T) for a latent margin s."""
    rng = random.Random(seed)
    margins = []
    for _ in range(n):
        s = rng.gauss(0.0, 4.0)
        margins.append(s if rng.random() < sigmoid(s / true_temperature) else -s)
    return margins


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_fitted_temperature_recovers_the_true_one_and_lowers_held_out_ece(seed):
    margins = pairs_from(3.0, 4000, seed)
    assert fit_temperature(margins[:2000]) == pytest.approx(3.0, rel=0.15)
    reference = calibrated(Reference(0.0, 1.0, {}, 2, "x"), margins)
    calibration = reference.calibration
    assert calibration["pairs_fitted"] == calibration["pairs_measured"] == 2000
    assert calibration["ece_after"] < calibration["ece_before"]
    assert reference.version != Reference(0.0, 1.0, {}, 2, "x").version  # a new T is a new scale
    assert math.isfinite(reference.temperature)


def test_pair_calibration_reads_a_judges_probabilities_as_they_are_and_a_scores_margin_through_t():
    from vlreward.service.reference import pair_calibration

    # Every pair at P(chosen) 0.9, asked in alternating orientation: bins 0.9 (all right) and 0.1 (all wrong):
    # each off by 0.1.
    assert pair_calibration([(0.9, 0.1)] * 4, probabilities=True)["ece"] == pytest.approx(0.1)
    margin = math.log(9.0)  # sigmoid(log 9) = 0.9; with T = 2 it is 0.75
    assert pair_calibration([(margin, 0.0)] * 4, probabilities=False)["ece"] == pytest.approx(0.1)
    assert pair_calibration([(margin, 0.0)] * 4, probabilities=False, temperature=2.0)["ece"] == pytest.approx(0.25)
