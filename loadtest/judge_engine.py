"""Benchmark: what a judge's vLLM engine costs beside a reward model's, on one backbone.

    python -m loadtest.judge_engine --size bench --rounds 3

A reward model runs on a pooling engine (the sequence-classification head); a judge on a generate-runner
engine (the whole LM head, a sampler, one greedy token per question). Both are built here on the same
backbone (the suite's seeded model and a judge on it) and started in alternating rounds as the service
starts them (``VLLMBackend`` with the CPU defaults): the seconds until the engine has answered its warm-up
request, and the engine process's resident memory then. Writes JSON + PNG (``loadtest/results/``).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil
import typer
from tqdm import tqdm

from loadtest.suite import build_model, judge_like

app = typer.Typer(add_completion=False)


def engine_resident_bytes() -> int:
    """Resident memory of this process's children (vLLM's engine process and its workers)."""
    return sum(child.memory_info().rss for child in psutil.Process().children(recursive=True))


def start_once(model: Path) -> dict:
    """Start the vLLM backend on ``model``, score its probe (the first request), measure, stop it."""
    from vlreward.service.backends.vllm import VLLMBackend
    from vlreward.service.warmup import check_probe

    started = time.monotonic()
    backend = VLLMBackend(model, dtype="float32", device="cpu")
    check_probe(backend)
    seconds = time.monotonic() - started
    memory = engine_resident_bytes()
    backend.close_sync()
    return {"start_s": round(seconds, 2), "engine_rss_mib": round(memory / 2**20, 1)}


@app.command()
def main(
    size: str = typer.Option("bench", help="tiny or bench: the backbone built here (seeded)."),
    rounds: int = typer.Option(3, help="Alternating rounds (reward engine, then judge engine)."),
    output: Path = typer.Option(Path("loadtest/results/judge_engine"), help="JSON and PNG path (no suffix)."),
) -> None:
    command = " ".join(["python -m loadtest.judge_engine", *sys.argv[1:]])
    print("command:", command, flush=True)
    reward = build_model(size, Path(tempfile.mkdtemp(prefix="judge-engine-")))
    judge = judge_like(reward)
    runs: dict[str, list[dict]] = {"reward (pooling)": [], "judge (generate)": []}
    for _ in tqdm(range(rounds), desc="rounds", file=sys.stderr):
        runs["reward (pooling)"].append(start_once(reward))
        runs["judge (generate)"].append(start_once(judge))
    summary = {
        name: {key: statistics.median(r[key] for r in rows) for key in ("start_s", "engine_rss_mib")}
        for name, rows in runs.items()
    }
    print("\n| engine | start-up s (median) | engine RSS MiB (median) | rounds |\n|---|---|---|---|")
    for name, values in summary.items():
        print(f"| {name} | {values['start_s']:.1f} | {values['engine_rss_mib']:.0f} | {rounds} |")
    output.parent.mkdir(parents=True, exist_ok=True)
    record = {"command": command, "benchmark": "judge_engine", "size": size, "runs": runs, "summary": summary}
    output.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    plot(runs, output.with_suffix(".png"), size)
    print(f"wrote {output.with_suffix('.json')} and .png")


def plot(runs: dict[str, list[dict]], path: Path, size: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(8, 3))
    for axis, key, label in ((axes[0], "start_s", "start-up (s)"), (axes[1], "engine_rss_mib", "engine RSS (MiB)")):
        for index, rows in enumerate(runs.values()):
            axis.scatter([index] * len(rows), [r[key] for r in rows], alpha=0.7)
        axis.set_xticks(range(len(runs)), list(runs))
        axis.set_ylabel(label)
    figure.suptitle(f"vLLM engine on the {size} backbone, alternating rounds", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    app()
