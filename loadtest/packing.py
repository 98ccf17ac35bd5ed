"""Benchmark: batches packed end to end against padded to the longest, on the CPU.

    python -m loadtest.packing

The same distinct samples (the suite's mix: 20-80 prompt words, 20-120 response words, half with an
image) scored in-process by the transformers backend's model two ways, alternating, each round on new
samples:

- ``arrival order``: batches of 16 as requests arrive, on every core (the padding a mixed batch carries);
- ``service plan``: the batcher's plan (sorted by length within the CPU's token budget) on its two
  one-core lanes, as the service runs a queue of 128.

Writes JSON + PNG (``loadtest/results/packing_<size>.*``); the table is in docs/performance.md.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import typer
from tqdm import tqdm

from loadtest.plots import ms_per_round, series_of, write_results

LAYOUTS = ("arrival order", "service plan")
MODES = ("padded", "packed")

app = typer.Typer(add_completion=False)


def measure(size: str, samples: int, rounds: int) -> dict:
    """Milliseconds per sample of each layout and mode, per round."""
    import torch

    from loadtest.device import cpu_name
    from loadtest.suite import build_model, formatted
    from loadtest.workload import Mix, make_samples
    from vlreward.service.backends.transformers import TransformersBackend

    backend = TransformersBackend(build_model(size, Path(tempfile.mkdtemp(prefix="packing-"))), device="cpu")
    model = backend.model
    lanes = ThreadPoolExecutor(2)

    def on_one_core(batch: list) -> list:
        torch.set_num_threads(1)
        return model.score_batch(batch)

    def batches(layout: str, encoded: list) -> list[list]:
        if layout == "arrival order":
            return [encoded[i : i + 16] for i in range(0, len(encoded), 16)]
        return [[encoded[i] for i in plan] for plan in backend.plan_batches([e.num_tokens for e in encoded])]

    def run(layout: str, encoded: list) -> None:
        if layout == "arrival order":
            for batch in batches(layout, encoded):
                model.score_batch(batch)
        else:
            list(lanes.map(on_one_core, batches(layout, encoded)))

    runs = []
    try:
        for number in tqdm(range(rounds + 1), desc="packing", file=sys.stderr):  # round 0: warm-up, not kept
            mix = Mix(samples=samples, seed=100 + number)
            encoded = [backend.encode(formatted(backend, s)) for s in make_samples(mix)]
            for layout in LAYOUTS:
                padding = [max(e.num_tokens for e in b) * len(b) for b in batches(layout, encoded)]
                share = 1 - sum(e.num_tokens for e in encoded) / sum(padding)
                for mode in MODES if number % 2 == 0 else MODES[::-1]:
                    model.pack_batches = mode == "packed"
                    started = time.perf_counter()
                    run(layout, encoded)
                    ms = (time.perf_counter() - started) * 1000 / len(encoded)
                    if number:
                        runs.append({"round": number, "layout": layout, "mode": mode, "ms_per_sample": ms,
                                     "padding_share": round(share, 3)})  # fmt: skip
    finally:
        lanes.shutdown()
    return {"benchmark": "packing", "model": size, "samples": samples, "rounds": rounds,
            "budget_tokens": backend.max_batch_tokens, "threads": torch.get_num_threads(), "cpu": cpu_name(),
            "torch": torch.__version__, "runs": runs}  # fmt: skip


def plot(report: dict, path: Path) -> None:
    title = f"{report['model']} model, {report['samples']} samples per round, {report['threads']} threads"
    ms_per_round(report, ("layout", LAYOUTS), ("mode", MODES), title, path)


def table(report: dict) -> str:
    """Per layout: padding, each mode's median ms per sample, and padded / packed per round."""
    lines = ["| batches | padding | padded ms/sample | packed ms/sample | padded / packed per round (median, range) |",
             "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for layout in LAYOUTS:
        padded, packed = (series_of(report, layout=layout, mode=mode) for mode in MODES)
        ratios = [a / b for a, b in zip(padded, packed, strict=True)]
        share = statistics.median(series_of(report, "padding_share", layout=layout, mode="padded"))
        lines.append(f"| {layout} | {share:.0%} | {statistics.median(padded):.1f} | {statistics.median(packed):.1f} "
                     f"| {statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f}) |")  # fmt: skip
    lines += ["", f"`{report['command']}`: {report['model']} model, {report['rounds']} rounds of "
              f"{report['samples']} samples, token budget {report['budget_tokens']}, {report['threads']} threads, "
              f"{report['cpu']}."]  # fmt: skip
    return "\n".join(lines) + "\n"


@app.command()
def main(
    size: str = typer.Option("bench", help="The model the suite builds: tiny or bench."),
    samples: int = typer.Option(128, help="Samples per round."),
    rounds: int = typer.Option(5, help="Rounds (new samples each; both modes alternate within a round)."),
    output: Path = typer.Option(Path("loadtest/results"), help="Folder for packing_<size>.json and .png."),
):
    command = " ".join(["python -m loadtest.packing", *sys.argv[1:]])
    report = {"command": command, **measure(size, samples, rounds)}
    write_results(output, f"packing_{size}", report, plot, table)


if __name__ == "__main__":
    app()
