"""Plots and result files the benchmarks share."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path


def variants_by_run(series: dict[str, list[float]], xlabel: str, ylabel: str, title: str, path: Path) -> None:
    """One line per variant, its values in run order (runs that alternate the variants), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for variant, values in series.items():
        axis.plot(range(1, len(values) + 1), values, "o-", label=variant)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def series_of(report: dict, key: str = "ms_per_sample", **match: str) -> list[float]:
    """``key`` of the report's runs whose fields equal ``match``, in run order."""
    return [run[key] for run in report["runs"] if all(run[field] == value for field, value in match.items())]


def ms_per_round(report: dict, groups: tuple[str, tuple], variants: tuple[str, tuple], title: str, path: Path) -> None:
    """A benchmark's ms per sample by round, one line per (group, variant): ``groups`` and ``variants`` are
    (run field, its values)."""
    (group_field, group_values), (variant_field, variant_values) = groups, variants
    series = {
        f"{group}, {variant}": series_of(report, **{group_field: group, variant_field: variant})
        for group in group_values
        for variant in variant_values
    }
    variants_by_run(series, "round (new samples each)", "ms per sample", title, path)


def write_results(
    output: Path, name: str, report: dict, plot: Callable[[dict, Path], None], table: Callable[[dict], str]
) -> None:
    """``output/name.json`` and ``output/name.png`` of a benchmark's report, and its table on stdout."""
    output.mkdir(parents=True, exist_ok=True)
    (output / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, output / f"{name}.png")
    print(table(report))
