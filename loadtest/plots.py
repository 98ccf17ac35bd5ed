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


def write_results(
    output: Path, name: str, report: dict, plot: Callable[[dict, Path], None], table: Callable[[dict], str]
) -> None:
    """``output/name.json`` and ``output/name.png`` of a benchmark's report, and its table on stdout."""
    output.mkdir(parents=True, exist_ok=True)
    (output / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, output / f"{name}.png")
    print(table(report))
