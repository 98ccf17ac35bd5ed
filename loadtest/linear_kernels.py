"""Benchmark: float32 linear layers on the CPU, MKL (torch's ``nn.Linear``) against oneDNN's linear.

    python -m loadtest.linear_kernels

The shapes are the tiny and bench models' (language model and vision tower), at token counts from a short
request to a batch, on one thread and on every core. Each cell is the median of 5 timings of about 20 ms
of calls each (at most 200), after a warm-up (oneDNN's primitive cache then holds the shape, as it does in
a serving process). :data:`vlreward.service.model.cpu_kernels.ONEDNN_MIN_WEIGHT` is read from it. Writes
JSON + PNG (``loadtest/results/linear_kernels.*``).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import typer
from tqdm import tqdm

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


def plot(rows: list[dict], path: Path) -> None:
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


@app.command()
def main(output: Path = typer.Option(Path("loadtest/results"), help="Folder for linear_kernels.json and .png.")):
    from vlreward.service.model.cpu_kernels import ONEDNN_MIN_WEIGHT

    command = " ".join(["python -m loadtest.linear_kernels", *sys.argv[1:]])
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
    report = {"command": command, "benchmark": "linear_kernels", "threads": cores, "torch": torch.__version__,
              "onednn_min_weight": ONEDNN_MIN_WEIGHT, "rows": rows}  # fmt: skip
    output.mkdir(parents=True, exist_ok=True)
    (output / "linear_kernels.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(rows, output / "linear_kernels.png")
    print(table(report))


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
    lines += ["", f"`{report['command']}` (torch {report['torch']}; MKL time / oneDNN time, > 1: oneDNN faster; "
              f"oneDNN from {report['onednn_min_weight']:,} weight elements)."]  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    app()
