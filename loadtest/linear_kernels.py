"""Benchmark: float32 linear layers on the CPU, MKL (torch's ``nn.Linear``) against oneDNN's linear.

    python -m loadtest.linear_kernels
    python -m loadtest.linear_kernels --forward

The shapes are the tiny and bench models' (language model and vision tower), at token counts from a short
request to a batch, on one thread and on every core. Each cell is the median of 5 timings of about 20 ms
of calls each (at most 200), after a warm-up (oneDNN's primitive cache then holds the shape, as it does in
a serving process). :data:`vlreward.service.model.cpu_kernels.ONEDNN_MIN_WEIGHT` is read from it. Writes
JSON + PNG (``loadtest/results/linear_kernels.*``).

``--forward`` measures what decides :data:`vlreward.service.model.cpu_kernels.ONEDNN_CPU_VENDORS` and
``ONEDNN_CPU_FLAGS`` instead:
the bench model's whole forward pass as the service runs it, with the backbone's large linears on each
kernel, alternating within each round of new samples (the suite's mix). Two paths: a lone request's pass on
every core, and the batcher's planned batches on its one-core lanes. A layer alone in a loop keeps its
weight in cache; in a forward pass each layer's weight comes from memory, which is where the kernels part
on Intel processors. Writes ``loadtest/results/linear_kernels_forward.*`` with the processor's name.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import typer
from tqdm import tqdm

from loadtest.plots import ms_per_round, series_of, write_results

SHAPES = {  # (in, out) -> where it is
    (32, 96): "tiny vision qkv",
    (64, 32): "tiny vision down",
    (128, 64): "tiny k, v",
    (128, 128): "tiny q, o",
    (128, 256): "tiny gate, up",
    (256, 128): "tiny down",
    (512, 128): "bench k, v",
    (512, 512): "bench q, o",
    (512, 1536): "bench gate, up",
    (1536, 512): "bench down",
}
TOKENS = (16, 64, 256, 1024)

FORWARD_PATHS = ("lone pass, every core", "planned batches, one-core lanes")
KERNELS = ("onednn", "torch")

app = typer.Typer(add_completion=False)


def microseconds(call: Callable[[], object], repeats: int = 5, timing_s: float = 0.02) -> float:
    """The median over ``repeats`` of one call's mean time over about ``timing_s`` of calls, after 3 untimed."""
    for _ in range(3):
        call()
    started = time.perf_counter()
    call()
    calls = max(3, min(200, int(timing_s / max(time.perf_counter() - started, 1e-7))))
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            call()
        times.append((time.perf_counter() - started) / calls * 1e6)
    return statistics.median(times)


def plot(report: dict, path: Path) -> None:
    rows = report["rows"]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for axis, threads in zip(axes, sorted({r["threads"] for r in rows}), strict=False):
        for tokens in TOKENS:
            cells = [r for r in rows if r["threads"] == threads and r["tokens"] == tokens]
            axis.plot([r["weight"] for r in cells], [r["mkl_us"] / r["onednn_us"] for r in cells], "o-",
                      label=f"{tokens} tokens")  # fmt: skip
        axis.axhline(1.0, color="grey", linewidth=0.8)
        axis.set_xscale("log")
        axis.set_xlabel("weight elements (in x out)")
        axis.set_title(f"{threads} thread(s)", fontsize=9)
    axes[0].set_ylabel("MKL time / oneDNN time (> 1: oneDNN faster)")
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def forward_passes(size: str, samples: int, rounds: int) -> dict:
    """Milliseconds per sample of each path on each kernel, per round (round 0 a warm-up, not kept)."""
    from loadtest.device import cpu_name
    from loadtest.suite import build_model, formatted
    from loadtest.workload import Mix, make_samples
    from vlreward.service.backends.transformers import TransformersBackend
    from vlreward.service.model.cpu_kernels import ONEDNN_MIN_WEIGHT, OneDnnLinear, cpu_linear_kernels, cpu_vendor

    backend = TransformersBackend(build_model(size, Path(tempfile.mkdtemp(prefix="linears-"))), device="cpu")
    model = backend.model
    linears = [m for m in model.model.modules() if isinstance(m, torch.nn.Linear)]
    large = [m for m in linears if m.weight.numel() >= ONEDNN_MIN_WEIGHT]

    def on(kernel: str) -> None:
        for linear in large:
            linear.__class__ = OneDnnLinear if kernel == "onednn" else torch.nn.Linear

    def score(path: str, encoded: list) -> list[float]:
        if path == FORWARD_PATHS[0]:
            return [backend.on_team(model.score_batch, [e])[0] for e in encoded]
        return backend.score_encoded_sync(encoded)

    runs, largest = [], 0.0
    for number in tqdm(range(rounds + 1), desc="forward passes", file=sys.stderr):
        mix = Mix(samples=samples, seed=200 + number)
        encoded = [backend.encode(formatted(backend, s)) for s in make_samples(mix)]
        for path in FORWARD_PATHS:
            scores = {}
            for kernel in KERNELS if number % 2 == 0 else KERNELS[::-1]:
                on(kernel)
                started = time.perf_counter()
                scores[kernel] = score(path, encoded)
                ms = (time.perf_counter() - started) * 1000 / len(encoded)
                if number:
                    runs.append({"round": number, "path": path, "kernel": kernel, "ms_per_sample": ms})
            largest = max(largest, *(abs(a - b) for a, b in zip(*scores.values(), strict=True)))
    return {"benchmark": "linear_kernels_forward", "model": size, "samples": samples, "rounds": rounds,
            "linears": len(large), "threads": backend.cores, "cpu": cpu_name(), "vendor": cpu_vendor(),
            "chosen": cpu_linear_kernels(), "largest_score_difference": largest, "torch": torch.__version__,
            "runs": runs}  # fmt: skip


def forward_plot(report: dict, path: Path) -> None:
    title = f"{report['model']} model, {report['samples']} samples per round, {report['cpu']}"
    ms_per_round(report, ("path", FORWARD_PATHS), ("kernel", KERNELS), title, path)


def forward_table(report: dict) -> str:
    """Per path: each kernel's median ms per sample, and torch (MKL) / oneDNN per round (> 1: oneDNN faster)."""
    from loadtest.report import interquartile

    lines = ["| path | oneDNN ms/sample | MKL ms/sample | MKL / oneDNN per round (median, IQR, range) |",
             "| --- | --- | --- | --- |"]  # fmt: skip
    for path in FORWARD_PATHS:
        onednn, mkl = (series_of(report, path=path, kernel=kernel) for kernel in KERNELS)
        ratios = sorted(a / b for a, b in zip(mkl, onednn, strict=True))
        spread = f"{interquartile(ratios)}; {ratios[0]:.2f}–{ratios[-1]:.2f}"
        lines.append(f"| {path} | {statistics.median(onednn):.1f} | {statistics.median(mkl):.1f} | "
                     f"{statistics.median(ratios):.3f} ({spread}) |")  # fmt: skip
    lines += ["", f"`{report['command']}`: {report['model']} model ({report['linears']} linears switched), "
              f"{report['rounds']} rounds of {report['samples']} samples, {report['threads']} threads, "
              f"{report['cpu']} ({report['vendor']}: the service chooses {report['chosen']}); largest score "
              f"difference between the kernels {report['largest_score_difference']:.1e}."]  # fmt: skip
    return "\n".join(lines) + "\n"


@app.command()
def main(
    output: Path = typer.Option(Path("loadtest/results"), help="Folder for the JSON and PNG."),
    forward: bool = typer.Option(False, help="Whole forward passes of a model instead of single layers."),
    size: str = typer.Option("bench", help="--forward: the model the suite builds (tiny or bench)."),
    samples: int = typer.Option(48, help="--forward: samples per round."),
    rounds: int = typer.Option(7, help="--forward: rounds (new samples each; both kernels alternate within one)."),
    name: str | None = typer.Option(
        None, help="Results file name (default linear_kernels, or linear_kernels_forward with --forward)."
    ),
):
    from vlreward.service.model.cpu_kernels import ONEDNN_MIN_WEIGHT

    command = " ".join(["python -m loadtest.linear_kernels", *sys.argv[1:]])
    if forward:
        report = {"command": command, **forward_passes(size, samples, rounds)}
        write_results(output, name or "linear_kernels_forward", report, forward_plot, forward_table)
        return
    cores = torch.get_num_threads()
    rows = []
    cells = [(t, shape, m) for t in sorted({1, cores}) for shape in SHAPES for m in TOKENS]
    with torch.inference_mode():
        for threads, (fan_in, fan_out), tokens in tqdm(cells, desc="linear kernels", file=sys.stderr):
            torch.set_num_threads(threads)
            x, weight, bias = torch.randn(tokens, fan_in), torch.randn(fan_out, fan_in), torch.randn(fan_out)
            mkl = microseconds(lambda: torch.nn.functional.linear(x, weight, bias))  # noqa: B023
            onednn = microseconds(lambda: torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], ""))  # noqa: B023
            rows.append({"threads": threads, "in": fan_in, "out": fan_out, "where": SHAPES[fan_in, fan_out],
                         "weight": fan_in * fan_out, "tokens": tokens, "mkl_us": mkl, "onednn_us": onednn})  # fmt: skip
    torch.set_num_threads(cores)
    from loadtest.device import cpu_name

    report = {"command": command, "benchmark": "linear_kernels", "threads": cores, "torch": torch.__version__,
              "cpu": cpu_name(),
              "onednn_min_weight": ONEDNN_MIN_WEIGHT, "rows": rows}  # fmt: skip
    write_results(output, name or "linear_kernels", report, plot, table)


def table(report: dict) -> str:
    """MKL / oneDNN time per shape and token count (> 1: oneDNN faster), one block per thread count."""
    lines = ["| threads | shape (in x out) | where | " + " | ".join(f"{m} tokens" for m in TOKENS) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in TOKENS) + " |"]  # fmt: skip
    rows = report["rows"]
    for threads in sorted({r["threads"] for r in rows}):
        for fan_in, fan_out in SHAPES:
            cells = {r["tokens"]: r for r in rows if (r["threads"], r["in"], r["out"]) == (threads, fan_in, fan_out)}
            ratios = " | ".join(f"{cells[m]['mkl_us'] / cells[m]['onednn_us']:.2f}" for m in TOKENS)
            lines.append(f"| {threads} | {fan_in} x {fan_out} | {SHAPES[fan_in, fan_out]} | {ratios} |")
    where = f"{report['cpu']}, " if "cpu" in report else ""
    lines += ["", f"`{report['command']}` ({where}torch {report['torch']}; MKL time / oneDNN time, > 1: oneDNN faster; "
              f"oneDNN from {report['onednn_min_weight']:,} weight elements)."]  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    app()
