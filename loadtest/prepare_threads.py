"""Benchmark: preparing one many-item /score request, its items encoded one after another or side by side.

    python -m loadtest.prepare_threads

Before the service scores a request it decodes each item's images, applies the chat template, tokenises
and runs the image processor (:func:`vlreward.service.prepare.prepare_items`). On a GPU the model waits
for that: a request of 32 items with a 448x448 image each (the GPU check's ~1k-token samples) is
prepared before its first batch starts. The service decodes the images in item order and then encodes
the items on :func:`~vlreward.service.prepare.encoding_pool`'s threads side by side; ``one thread`` is
the same work with that pool cut to one thread (each item in turn, as before).

Samples are the GPU check's (``loadtest.gpu_check.make_samples``, the 7B size: 448x448 images, ~1k
tokens) encoded by the bench model's processor (the same image processor settings: 256 image tokens
per image); every round prepares a request of distinct samples, from a worker thread as the service
does, alternating the variants. Writes JSON + PNG (``loadtest/results/prepare_threads.*``).
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

from loadtest.plots import variants_by_run, write_results

VARIANTS = ("one thread", "side by side")

app = typer.Typer(add_completion=False)


def request_ms(backend, samples: list, threads: int | None) -> float:
    """Milliseconds to prepare ``samples`` as one /score request, from a worker thread; ``threads`` caps the
    encoding threads (None: the service's pool)."""
    from vlreward.service import prepare
    from vlreward.service.media import MediaPolicy

    pool = prepare.encoding_pool
    if threads is not None:
        capped = prepare.encoding_threads(threads)
        prepare.encoding_pool = lambda: capped
    try:
        with ThreadPoolExecutor(1) as caller:
            started = time.perf_counter()
            caller.submit(
                prepare.prepare_items, backend, samples, MediaPolicy(), prepare.Limits(), "none", False
            ).result()
            return (time.perf_counter() - started) * 1000
    finally:
        prepare.encoding_pool = pool
        if threads is not None:
            capped.shutdown()


def measure(size: str, items: int, rounds: int) -> dict:
    """Each round: one request of ``items`` distinct samples per variant, alternating which goes first."""
    import torch

    from loadtest.device import cpu_name
    from loadtest.gpu_check import CHECK_SIZES, make_samples
    from loadtest.suite import build_model
    from vlreward.service.backends.transformers import TransformersBackend
    from vlreward.service.prepare import encoding_pool
    from vlreward.service.schemas import Sample

    model = build_model(size, Path(tempfile.mkdtemp(prefix="prepare-threads-")))
    backend = TransformersBackend(model, dtype="float32", device="cpu")
    check = CHECK_SIZES["7b"]

    def request(seed: int) -> list:
        return [Sample.model_validate(s) for s in make_samples(backend.processor, items, check, seed)]

    request_ms(backend, request(999), None)  # warm-up: the processor's and the pool's first calls
    runs = []
    for number in tqdm(range(rounds), desc="prepare threads", file=sys.stderr):
        order = VARIANTS if number % 2 == 0 else VARIANTS[::-1]
        for variant in order:
            samples = request(number * len(VARIANTS) + VARIANTS.index(variant))
            ms = request_ms(backend, samples, 1 if variant == "one thread" else None)
            runs.append({"variant": variant, "round": number, "request_ms": ms})
    probe = make_samples(backend.processor, 4, check, 7)
    sample_tokens = statistics.mean(backend.encode(backend.format_request_sample(s)).num_tokens for s in probe)
    return {"benchmark": "prepare_threads", "model": size, "items": items, "rounds": rounds,
            "tokens_per_sample": round(sample_tokens, 1), "image_side": check.image_side,
            "encoding_threads": encoding_pool()._max_workers, "cpu": cpu_name(), "torch": torch.__version__,
            "runs": runs}  # fmt: skip


def plot(report: dict, path: Path) -> None:

    series = {v: [run["request_ms"] for run in report["runs"] if run["variant"] == v] for v in VARIANTS}
    title = (f"{report['image_side']}px images, ~{report['tokens_per_sample']:.0f} tokens per sample, "
             f"{report['encoding_threads']} encoding threads")  # fmt: skip
    ylabel = f"preparing one request of {report['items']} items (ms)"
    variants_by_run(series, "round (distinct samples each)", ylabel, title, path)


def table(report: dict) -> str:
    """Each variant's median and quartiles per request, and the per-round speed-up."""
    by = {v: [run["request_ms"] for run in report["runs"] if run["variant"] == v] for v in VARIANTS}
    ratios = [one / both for one, both in zip(by["one thread"], by["side by side"], strict=True)]
    lines = [f"| preparing a {report['items']}-item request | median ms | quartiles ms |", "| --- | --- | --- |"]
    for variant in VARIANTS:
        q1, _, q3 = statistics.quantiles(by[variant], n=4)
        lines.append(f"| {variant} | {statistics.median(by[variant]):.0f} | {q1:.0f}–{q3:.0f} |")
    lines += ["", f"`{report['command']}`: {report['rounds']} rounds, {report['image_side']}×{report['image_side']} "
              f"images, {report['tokens_per_sample']:.0f} tokens per sample, {report['encoding_threads']} encoding "
              f"threads, {report.get('cpu', 'CPU not recorded')}; one thread / side by side per round: "
              f"median {statistics.median(ratios):.2f} (range {min(ratios):.2f}–{max(ratios):.2f})."]  # fmt: skip
    return "\n".join(lines) + "\n"


@app.command()
def main(
    size: str = typer.Option("bench", help="The model whose processor encodes: tiny or bench."),
    items: int = typer.Option(32, help="Items per request."),
    rounds: int = typer.Option(9, help="Requests per variant (alternating)."),
    output: Path = typer.Option(Path("loadtest/results"), help="Folder for prepare_threads.json and .png."),
):
    report = {
        "command": " ".join(["python -m loadtest.prepare_threads", *sys.argv[1:]]),
        **measure(size, items, rounds),
    }
    write_results(output, "prepare_threads", report, plot, table)


if __name__ == "__main__":
    app()
