"""Benchmark: the recipes of the default models fine-tuned from the default scalar model (the process
model, the judge) over seeds and torch threads.

    python -m loadtest.process_sweep --seeds 0-2 --threads 1,2
    python -m loadtest.process_sweep --kind judge --seeds 0-2 --threads 2

Every run is the real pipeline as a user runs it (`vlreward bootstrap --kind KIND --seed S --threads T` in
a fresh home: the default scalar model of that seed, then the model fine-tuned from it); its held-out
figures are the ones the bootstrap measured on its own held-out split (in the model's
``vlreward_training.json``: a process model's step-level macro-F1 and first-error accuracy, a judge's
pairwise accuracy read from logits in both orders). Prints one row per run and min / median / max per
figure, and writes JSON + PNG.
"""

from __future__ import annotations

import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import typer

from loadtest.bootstrap_sweep import VLREWARD, _ints, run_by_threads, write_report

app = typer.Typer(add_completion=False)


@dataclass(frozen=True)
class Sweep:
    """One kind's sweep: where its model goes, its held-out figures' targets (met by the minimum over the
    runs), and their column names."""

    folder: str
    targets: dict[str, float]
    columns: dict[str, str]


SWEEPS = {
    "process": Sweep(
        "default-process",
        {"macro_f1": 0.90, "first_error_accuracy": 0.90},
        {"macro_f1": "step macro-F1", "first_error_accuracy": "first-error accuracy"},
    ),
    "judge": Sweep("default-judge", {"overall": 0.90}, {"overall": "pairwise accuracy (logits, both orders)"}),
}


def sweep_of(report: dict) -> Sweep:
    """The sweep a results file was written by (told by its targets)."""
    return next(sweep for sweep in SWEEPS.values() if set(sweep.targets) == set(report["targets"]))


def run_one(kind: str, seed: int, threads: int, workdir: Path) -> dict:
    """Bootstrap one model of ``kind`` in its own home; returns its held-out figures."""
    sweep = SWEEPS[kind]
    home = workdir / f"seed{seed}-t{threads}"
    started = time.monotonic()
    command = [VLREWARD, "bootstrap", "--kind", kind, "--home", str(home), "--seed", str(seed)]
    built = subprocess.run([*command, "--threads", str(threads)], capture_output=True, text=True)
    wall = time.monotonic() - started
    if built.returncode != 0:
        return {"seed": seed, "threads": threads, "error": built.stderr[-2000:]}
    heldout = json.loads((home / "models" / sweep.folder / "vlreward_training.json").read_text())["heldout"]
    return {
        "seed": seed,
        "threads": threads,
        "wall_s": round(wall, 1),
        **{name: heldout[name] for name in sweep.targets},
        "categories": heldout["categories"],
    }


def summarise(runs: list[dict], sweep: Sweep) -> dict:
    """min / median / max of every figure over the runs that finished."""
    done = [r for r in runs if "error" not in r]
    figures = {name: [r[name] for r in done] for name in (*sweep.targets, "wall_s")}
    return {name: {"min": min(v), "median": statistics.median(v), "max": max(v)} for name, v in figures.items() if v}


def runs_table(runs: list[dict], sweep: Sweep = SWEEPS["process"]) -> str:
    """One row per run; a value below its target is marked ✗."""
    columns = " | ".join(sweep.columns.values())
    lines = [f"| seed | threads | {columns} | wall s |", "|---|---|" + "---|" * len(sweep.columns) + "---|"]
    for r in sorted(runs, key=lambda r: (r["seed"], r["threads"])):
        if "error" in r:
            lines.append(f"| {r['seed']} | {r['threads']} | failed |" + " |" * len(sweep.columns))
            continue
        cells = " | ".join(
            f"{r[name]:.3f}" + (" ✗" if r[name] < target else "") for name, target in sweep.targets.items()
        )
        lines.append(f"| {r['seed']} | {r['threads']} | {cells} | {r['wall_s']:.0f} |")
    return "\n".join(lines) + "\n"


def summary_table(summary: dict, sweep: Sweep = SWEEPS["process"]) -> str:
    lines = ["| figure | min | median | max | target |", "|---|---|---|---|---|"]
    for name, target in sweep.targets.items():
        s = summary[name]
        lines.append(f"| {name} | {s['min']:.3f} | {s['median']:.3f} | {s['max']:.3f} | ≥ {target:.2f} |")
    return "\n".join(lines) + "\n"


def _plot(runs: list[dict], path: Path, kind: str = "process") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in runs if "error" not in r]
    targets = SWEEPS[kind].targets
    figure, axis = plt.subplots(figsize=(6, 4))
    for index, (name, target) in enumerate(targets.items()):
        axis.scatter([index] * len(done), [100 * r[name] for r in done], alpha=0.6)
        axis.plot([index - 0.3, index + 0.3], [100 * target] * 2, color="grey", linestyle="--")
    axis.set_xticks(range(len(targets)), list(targets))
    axis.set_ylabel("held-out (%)")
    axis.set_title(f"default {kind} model over {len(done)} bootstrap runs (seeds x threads)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


@app.command()
def main(
    kind: str = typer.Option("process", help="process or judge."),
    seeds: str = typer.Option("0-2", help="Seeds: 0-2 or 0,2."),
    threads: str = typer.Option("1,2", help="torch threads per run."),
    output: Path | None = typer.Option(
        None, help="JSON and PNG path (no suffix; default loadtest/results/KIND_sweep)."
    ),
) -> None:
    print("command:", " ".join(["python -m loadtest.process_sweep", *sys.argv[1:]]), flush=True)
    sweep = SWEEPS[kind]
    grid = list(itertools.product(_ints(seeds), _ints(threads)))
    workdir = Path(tempfile.mkdtemp(prefix=f"{kind}-sweep-"))
    runs = run_by_threads(grid, lambda point: point[1], lambda s, t: run_one(kind, s, t, workdir))
    summary = summarise(runs, sweep)
    print("\n" + runs_table(runs, sweep))
    print(summary_table(summary, sweep))
    passed = sum("error" not in r and all(r[n] >= t for n, t in sweep.targets.items()) for r in runs)
    output = output or Path(f"loadtest/results/{kind}_sweep")
    write_report(output, sweep.targets, runs, summary, passed, lambda runs, path: _plot(runs, path, kind))


if __name__ == "__main__":
    app()
