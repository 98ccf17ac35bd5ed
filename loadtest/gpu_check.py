"""GPU check: a random-weight reward model with Qwen2.5-VL-7B's architecture, served in bf16 through the
real HTTP app by the transformers backend, measured in one run (at most 10 minutes on one H100/H200).

    python -m loadtest.gpu_check --size 7b      # on a GPU host (docs/performance.md: "The GPU check")
    python -m loadtest.gpu_check --size tiny    # on a CPU, in seconds (CI runs this)

Steps: build the model in bf16 directly on the device with random weights (no download) and save it as
a reward checkpoint; load it in float32, stamp the start-up probe and score the comparison samples; load
it again as the service does (``dtype=auto``: bf16 on CUDA), measuring load time and peak memory; serve
it with uvicorn on loopback and measure ``/score`` at batch sizes 1/8/32 on distinct ~1k-token samples
with one image each, 32 concurrent one-item calls, ``/rank`` of 8 responses against 8 separate
``/score`` calls, and the naive loop (one sample per forward pass, in-process) as the baseline. Prints one
table (samples/s, tokens/s, MFU against the bf16 matrix-product rate measured here, peak GPU memory)
and the bf16-vs-fp32 score difference, and writes JSON (+ PNG when matplotlib is installed). It fails
when the HTTP scores differ from the in-process scores of the same backend.

On a bare GPU host nothing can be installed from the internet: build the project's wheel here and carry
it with the small wheels it needs (see docs/performance.md, "On a GPU host").
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import typer

from loadtest.device import matmul_tflops, peak_memory_gb, reserved_memory_gb, row, synchronize
from loadtest.gpu_report import print_table, stamping_released_memory, write_plot
from loadtest.loadgen import closed_loop, score_call
from loadtest.random_model import build_random_checkpoint
from loadtest.workload import WORDS, Mix
from loadtest.workload import make_samples as workload_samples
from vlreward.service.model.devices import release_device_memory

app = typer.Typer(add_completion=False)


@dataclass(frozen=True)
class CheckSize:
    """What one ``--size`` builds and sends."""

    samples: int
    """Distinct samples per throughput row."""
    sample_tokens: int
    """Tokens per sample, its image included."""
    image_side: int
    """Side of each sample's square image in pixels."""
    comparison_samples: int
    """Samples scored in both bf16 and fp32."""


CHECK_SIZES = {
    "7b": CheckSize(samples=64, sample_tokens=1024, image_side=448, comparison_samples=32),
    "tiny": CheckSize(samples=16, sample_tokens=256, image_side=112, comparison_samples=8),
}


def _grpo_groups(url: str, prompts: list[dict], pool: list[dict]) -> dict:
    """GRPO through /score: one call of G=8 responses sharing the prompt and image, against the same call
    with each response given its own image (other samples' images of the same size: same token counts)."""
    from vlreward.client import RewardClient

    rng = random.Random(2)
    shared_s = own_s = 0.0
    largest = 0.0
    with RewardClient(url, timeout_s=600) as client:
        for index, sample in enumerate(prompts):
            words = sample["response"].split()
            responses = [" ".join(rng.sample(words, k=len(words))) for _ in range(8)]
            group = [{"prompt": sample["prompt"], "response": r, "images": sample["images"]} for r in responses]
            others = [pool[(index + 1 + k) % len(pool)]["images"] for k in range(8)]
            own = [{**item, "images": images} for item, images in zip(group, others, strict=True)]
            started = time.perf_counter()
            together = client.score(group).scores
            shared_s += time.perf_counter() - started
            started = time.perf_counter()
            client.score(own)
            own_s += time.perf_counter() - started
            solo = [client.score([item]).scores[0] for item in group]
            largest = max(largest, max(abs(a - b) for a, b in zip(together, solo, strict=True)))
    return {
        "groups": len(prompts),
        "shared_s": round(shared_s, 4),
        "own_images_s": round(own_s, 4),
        "speed-up": round(own_s / shared_s, 2),
        "max_abs_score_difference": largest,
    }


def make_samples(processor: Any, count: int, check: CheckSize, seed: int, shortest: float = 1.0) -> list[dict]:
    """Distinct samples of about ``check.sample_tokens`` tokens (with ``shortest`` below 1, of that share of
    it up to all of it), each with its own image: the benchmarks' workload (:mod:`loadtest.workload`) with
    its word counts set from this tokenizer's tokens per word."""
    merge = processor.image_processor.merge_size * processor.image_processor.patch_size
    image_tokens = (check.image_side // merge) ** 2
    text_budget = max(8, check.sample_tokens - image_tokens - 24)  # 24: the chat template's own tokens
    per_word = len(processor.tokenizer(" ".join(WORDS), add_special_tokens=False)["input_ids"]) / len(WORDS)
    words = max(2, int(text_budget / per_word))
    prompt = (max(1, int(words * 9 // 10 * shortest)), words * 9 // 10)
    response = (max(1, words // 10),) * 2
    mix = Mix(samples=count, image_fraction=1.0, image_size=(check.image_side,) * 2, prompt_words=prompt,
              response_words=response, seed=seed)  # fmt: skip
    return workload_samples(mix)


def _timed_run(url: str, calls: list, concurrency: int) -> float:
    """Seconds the load generator's closed loop takes for ``calls``; every call must be answered 200."""
    run = asyncio.run(closed_loop(url, calls, concurrency, quiet=True))
    if set(run.statuses) != {200}:
        raise RuntimeError(f"HTTP calls failed: {dict(run.statuses)}")
    return run.duration_s


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def run_check(
    size: str,
    workdir: Path,
    seed: int = 0,
    dtype: str = "auto",
    profile: bool = False,
    cudnn_attention: bool = False,
    process: bool = False,
) -> dict:
    """Everything the check measures, as one JSON-able dict (see the module docstring)."""
    from vlreward.client import RewardClient
    from vlreward.service.backends.transformers import TransformersBackend, stamp_reference_probe
    from vlreward.service.http.server import BackgroundServer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if size == "7b" and device == "cpu":
        raise typer.BadParameter("--size 7b needs a CUDA GPU; use --size tiny on a CPU")
    check = CHECK_SIZES[size]
    report: dict[str, Any] = {"size": size, "device": device, "torch": torch.__version__}
    if device == "cuda":
        report["gpu"] = torch.cuda.get_device_name()
    log = _logger(report)

    started = time.perf_counter()
    model_dir = build_random_checkpoint(size, workdir / f"reward-{size}", device, seed)
    log("built and saved random weights", time.perf_counter() - started)
    peak = matmul_tflops(device)
    report["matmul_tflops"] = round(peak, 1)
    log(f"matrix products: {peak:.1f} TFLOP/s", 0)

    # The probe, stamped as `vlreward convert` and a repo-id start stamp it: its float32 model must hand its
    # device memory back before anything else (a vLLM engine) is started.
    started = time.perf_counter()
    before = reserved_memory_gb(device)
    probe = stamp_reference_probe(model_dir, device=device)
    report["stamping_memory"] = {"reserved_before_gb": before, "reserved_after_gb": reserved_memory_gb(device)}
    log(f"probe stamped in float32: {report['stamping_memory']}", time.perf_counter() - started)

    # float32 reference: the comparison samples' scores.
    started = time.perf_counter()
    fp32 = TransformersBackend(model_dir, dtype="float32", device=device, cudnn_attention=cudnn_attention)
    samples = make_samples(fp32.processor, check.samples, check, seed)
    comparison = samples[: check.comparison_samples]
    fp32_scores = fp32.score_sync([fp32.format_request_sample(s) for s in comparison])
    n_params = sum(p.numel() for p in fp32.model.parameters())
    embedding = fp32.model.model.get_input_embeddings().weight.numel()
    del fp32
    release_device_memory(device)
    log("float32 reference (comparison scores)", time.perf_counter() - started)
    flops_per_token = 2 * (n_params - embedding)
    report["parameters"] = n_params
    report["probe"] = {"score": probe.score, "scale": probe.scale}

    # The service's own load: dtype auto.
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    backend = TransformersBackend(
        model_dir, dtype=dtype, device="auto", max_batch_size=32, max_batch_tokens=65536,
        cudnn_attention=cudnn_attention,
    )  # fmt: skip
    report["load"] = {"seconds": round(time.perf_counter() - started, 2), "peak_gb": peak_memory_gb(device)}
    report["dtype"] = backend.dtype
    report["cudnn_attention"] = cudnn_attention
    weight_bytes = sum(p.numel() * p.element_size() for p in backend.model.parameters())
    report["load"]["weights_gb"] = round(weight_bytes / 1e9, 3)
    log(f"loaded in {backend.dtype}: {report['load']}", 0)
    report["probe_check"] = _check_probe(backend, probe)
    log(f"probe in {backend.dtype}: {report['probe_check']}", 0)
    formatted = [backend.format_request_sample(s) for s in samples]
    encoded = [backend.encode(f) for f in formatted]
    tokens = [e.num_tokens for e in encoded]
    report["tokens_per_sample"] = {"mean": round(statistics.mean(tokens), 1), "max": max(tokens)}
    in_process = backend.score_sync(formatted[: check.comparison_samples])

    rows = []
    # Baseline: one plain forward pass per sample (every token through every layer), in-process: the model
    # card's loop.
    backend.model.score_batch(encoded[:1], plain=True)
    synchronize(device)
    started = time.perf_counter()
    for item in encoded:
        backend.model.score_batch([item], plain=True)
    synchronize(device)
    rows.append(
        row(
            "naive loop, 1 per forward", len(encoded), sum(tokens), time.perf_counter() - started, flops_per_token, peak
        )
    )
    log("naive loop", rows[-1]["seconds"])
    # The model alone: pre-encoded samples, 32 per forward pass (no HTTP, no image decoding).
    seconds, _ = _timed_batches(backend, encoded, device)
    rows.append(
        row("in-process, 32 per forward, pre-encoded", len(encoded), sum(tokens), seconds, flops_per_token, peak)
    )
    log(rows[-1]["mode"], seconds)
    # The same without the cached opening: rows that continue a cache attend with an explicit mask (as rows
    # of unequal lengths do), and torch's flash kernel takes no mask on CUDA.
    opening, backend.model.opening = backend.model.opening, None
    try:
        seconds, _ = _timed_batches(backend, encoded, device)
    finally:
        backend.model.opening = opening
    name = "in-process, 32 per forward, pre-encoded, no cached opening"
    rows.append(row(name, len(encoded), sum(tokens), seconds, flops_per_token, peak))
    log(rows[-1]["mode"], seconds)
    report["packing"], packing_rows = _packing_rows(backend, check, seed, flops_per_token, peak, device)
    rows += packing_rows
    log(f"mixed lengths, padded against packed: {report['packing']}", 0)
    report["patch_embed"] = _patch_embed_timing(backend, encoded[:32], device)
    log(f"patch embedding, convolution against product: {report['patch_embed']}", 0)
    if profile:
        report["profile"] = _profile(backend, encoded[:32], device)

    with BackgroundServer(backend, max_batch_size=32, max_batch_tokens=65536, max_wait_ms=2.0) as server:
        with RewardClient(server.url, timeout_s=600) as client:
            http_scores = client.score(comparison).scores
            client.score(samples[:2])  # warm-up of the HTTP path
        # The suite's load generator: each row's calls one at a time, then every one-sample call at once.
        for batch in (1, 8, 32):
            calls = [score_call(chunk) for chunk in _chunks(samples, batch)]
            seconds = _timed_run(server.url, calls, concurrency=1)
            rows.append(
                row(f"HTTP /score, {batch} per request", len(samples), sum(tokens), seconds, flops_per_token, peak)
            )
            log(rows[-1]["mode"], seconds)
        seconds = _timed_run(server.url, [score_call([item]) for item in samples], concurrency=len(samples))
        rows.append(
            row("HTTP /score, 1 per request, all at once", len(samples), sum(tokens), seconds, flops_per_token, peak)
        )
        log(rows[-1]["mode"], seconds)
        report["rank"] = _rank_vs_score(server.url, samples[:4])
        log(f"/rank N=8: {report['rank']}", 0)
        report["grpo"] = _grpo_groups(server.url, samples[:4], samples)
        log(f"GRPO G=8: {report['grpo']}", 0)
    report["rows"] = rows
    report["peak_gpu_memory_gb"] = peak_memory_gb(device)

    differences = [abs(a - b) for a, b in zip(in_process, fp32_scores, strict=True)]
    report["bf16_vs_fp32"] = {
        "dtype": backend.dtype,
        "samples": len(differences),
        "max_abs": max(differences),
        "mean_abs": statistics.mean(differences),
        "max_share_of_probe_scale": max(differences) / probe.scale,
        "fp32_score_std": statistics.pstdev(fp32_scores),
    }
    http_vs_in_process = max(abs(a - b) for a, b in zip(http_scores, in_process, strict=True))
    report["http_vs_in_process_max_abs"] = http_vs_in_process
    asyncio.run(backend.close())
    if process:
        del backend
        release_device_memory(device)
        started = time.perf_counter()
        report["process"] = _process_check(model_dir, samples, dtype, flops_per_token, peak)
        log(f"process model: {report['process']}", time.perf_counter() - started)
    return report


def _profile(backend: Any, batch: list, device: str, top: int = 15) -> dict:
    """Where one forward pass of ``batch`` spends its time: the busiest operators and how much of the wall
    time the device was busy (printed; the JSON keeps the same rows)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=activities) as prof:
        started = time.perf_counter()
        backend.model.score_batch(batch)
        synchronize(device)
        wall = time.perf_counter() - started
    key = "device_time_total" if device.startswith("cuda") else "cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)
    rows = [
        {"op": e.key, "calls": e.count, "ms": round(getattr(e, key) / 1e3, 2)}
        for e in events
        if not e.key.startswith("ProfilerStep")
    ][:top]
    # Kernel rows only: an operator's row also carries the device time of the kernels it launched.
    kernels = (
        sum(e.self_device_time_total for e in prof.key_averages() if e.device_type == DeviceType.CUDA) / 1e6
        if device.startswith("cuda")
        else None
    )
    print(
        f"profile of one forward pass of {len(batch)} samples: wall {wall * 1e3:.1f} ms, device busy "
        f"{'n/a' if kernels is None else f'{kernels * 1e3:.1f} ms'}"
    )
    for r in rows:
        print(f"  {r['op'][:60]:60} {r['calls']:6d} {r['ms']:10.2f} ms")
    return {
        "wall_ms": round(wall * 1e3, 2),
        "device_busy_ms": None if kernels is None else round(kernels * 1e3, 2),
        "top": rows,
    }


def _timed_batches(backend: Any, encoded: list, device: str) -> tuple[float, list]:
    """Seconds to score ``encoded`` in process, 32 per forward pass, and the scores in order."""
    started = time.perf_counter()
    scores = [value for chunk in _chunks(encoded, 32) for value in backend.model.score_batch(chunk)]
    synchronize(device)
    return time.perf_counter() - started, scores


def _packing_rows(
    backend: Any, check: CheckSize, seed: int, flops_per_token: float, peak: float, device: str
) -> tuple[dict, list[dict]]:
    """Distinct samples whose prompts run from an eighth to all of a sample twice ``check.sample_tokens``
    long, 32 per forward pass in arrival order, padded and packed (:mod:`vlreward.service.model.packing`):
    a row each (MFU on the real tokens), the padding's share, and the largest score difference between
    the two."""
    varied = CheckSize(check.samples, check.sample_tokens * 2, check.image_side, check.comparison_samples)
    raw = make_samples(backend.processor, check.samples, varied, seed + 1, shortest=1 / 8)
    encoded = [backend.encode(backend.format_request_sample(s)) for s in raw]
    tokens = sum(e.num_tokens for e in encoded)
    padded_tokens = sum(max(e.num_tokens for e in chunk) * len(chunk) for chunk in _chunks(encoded, 32))
    from vlreward.service.model.packing import varlen_kernel

    rows, scores = [], {}
    saved = backend.model.pack_batches
    try:
        for mode in ("padded", "packed"):
            backend.model.pack_batches = mode == "packed"
            backend.model.score_batch(encoded[:2])  # this path's first call
            synchronize(device)
            seconds, scores[mode] = _timed_batches(backend, encoded, device)
            name = f"in-process, 32 per forward, mixed lengths, {mode}"
            rows.append(row(name, len(encoded), tokens, seconds, flops_per_token, peak))
    except Exception as exc:  # noqa: BLE001  the rest of the check still measures
        return {"error": repr(exc), "varlen_kernel": varlen_kernel()}, rows
    finally:
        backend.model.pack_batches = saved
    differences = [abs(a - b) for a, b in zip(scores["padded"], scores["packed"], strict=True)]
    lengths = [e.num_tokens for e in encoded]
    summary = {"samples": len(encoded), "shortest": min(lengths), "longest": max(lengths),
               "padding_share": round(1 - tokens / padded_tokens, 3),
               "max_abs_difference": max(differences), "varlen_kernel": varlen_kernel()}  # fmt: skip
    return summary, rows


def _patch_embed_timing(backend: Any, batch: list, device: str, repeats: int = 20) -> dict:
    """The vision tower's patch embedding of ``batch``'s images, as transformers' convolution and as the
    service's product (:mod:`vlreward.service.model.patch_embed`): median milliseconds of each, and their
    largest difference."""
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as qwen

    embed = backend.model.model.visual.patch_embed
    pixels = torch.cat([e.pixel_values for e in batch if e.pixel_values is not None]).to(device, backend.model.dtype)
    ways = {
        "convolution": lambda: qwen.Qwen2_5_VisionPatchEmbed.forward(embed, pixels),
        "product": lambda: embed(pixels),
    }
    result: dict[str, Any] = {"patches": len(pixels)}
    with torch.inference_mode():
        outputs = {name: way() for name, way in ways.items()}  # first calls (cuDNN/cuBLAS choose a kernel)
        for name, way in ways.items():
            times = []
            for _ in range(repeats):
                synchronize(device)
                started = time.perf_counter()
                way()
                synchronize(device)
                times.append((time.perf_counter() - started) * 1000)
            result[f"{name}_ms"] = round(statistics.median(times), 3)
    result["max_abs_difference"] = float((outputs["convolution"].float() - outputs["product"].float()).abs().max())
    return result


def _check_probe(backend: Any, probe: Any) -> dict:
    """The start-up probe in the served dtype: its deviation from the float32 stamp, against the tolerance.
    When it would refuse readiness the probe is re-stamped in the served dtype (and the report says so), so
    that the rest of the check still measures."""
    from vlreward.service.model.probe import tolerance

    actual = backend.score_request_sample(probe.sample)
    deviation = abs(actual - probe.score)
    allowed = tolerance(probe, backend.dtype)
    result = {
        "deviation": deviation,
        "share_of_scale": deviation / probe.scale,
        "tolerance": allowed,
        "passes": deviation <= allowed,
    }
    if not result["passes"]:
        backend.stamp_probe()
    return result


def _rank_vs_score(url: str, prompts: list[dict]) -> dict:
    """One /rank of 8 responses per prompt against 8 separate /score calls (sent at once) of the same pairs."""
    from vlreward.client import RewardClient

    rng = random.Random(1)
    rank_s = score_s = 0.0
    largest = 0.0
    with RewardClient(url, timeout_s=600) as client:
        for sample in prompts:
            words = sample["response"].split()
            responses = [" ".join(rng.sample(words, k=len(words))) for _ in range(8)]
            started = time.perf_counter()
            ranked = client.rank(sample["prompt"], responses, images=sample["images"]).scores
            rank_s += time.perf_counter() - started
            items = [{"prompt": sample["prompt"], "response": r, "images": sample["images"]} for r in responses]
            score_s += _timed_run(url, [score_call([item]) for item in items], concurrency=len(items))
            separate = client.score(items).scores
            largest = max(largest, max(abs(a - b) for a, b in zip(ranked, separate, strict=True)))
    return {
        "prompts": len(prompts),
        "rank_s": round(rank_s, 4),
        "separate_score_s": round(score_s, 4),
        "speed-up": round(score_s / rank_s, 2),
        "max_abs_score_difference": largest,
    }


def process_copy(model_dir: Path, destination: Path) -> Path:
    """The same weights declared as a process model (the default step tag): the weights linked, not copied."""
    from vlreward.service.kinds import PROCESS, ProcessHead, declare_kind

    destination.mkdir(parents=True)
    for path in model_dir.iterdir():
        if path.name in ("vlreward_probe.json", "vlreward_hash.json"):
            continue
        if path.suffix == ".safetensors":
            (destination / path.name).symlink_to(path.resolve())
        elif path.name == "config.json":
            config = declare_kind(json.loads(path.read_text()), PROCESS, ProcessHead())
            (destination / path.name).write_text(json.dumps(config, indent=2))
        else:
            (destination / path.name).write_bytes(path.read_bytes())
    return destination


def _process_check(model_dir: Path, samples: list[dict], dtype: str, flops_per_token: float, peak: float) -> dict:
    """A process model on the same weights in the served dtype: the probe's step scores against their
    float32 stamp, step lists of 4 steps scored 32 per forward pass in process and 32 per /score call, the
    HTTP step scores against the in-process ones, and the prefix property's largest deviation."""
    from loadtest.suite import as_steps
    from vlreward.client import RewardClient
    from vlreward.service.backends.transformers import TransformersBackend, stamp_reference_probe
    from vlreward.service.http.server import BackgroundServer
    from vlreward.service.model.probe import ProbeMismatch, read_probe, verify_probe

    device = "cuda" if torch.cuda.is_available() else "cpu"
    prm_dir = process_copy(model_dir, model_dir.parent / "process")
    probe = stamp_reference_probe(prm_dir, device=device)
    backend = TransformersBackend(prm_dir, dtype=dtype, device="auto", max_batch_size=32, max_batch_tokens=65536)
    result: dict[str, Any] = {"dtype": backend.dtype, "probe_step_scores_fp32": probe.step_scores}
    served = backend.score_sync([backend.format_request_sample(probe.sample)])[0]
    try:
        verify_probe(read_probe(prm_dir), served, backend.dtype)
        result["probe_passes"] = True
    except ProbeMismatch as exc:
        result["probe_passes"], result["probe_error"] = False, str(exc)
    items = [as_steps(sample) for sample in samples]
    formatted = [backend.format_request_sample(item) for item in items]
    encoded = [backend.encode(f) for f in formatted]
    tokens = sum(e.num_tokens for e in encoded)
    backend.model.score_batch(encoded[:2])
    synchronize(device)
    started = time.perf_counter()
    in_process = [logits for chunk in _chunks(encoded, 32) for logits in backend.model.score_batch(chunk)]
    synchronize(device)
    rows = [row("PRM in-process, 32 per forward", len(encoded), tokens, time.perf_counter() - started,
                flops_per_token, peak)]  # fmt: skip
    server = BackgroundServer(backend, max_batch_size=32, max_batch_tokens=65536, max_wait_ms=2.0)
    with server, RewardClient(server.url, timeout_s=600) as client:
        client.score(items[:2])  # warm-up of the HTTP path
        started = time.perf_counter()
        details = [d for chunk in _chunks(items, 32) for d in client.score(chunk).details]
        rows.append(row("PRM HTTP /score, 32 per request", len(items), tokens, time.perf_counter() - started,
                        flops_per_token, peak))  # fmt: skip
        prefixes = [{**items[0], "steps": items[0]["steps"][:k]} for k in range(1, len(items[0]["steps"]) + 1)]
        prefix_scores = [d["step_scores"] for d in client.score(prefixes).details]
    head = backend.process
    http_vs = max(abs(a - b) for d, logits in zip(details, in_process, strict=True)
                  for a, b in zip(d["step_scores"], head.step_scores(logits), strict=True))  # fmt: skip
    full = prefix_scores[-1]
    prefix = max(abs(a - b) for k, got in enumerate(prefix_scores, 1) for a, b in zip(got, full[:k], strict=True))
    result.update(
        rows=rows, steps_per_item=len(items[0]["steps"]), http_vs_in_process_max_abs=http_vs,
        prefix_property_max_abs=prefix,
    )  # fmt: skip
    asyncio.run(backend.close())
    return result


def _logger(report: dict) -> Any:
    started = time.perf_counter()

    def log(what: str, seconds: float) -> None:
        print(
            f"[{time.perf_counter() - started:7.1f} s] {what}" + (f" ({seconds:.2f} s)" if seconds else ""), flush=True
        )

    return log


@app.command()
def main(
    size: str = typer.Option("7b", help="7b (Qwen2.5-VL-7B's architecture, needs CUDA) or tiny (CPU, seconds)."),
    output: Path = typer.Option(Path("loadtest/results/gpu_check"), help="JSON and PNG path (no suffix)."),
    workdir: Path | None = typer.Option(None, help="Where the random checkpoint is written (default: a temp dir)."),
    seed: int = typer.Option(0),
    dtype: str = typer.Option("auto", help="The served dtype (auto: bf16 on CUDA, fp32 on CPU)."),
    profile: bool = typer.Option(False, help="Also profile one forward pass of 32 samples (top operators)."),
    tolerance: float = typer.Option(1e-4, help="Largest HTTP-vs-in-process score difference accepted."),
    cudnn_attention: bool = typer.Option(False, help="Let torch use cuDNN's attention (the service's default: not)."),
    process: bool = typer.Option(False, help="Also serve the same weights as a process model (step lists)."),
) -> None:
    if size not in CHECK_SIZES:
        raise typer.BadParameter(f"size must be one of {', '.join(CHECK_SIZES)}")
    print("Command: python -m loadtest.gpu_check " + " ".join(sys.argv[1:]), flush=True)
    with tempfile.TemporaryDirectory(prefix="vlreward-gpu-check-", dir=workdir) as tmp:
        report = run_check(size, Path(tmp), seed, dtype, profile, cudnn_attention, process)
    report["command"] = "python -m loadtest.gpu_check " + " ".join(sys.argv[1:])
    print_table(report)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    plotted = write_plot(report, output.with_suffix(".png"))
    print(f"wrote {output.with_suffix('.json')}" + (f" and {output.with_suffix('.png')}" if plotted else ""))
    if not math.isfinite(report["http_vs_in_process_max_abs"]) or report["http_vs_in_process_max_abs"] > tolerance:
        print(f"FAIL: HTTP scores differ from in-process scores by more than {tolerance}", file=sys.stderr)
        raise typer.Exit(1)
    if not report["probe_check"]["passes"]:
        print("FAIL: the start-up probe's tolerance refuses this dtype's correct weights", file=sys.stderr)
        raise typer.Exit(1)
    prm = report.get("process")
    if prm and (not prm["probe_passes"] or prm["http_vs_in_process_max_abs"] > tolerance):
        print("FAIL: the process model's probe or its HTTP step scores are off", file=sys.stderr)
        raise typer.Exit(1)
    if not stamping_released_memory(report):
        print("FAIL: stamping the probe kept GPU memory a vLLM engine started next would need", file=sys.stderr)
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
