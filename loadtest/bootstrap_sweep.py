"""Benchmark: the embedded default model's recipe over seeds, torch threads and CPU kernels.

    python -m loadtest.bootstrap_sweep --seeds 0-4 --threads 1,2 --cpu-capability native,avx2

Every run is the real pipeline as a user runs it (`vlreward bootstrap --seed S --threads T` in a fresh
home, then `vlreward eval --benchmark synthetic --seed S` on its own held-out split). Prints one row
per run and min / median / max per figure, and writes JSON + PNG. ``--seeds 0 --threads 2 --parallel 1``
is the wall-time benchmark of the bootstrap (budget: 5 minutes on a 2-core machine).

CPU capabilities: ``native`` leaves torch's choice (AVX-512 where the CPU has it); ``avx2`` sets
``ATEN_CPU_CAPABILITY=avx2`` and ``MKL_ENABLE_INSTRUCTIONS=AVX2``, imitating a machine without AVX-512;
``scalar`` sets ``ATEN_CPU_CAPABILITY=default`` (no SIMD kernels at all; slow).
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import typer
from tqdm import tqdm

app = typer.Typer(add_completion=False)

CAPABILITIES = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "scalar": {"ATEN_CPU_CAPABILITY": "default"},
}
# The targets of the recipe over a whole sweep (the test suite's floor is lower on purpose).
TARGETS = {"overall": 0.92, "category": 0.88, "image_swap": 0.92}
VLREWARD = str(Path(sys.executable).parent / "vlreward")


def _ints(text: str) -> list[int]:
    """``0-4`` or ``0,2,3``."""
    if "-" in text:
        low, high = text.split("-")
        return list(range(int(low), int(high) + 1))
    return [int(part) for part in text.split(",")]


def run_one(seed: int, threads: int, capability: str, workdir: Path) -> dict:
    """Bootstrap and evaluate one configuration in its own home; returns its figures."""
    home = workdir / f"seed{seed}-t{threads}-{capability}"
    env = {**os.environ, **CAPABILITIES[capability]}
    started = time.monotonic()
    built = subprocess.run(
        [VLREWARD, "bootstrap", "--home", str(home), "--seed", str(seed), "--threads", str(threads)],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    wall = time.monotonic() - started
    if built.returncode != 0:
        return {"seed": seed, "threads": threads, "capability": capability, "error": built.stderr[-2000:]}
    evaluated = subprocess.run(
        [VLREWARD, "eval", "--benchmark", "synthetic", "--seed", str(seed), "--model", str(home / "models" / "default"),
         "--output", str(home / "eval")],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    if evaluated.returncode != 0:
        return {"seed": seed, "threads": threads, "capability": capability, "error": evaluated.stderr[-2000:]}
    results = json.loads((home / "eval" / "results.json").read_text())
    return {
        "seed": seed,
        "threads": threads,
        "capability": capability,
        "wall_s": round(wall, 1),
        "overall": results["overall"],
        "categories": results["categories"],
        "image_swap": results["extra_image_swap_hallucination"],
    }


def summarise(runs: list[dict]) -> dict:
    """min / median / max of every figure over the runs that finished."""
    done = [r for r in runs if "error" not in r]
    figures: dict[str, list[float]] = {
        "overall": [r["overall"] for r in done],
        "image_swap": [r["image_swap"] for r in done],
    }
    for name in sorted({c for r in done for c in r["categories"]}):
        figures[name] = [r["categories"][name] for r in done]
    figures["wall_s"] = [r["wall_s"] for r in done]
    return {name: {"min": min(v), "median": statistics.median(v), "max": max(v)} for name, v in figures.items() if v}


def meets_targets(run: dict) -> bool:
    return (
        "error" not in run
        and run["overall"] >= TARGETS["overall"]
        and min(run["categories"].values()) >= TARGETS["category"]
        and run["image_swap"] >= TARGETS["image_swap"]
    )


def runs_table(runs: list[dict]) -> str:
    """One row per run, in seed / threads / kernels order; a value below its target is marked ✗."""
    names = sorted(next(r for r in runs if "error" not in r)["categories"])
    lines = [f"| seed | threads | CPU kernels | overall | {' | '.join(names)} | image swap | wall s |",
             "|" + "---|" * (len(names) + 6)]  # fmt: skip

    def cell(value: float, target: float) -> str:
        return f"{value:.3f}" + (" ✗" if value < target else "")

    for r in sorted(runs, key=lambda r: (r["seed"], r["threads"], r["capability"])):
        if "error" in r:
            lines.append(f"| {r['seed']} | {r['threads']} | {r['capability']} | failed |")
            continue
        cells = " | ".join(cell(r["categories"][name], TARGETS["category"]) for name in names)
        lines.append(f"| {r['seed']} | {r['threads']} | {r['capability']} | {cell(r['overall'], TARGETS['overall'])} "
                     f"| {cells} | {cell(r['image_swap'], TARGETS['image_swap'])} | {r['wall_s']:.0f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def summary_table(summary: dict) -> str:
    """Min, median and max of each accuracy figure over the runs."""
    lines = ["| figure | min | median | max |", "|---|---|---|---|"]
    for name, s in summary.items():
        if name != "wall_s":
            lines.append(f"| {name} | {s['min']:.3f} | {s['median']:.3f} | {s['max']:.3f} |")
    return "\n".join(lines) + "\n"


def _plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in runs if "error" not in r]
    names = ["overall", *sorted({c for r in done for c in r["categories"]}), "image_swap"]
    figure, axis = plt.subplots(figsize=(8, 4))
    for index, name in enumerate(names):
        values = [r[name] if name in ("overall", "image_swap") else r["categories"][name] for r in done]
        axis.scatter([index] * len(values), [100 * v for v in values], alpha=0.6)
    axis.axhline(100 * TARGETS["overall"], color="grey", linestyle="--", linewidth=1, label="overall / swap target")
    axis.axhline(100 * TARGETS["category"], color="grey", linestyle=":", linewidth=1, label="category target")
    axis.set_xticks(range(len(names)), names)
    axis.set_ylabel("held-out accuracy (%)")
    axis.set_title(f"default model over {len(done)} bootstrap runs (seeds x threads x CPU kernels)")
    axis.legend(loc="lower left")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


@app.command()
def main(
    seeds: str = typer.Option("0-4", help="Seeds: 0-4 or 0,2,3."),
    threads: str = typer.Option("1,2", help="torch threads per run."),
    cpu_capability: str = typer.Option("native,avx2", help="native, avx2 and/or scalar."),
    parallel: int | None = typer.Option(None, help="Runs at once (default: cores / threads, at least 1)."),
    output: Path = typer.Option(Path("loadtest/results/bootstrap_sweep"), help="JSON and PNG path (no suffix)."),
) -> None:
    print("command:", " ".join(["python -m loadtest.bootstrap_sweep", *sys.argv[1:]]), flush=True)
    capabilities = cpu_capability.split(",")
    unknown = set(capabilities) - set(CAPABILITIES)
    if unknown:
        raise typer.BadParameter(f"unknown CPU capability {sorted(unknown)}; choose from {', '.join(CAPABILITIES)}")
    grid = list(itertools.product(_ints(seeds), _ints(threads), capabilities))
    workdir = Path(tempfile.mkdtemp(prefix="bootstrap-sweep-"))
    runs = run_by_threads(grid, lambda g: g[1], lambda s, t, c: run_one(s, t, c, workdir), parallel)
    summary = summarise(runs)
    print("\n" + runs_table(runs))
    print(summary_table(summary))
    passed = sum(meets_targets(r) for r in runs)
    write_report(output, TARGETS, runs, summary, passed, _plot)


def run_by_threads(
    grid: list[tuple], threads_of: Callable[[tuple], int], run: Callable[..., dict], parallel: int | None = None
) -> list[dict]:
    """``run(*point)`` for every point of the grid. Points with the same thread count go together, as many
    at once as the cores hold (or ``parallel``), so that parallel runs never oversubscribe the cores."""
    runs: list[dict] = []
    for thread_count in sorted({threads_of(point) for point in grid}):
        batch = [point for point in grid if threads_of(point) == thread_count]
        workers = parallel or max(1, (os.cpu_count() or 1) // thread_count)
        with ThreadPoolExecutor(workers) as pool:
            futures = [pool.submit(run, *point) for point in batch]
            for future in tqdm(futures, desc=f"bootstrap runs ({thread_count} thread(s), {workers} at once)"):
                runs.append(future.result())
                tqdm.write(json.dumps(runs[-1]))
    return runs


def write_report(
    output: Path, targets: dict, runs: list[dict], summary: dict, passed: int, plot: Callable[[list, Path], None]
) -> None:
    """How many runs met the targets, then the JSON and PNG at ``output`` (no suffix)."""
    print(f"\n{passed} of {len(runs)} runs meet the targets {targets}")
    output.parent.mkdir(parents=True, exist_ok=True)
    report = {"command": " ".join(sys.argv), "targets": targets, "runs": runs, "summary": summary, "passed": passed}
    output.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    plot(runs, output.with_suffix(".png"))
    print(f"wrote {output.with_suffix('.json')} and {output.with_suffix('.png')}")


if __name__ == "__main__":
    app()
