"""Benchmark: a model's forward pass on every core, with one OpenMP team in the process and with two.

    python -m loadtest.openmp_teams

torch's CPU build runs its parallel regions on libgomp, which gives each thread that opens a parallel
region its own team of worker threads. Once the process holds more of those threads than it has cores,
libgomp cuts every team's spin-wait to 100 spins before a futex sleep, so each of the hundreds of parallel
regions in a forward pass waits for its workers to wake. A second multi-threaded team appears as soon as a
second thread runs torch on every core (a loading thread, a second lane). This is why the transformers
backend runs all work on several cores on one thread
(:data:`vlreward.service.backends.transformers.OTHER_THREADS_CPU_THREADS`).

Each run is a fresh process (a team lives as long as its thread): the bench model's forward pass over the
same samples, one at a time on every core, on the main thread; ``two teams``: after a thread that stays
alive ran one multi-threaded operation. ``--repeats`` runs of each, alternating. Writes JSON + PNG
(``loadtest/results/openmp_teams.*``).
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

VARIANTS = ("one team", "two teams")

app = typer.Typer(add_completion=False)


def passes_ms(model_dir: Path, second_team: bool, samples: int) -> list[float]:
    """In this process: each sample's forward pass on every core, in milliseconds (after one warm-up pass);
    with ``second_team``, a second thread (kept alive) has run torch on every core first."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from loadtest.suite import formatted
    from loadtest.workload import Mix, make_samples
    from vlreward.service.backends.transformers import TransformersBackend

    backend = TransformersBackend(model_dir, dtype="float32", device="cpu")
    encoded = [backend.encode(formatted(backend, s)) for s in make_samples(Mix(samples=samples, seed=5))]
    other = ThreadPoolExecutor(1)
    if second_team:
        cores = torch.get_num_threads()

        def on_every_core() -> str:
            torch.set_num_threads(cores)
            torch.randn(1 << 20).mul(2).sum()  # a parallel region: this thread's own team
            return threading.current_thread().name

        other.submit(on_every_core).result()
    backend.model.score_batch(encoded[:1])
    times = []
    for sample in encoded:
        started = time.perf_counter()
        backend.model.score_batch([sample])
        times.append((time.perf_counter() - started) * 1000)
    other.shutdown()
    return times


def plot(report: dict, path: Path) -> None:
    from loadtest.plots import variants_by_run

    series = {v: [run["median_ms"] for run in report["runs"] if run["variant"] == v] for v in VARIANTS}
    title = f"{report['model']} model, {report['threads']} threads"
    variants_by_run(series, "run (a fresh process each)", "median forward pass (ms)", title, path)


def table(report: dict) -> str:
    """Each variant's median pass per run, and the two teams' slowdown."""
    by = {v: [run["median_ms"] for run in report["runs"] if run["variant"] == v] for v in VARIANTS}
    ratios = [two / one for one, two in zip(by["one team"], by["two teams"], strict=True)]
    lines = ["| OpenMP teams in the process | median forward pass per run (ms) | median of runs |",
             "| --- | --- | --- |"]  # fmt: skip
    for variant in VARIANTS:
        cells = ", ".join(f"{ms:.1f}" for ms in by[variant])
        lines.append(f"| {variant} | {cells} | {statistics.median(by[variant]):.1f} |")
    lines += ["", f"`{report['command']}`: {report['model']} model, {report['samples']} samples per run, "
              f"{report['threads']} threads; two teams / one team per run: "
              + ", ".join(f"{r:.2f}" for r in ratios) + "."]  # fmt: skip
    return "\n".join(lines) + "\n"


@app.command()
def main(
    size: str = typer.Option("bench", help="The model the suite builds: tiny or bench."),
    samples: int = typer.Option(40, help="Samples per run."),
    repeats: int = typer.Option(3, help="Runs of each variant (alternating)."),
    output: Path = typer.Option(Path("loadtest/results"), help="Folder for openmp_teams.json and .png."),
    child: Path | None = typer.Option(None, hidden=True),
    second_team: bool = typer.Option(False, hidden=True),
):
    if child is not None:  # one run, in its own process
        print(json.dumps(passes_ms(child, second_team, samples)))
        return
    import torch

    from loadtest.suite import build_model

    command = " ".join(["python -m loadtest.openmp_teams", *sys.argv[1:]])
    model = build_model(size, Path(tempfile.mkdtemp(prefix="openmp-teams-")))
    runs = []
    for index in tqdm(range(repeats * len(VARIANTS)), desc="openmp teams", file=sys.stderr):
        variant = VARIANTS[index % len(VARIANTS)]
        done = subprocess.run(
            [sys.executable, "-m", "loadtest.openmp_teams", "--child", str(model), "--samples", str(samples),
             *(["--second-team"] if variant == "two teams" else [])],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        times = json.loads(done.stdout.strip().splitlines()[-1])
        runs.append({"variant": variant, "median_ms": statistics.median(times), "pass_ms": times})
    report = {"command": command, "benchmark": "openmp_teams", "model": size, "samples": samples,
              "threads": torch.get_num_threads(), "torch": torch.__version__, "runs": runs}  # fmt: skip
    output.mkdir(parents=True, exist_ok=True)
    (output / "openmp_teams.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, output / "openmp_teams.png")
    print(table(report))


if __name__ == "__main__":
    app()
