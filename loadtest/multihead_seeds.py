"""Benchmark: the tiny multi-head model's held-out accuracy per head over training seeds.

    python -m loadtest.multihead_seeds --seeds 0-2

Each run is the pipeline as a user runs it: ``vlreward data synthetic --heads`` (one data set, seed 0),
``vlreward train --heads concise,grounded,correct --recipe tiny-heads --set seed=S``; the figures are the
trainer's held-out evaluation at the end (each head on the pairs labelled for it). Writes
``loadtest/results/multihead_seeds.json`` and a PNG (per head: every seed's accuracy and the median).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import typer
from tqdm import tqdm

from loadtest.bootstrap_sweep import _ints
from vlreward.training.data.synthetic import SYNTHETIC_HEAD_NAMES

app = typer.Typer(add_completion=False)
VLREWARD = str(Path(sys.executable).parent / "vlreward")
HEADS = ",".join(SYNTHETIC_HEAD_NAMES)
RESULTS = Path(__file__).parent / "results" / "multihead_seeds.json"


def _run(*args: str) -> None:
    done = subprocess.run([VLREWARD, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"vlreward {' '.join(args)} failed:\n{done.stderr[-3000:]}")


def train_one(seed: int, data: Path, workdir: Path, per_category: int) -> dict:
    """Train one seed; its final held-out figures and wall time."""
    run = workdir / f"seed{seed}"
    started = time.monotonic()
    _run("train", "--heads", HEADS, "--recipe", "tiny-heads", "--set", f"seed={seed}", "--data", str(data / "train"),
         "--heldout", str(data / "heldout"), "--output", str(run))  # fmt: skip
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    final = [entry["eval"] for entry in history if "eval" in entry][-1]
    return {"seed": seed, "seconds": round(time.monotonic() - started, 1), **final}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heads = list(results["summary"])
    figure, axis = plt.subplots(figsize=(6, 4))
    for x, head in enumerate(heads):
        values = [run["heads"][head]["accuracy"] for run in results["runs"]]
        axis.scatter([x] * len(values), values, color="tab:blue", alpha=0.7)
        axis.hlines(statistics.median(values), x - 0.2, x + 0.2, color="black")
    axis.set_xticks(range(len(heads)), heads)
    axis.set_ylim(0.4, 1.02)
    axis.axhline(0.5, color="grey", linewidth=0.6, linestyle="--")
    axis.set_ylabel("held-out pairwise accuracy")
    axis.set_title(f"tiny multi-head model, seeds {results['seeds']} (line: median)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


@app.command()
def main(
    seeds: str = typer.Option("0-2", help="Training seeds: 0-2 or 0,3."),
    per_category: int = typer.Option(800, help="Train pairs per category (held-out: a quarter)."),
    output: Path = typer.Option(RESULTS, help="Results JSON (a PNG beside it)."),
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        data = workdir / "data"
        _run("data", "synthetic", "--output", str(data), "--per-category", str(per_category), "--heads")
        runs = []
        for seed in tqdm(_ints(seeds), desc="seeds", unit="run"):
            runs.append(train_one(seed, data, workdir, per_category))
            tqdm.write(f"seed {seed}: " + ", ".join(f"{h} {r['accuracy']:.3f}" for h, r in runs[-1]["heads"].items()))
    summary = {
        head: {
            "min": min(r["heads"][head]["accuracy"] for r in runs),
            "median": statistics.median(r["heads"][head]["accuracy"] for r in runs),
            "max": max(r["heads"][head]["accuracy"] for r in runs),
            "n": runs[0]["heads"][head]["n"],
        }
        for head in runs[0]["heads"]
    }
    results = {"command": "python -m loadtest.multihead_seeds " + " ".join(sys.argv[1:]), "seeds": seeds,
               "per_category": per_category, "heads": HEADS, "recipe": "tiny-heads", "runs": runs,
               "summary": summary}  # fmt: skip
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, output.with_suffix(".png"))
    for head, row in summary.items():
        print(f"{head}: median {row['median']:.3f} (min {row['min']:.3f}, max {row['max']:.3f}, n={row['n']})")


if __name__ == "__main__":
    app()
