"""The docs' figure tables are what `python -m loadtest.report` writes from the results files."""

from __future__ import annotations

import json

from loadtest import report


def test_every_generated_table_in_the_docs_matches_its_results_file():
    pages = report.pages()
    marked = [name for page in pages for _, _, name, _, _ in report.MARKED.findall(page.read_text())]
    assert {
        "suite_bench.json",
        "suite_tiny.json",
        "gpu_check_7b.ab-off.json+gpu_check_7b.cudnn.json",
        "bootstrap_sweep.json",
        "training/results/default-model-synthetic/results.json",
    } <= set(marked)
    for page in pages:
        text = page.read_text()
        assert report.render(text) == text, f"{page.name}: run `python -m loadtest.report` and commit"


def test_a_changed_result_changes_its_table():
    bench = json.loads((report.RESULTS / "suite_bench.json").read_text())
    before = report.suite_table(bench)
    bench["comparisons"][2]["median_ratio"] = 0.5
    bench["comparisons"][2]["target_met"] = False
    after = report.suite_table(bench)
    quartiles = report.interquartile(bench["comparisons"][2]["ratios"])
    assert f"**0.500** | {quartiles} | 1.27–1.39 | 5 | ≥ 1.20 ✗" in after and after != before  # 5 rounds, no seconds


def test_the_rounds_column_shows_the_shortest_sides_seconds_where_recorded():
    row = {"ratios": [1.0] * 7, "round_seconds": [[10.4, 12.0]] * 6 + [[11.0, None]]}
    assert report.rounds(row) == "7 × ≥ 10 s" and report.rounds({"ratios": [1.0, 1.1]}) == "2"


def test_the_interquartile_range_is_the_middle_half_of_the_rounds():
    assert report.interquartile([1.0, 2.0, 3.0, 4.0, 5.0]) == "2.00–4.00"
    assert report.interquartile([1.2]) == "—"
