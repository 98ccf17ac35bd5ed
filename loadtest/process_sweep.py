"""Benchmark: the embedded default process model's recipe over seeds and torch threads.

    python -m loadtest.process_sweep --seeds 0-2 --threads 1,2

Every run is the real pipeline as a user runs it (`vlreward bootstrap --kind process --seed S --threads T`
in a fresh home: the default scalar model of that seed, then the process model fine-tuned from it); its
held-out figures are the ones the bootstrap measured on its own held-out split (step-level macro-F1 and
first-error accuracy, in the model's ``vlreward_training.json``). Prints one row per run and min / median
/ max per figure, and writes JSON + PNG.
"""

from __future__ import annotations

import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import typer

from loadtest.bootstrap_sweep import VLREWARD, _ints, run_by_threads, write_report

app = typer.Typer(add_completion=False)

TARGETS = {"macro_f1": 0.90, "first_error_accuracy": 0.90}
"""The issue's targets, met by the minimum over the runs."""
FIGURES = tuple(TARGETS)


def run_one(seed: int, threads: int, workdir: Path) -> dict:
    """Bootstrap one process model in its own home; returns its held-out figures."""
    home = workdir / f"seed{seed}-t{threads}"
    started = time.monotonic()
    command = [VLREWARD, "bootstrap", "--kind", "process", "--home", str(home), "--seed", str(seed)]
    built = subprocess.run([*command, "--threads", str(threads)], capture_output=True, text=True)
    wall = time.monotonic() - started
    if built.returncode != 0:
        return {"seed": seed, "threads": threads, "error": built.stderr[-2000:]}
    heldout = json.loads((home / "models" / "default-process" / "vlreward_training.json").read_text())["heldout"]
    return {
        "seed": seed,
        "threads": threads,
        "wall_s": round(wall, 1),
        **{name: heldout[name] for name in FIGURES},
        "categories": heldout["categories"],
    }


def summarise(runs: list[dict]) -> dict:
    """min / median / max of every figure over the runs that finished."""
    done = [r for r in runs if "error" not in r]
    figures = {name: [r[name] for r in done] for name in (*FIGURES, "wall_s")}
    return {name: {"min": min(v), "median": statistics.median(v), "max": max(v)} for name, v in figures.items() if v}


def runs_table(runs: list[dict]) -> str:
    """One row per run; a value below its target is marked ✗."""
    lines = ["| seed | threads | step macro-F1 | first-error accuracy | wall s |", "|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (r["seed"], r["threads"])):
        if "error" in r:
            lines.append(f"| {r['seed']} | {r['threads']} | failed | | |")
            continue
        cells = " | ".join(f"{r[name]:.3f}" + (" ✗" if r[name] < TARGETS[name] else "") for name in FIGURES)
        lines.append(f"| {r['seed']} | {r['threads']} | {cells} | {r['wall_s']:.0f} |")
    return "\n".join(lines) + "\n"


def summary_table(summary: dict) -> str:
    lines = ["| figure | min | median | max | target |", "|---|---|---|---|---|"]
    for name in FIGURES:
        s = summary[name]
        lines.append(f"| {name} | {s['min']:.3f} | {s['median']:.3f} | {s['max']:.3f} | ≥ {TARGETS[name]:.2f} |")
    return "\n".join(lines) + "\n"


def _plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in runs if "error" not in r]
    figure, axis = plt.subplots(figsize=(6, 4))
    for index, name in enumerate(FIGURES):
        axis.scatter([index] * len(done), [100 * r[name] for r in done], alpha=0.6)
        axis.plot([index - 0.3, index + 0.3], [100 * TARGETS[name]] * 2, color="grey", linestyle="--")
    axis.set_xticks(range(len(FIGURES)), FIGURES)
    axis.set_ylabel("held-out (%)")
    axis.set_title(f"default process model over {len(done)} bootstrap runs (seeds x threads)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


@app.command()
def main(
    seeds: str = typer.Option("0-2", help="Seeds: 0-2 or 0,2."),
    threads: str = typer.Option("1,2", help="torch threads per run."),
    output: Path = typer.Option(Path("loadtest/results/process_sweep"), help="JSON and PNG path (no suffix)."),
) -> None:
    print("command:", " ".join(["python -m loadtest.process_sweep", *sys.argv[1:]]), flush=True)
    grid = list(itertools.product(_ints(seeds), _ints(threads)))
    workdir = Path(tempfile.mkdtemp(prefix="process-sweep-"))
    runs = run_by_threads(grid, lambda point: point[1], lambda s, t: run_one(s, t, workdir))
    summary = summarise(runs)
    print("\n" + runs_table(runs))
    print(summary_table(summary))
    passed = sum("error" not in r and all(r[n] >= TARGETS[n] for n in FIGURES) for r in runs)
    write_report(output, TARGETS, runs, summary, passed, _plot)


if __name__ == "__main__":
    app()
