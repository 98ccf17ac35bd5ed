"""One command that measures the service against the baselines a user would pick, the same way each time.

    python -m loadtest.suite --size bench                  # docs/performance.md's table; minutes
    python -m loadtest.suite --size tiny --smoke           # CI: a few requests per row, scores checked

On one model built here (seeded; ``--model`` for another), with distinct samples (loadtest.workload) and
every comparison run as alternating rounds with both sides up (A B A B ..., one seed per round, so
machine noise hits both sides and no round repeats another's samples into a cache):

- transformers backend: the naive model-card loop in process (prepare + one plain forward pass per sample,
  every token through every layer) against
  ``vlreward serve`` at concurrency 1 / 8 / 32 (one sample per request), and against the in-process limit
  (the same samples prepared and fed to the model in planned batches, no HTTP);
- GRPO: ``/score`` calls of G=8 responses sharing one prompt and image, against the same calls where
  every item has its own image (same token counts; nothing to share);
- ``/rank`` N=8 against the same 8 samples as 8 one-item ``/score`` calls, sent one after another (a
  best-of-N client scoring candidates in a loop) and sent together (which the batcher already shares a
  prefix across, so this row shows what /rank adds on top);
- p99 latency at concurrency 1 against the service model's own forward time for those samples (one at a
  time, in process, right after each c=1 round so that both see the same machine);
- process model (a random head read at every step tag, on the same backbone): ``/score`` of step lists at
  concurrency 8 against the in-process loop (one sample at a time through the backend), and GRPO groups
  of 8 step lists sharing one prompt and image against the same calls with an image each;
- process model on the vLLM backend: one ``classify`` request per step (its prompt ends at the step's
  tag; the prefix cache shares the earlier steps) against one ``token_classify`` request per item with
  vLLM's step pooling (no prefix cache), each a ``vlreward serve --backend vllm``: step lists at
  concurrency 16, and GRPO groups of 8 step lists sharing one prompt and image;
- judge (a generative checkpoint on the same backbone, the generic declaration, read from logits):
  ``/score`` (its pointwise rating) and ``/compare`` (pairs asked in both orders) at concurrency 8 against
  the model card's loop (``Qwen2_5_VLForConditionalGeneration``, one question at a time, the verdict
  tokens' logits read at the last position);
- judge, generate mode: the same judge writing its answers (greedy, 32 new tokens at most) through
  ``vlreward serve --backend vllm`` against ``vllm serve --runner generate`` sent the same prompts as chat
  messages, at concurrency 16: tokens written per second (both answers must be the same text);
- two models: one ``vlreward serve`` holding both against two servers with one each, on the same machine
  and the same traffic (one-sample calls, half to each model; throughput and p99);
- K heads: an ensemble of a multi-head model's K heads (one forward pass) against the ensemble of K one-head
  models with the same heads (K passes), one server each, the same one-sample calls (throughput, memory);
- K adapters: an ensemble of K LoRA adapters on one base against the ensemble of the K merged models, the same
  way (each adapter still runs its own pass: the saving is memory);
- offline: ``vlreward score --engine ray`` against the in-process engine, rows per second of whole runs on the
  same distinct rows (Ray's overhead);
- vLLM backend: ``vlreward serve --backend vllm`` against ``vllm serve`` (``/classify``, chat form with
  images, raw scores) at concurrency 1 / 16 / 64, and against the in-process limit (vLLM's AsyncLLM fed
  the same prompts and images through our backend class, no HTTP).

Every comparison first runs one untimed warm-up round per side, whose pace sizes the timed rounds: each
sends enough distinct units (samples, groups, pairs, rows) that both sides' rounds last at least
``min_round_s`` (10 s; a second-long round of a small model says little on a shared 2-core machine), and
there are 7 of them. Ratios are A/B of samples/s (latency: B/A; the judge's generate row: of tokens
written per second), reported as the median over rounds with the interquartile range, min and max. Every
path's scores are checked against the in-process solo scores (1e-5 on the same backend, 1e-4 across
backends); a difference fails the command. Writes ``suite_<size>.json`` and ``.png``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import typer
from tqdm import tqdm

from loadtest.device import cpu_name
from loadtest.loadgen import (
    Call,
    Run,
    chat_generate_call,
    classify_call,
    closed_loop,
    compare_call,
    generate_call,
    quantile,
    rank_call,
    score_call,
)
from loadtest.report import interquartile
from loadtest.servers import ServerProcess, all_ready, start_vllm_serve, start_vlreward
from loadtest.workload import Mix, make_groups, make_samples

SAME_BACKEND = 1e-5
ACROSS_BACKENDS = 1e-4
HEADS_K = 3
"""Heads of the multi-head model the ``heads`` section serves (and separate models it compares with)."""


@dataclass(frozen=True)
class Plan:
    """How much each row sends (``--smoke`` makes everything small)."""

    rounds: int
    samples: int
    """Samples of a comparison's warm-up round (pairs: half; offline rows: 4x); the timed rounds send at least
    as many."""
    grpo_groups: int
    """GRPO groups of a warm-up round."""
    hf_concurrency: tuple[int, ...]
    vllm_concurrency: tuple[int, ...]
    vllm_requests: int
    """One-sample requests of a vLLM row's warm-up round."""
    min_round_s: float = 0.0
    """Each timed round lasts at least this long on both sides, its units sized from the warm-up round's pace
    (0: no warm-up round, every round sends the warm-up's units)."""


OFFLINE_ROW = "score --engine ray / in process"
OFFLINE_ROWS_PER_SAMPLE = 4
"""Rows per offline run: this many times the plan's samples (a run reads, scores and writes them all)."""
OFFLINE_ROWS_PER_SHARD = 64


PLANS = {
    "full": Plan(rounds=7, samples=96, grpo_groups=6, hf_concurrency=(1, 8, 32), vllm_concurrency=(1, 16, 64),
                 vllm_requests=192, min_round_s=10.0),
    "smoke": Plan(rounds=1, samples=8, grpo_groups=1, hf_concurrency=(1, 8), vllm_concurrency=(1, 8), vllm_requests=8),
}  # fmt: skip
TARGETS = {  # the targets for the bench model on a 2-core CPU (None: reported only)
    "service c=1 / naive loop": 1.1,
    "service c=32 / naive loop": 1.2,
    "service c=32 / in-process batches": 0.9,
    "GRPO G=8 shared / own images": 2.5,
    "/rank N=8 / 8 sequential /score": 2.5,
    "/rank N=8 / 8 concurrent /score": None,
    "forward time / p99 latency c=1": 1 / 1.5,
    "vLLM backend / vllm serve, c=1": 1.0,
    "vLLM backend / vllm serve, c=16": 1.0,
    "vLLM backend / vllm serve, c=64": 1.0,
    "PRM service c=8 / in-process loop": None,
    "PRM GRPO G=8 shared / own images": None,
    "vLLM PRM per-step / step pooling, c=16": None,
    "vLLM PRM GRPO G=8 per-step / step pooling": None,
    "two models: one server / two servers": None,
    "two models: two servers p99 / one server p99": None,
    "two models: memory, two servers / one": None,
    f"K={HEADS_K} heads one pass / K models": None,
    f"K={HEADS_K} heads: memory, K models / heads": None,
    f"K={HEADS_K} adapters one base / K models": None,
    f"K={HEADS_K} adapters: memory, K models / adapters": None,
    OFFLINE_ROW: 0.85,  # Ray's overhead at most 15 %
}


@dataclass
class Comparison:
    """A/B over alternating rounds."""

    name: str
    a: str
    b: str
    ratios: list[float] = field(default_factory=list)
    a_runs: list[dict] = field(default_factory=list)
    b_runs: list[dict] = field(default_factory=list)
    metric: str = "samples_per_s"
    """What the ratio divides: a run summary's key (``output_token_throughput``: tokens written per second)."""
    units_by_round: list[int] = field(default_factory=list)
    """Units (samples, groups, pairs, rows) each timed round sent."""
    warm_up: list[dict] = field(default_factory=list)
    """The untimed warm-up round's summaries, A then B (empty: none)."""

    @property
    def median(self) -> float:
        return statistics.median(self.ratios)

    @property
    def target_met(self) -> bool | None:
        """Whether the exact median (not a rounded one) reaches the row's target; None: no target."""
        target = TARGETS.get(self.name)
        return None if target is None else self.median >= target

    def record(self) -> dict:
        return {
            "name": self.name, "a": self.a, "b": self.b, "median_ratio": self.median, "min_ratio": min(self.ratios),
            "max_ratio": max(self.ratios), "ratios": self.ratios, "target": TARGETS.get(self.name),
            "target_met": self.target_met, "metric": self.metric, "units_per_round": self.units_by_round,
            "round_seconds": [[a.get("duration"), b.get("duration")]  # (a memory row: A's runs are its servers)
                              for a, b in itertools.zip_longest(self.a_runs, self.b_runs, fillvalue={})],
            "warm_up": self.warm_up, "a_runs": self.a_runs, "b_runs": self.b_runs,
        }  # fmt: skip


@dataclass
class Checks:
    """Every path's scores against the reference (in-process solo scores)."""

    rows: list[dict] = field(default_factory=list)

    def add(self, path: str, got: list[float], expected: list[float], tolerance: float) -> None:
        if len(got) != len(expected):
            self.rows.append({"path": path, "max_abs_diff": None, "tolerance": tolerance, "ok": False})
            return
        diff = max((abs(a - b) for a, b in zip(got, expected, strict=True)), default=0.0)
        self.rows.append({"path": path, "max_abs_diff": diff, "tolerance": tolerance, "ok": diff <= tolerance})

    def add_same(self, path: str, got: list[str], expected: list[str]) -> None:
        """Texts that must be identical (generated answers): the share that differ, tolerance 0."""
        share = None  # a missing answer: not comparable
        if len(got) == len(expected):
            share = sum(a != b for a, b in zip(got, expected, strict=True)) / max(1, len(expected))
        self.rows.append({"path": path, "max_abs_diff": share, "tolerance": 0.0, "ok": share == 0.0})

    @property
    def ok(self) -> bool:
        return all(row["ok"] for row in self.rows)


def formatted(backend, sample: dict):
    """A Sample dict formatted for ``backend`` (images decoded in process, as a user's own loop does)."""
    from vlreward.service.prepare import prepare_request_sample

    return prepare_request_sample(sample, backend.processor, judge=backend.judge)


def _in_process_run(samples: int, seconds: float) -> dict:
    return {"samples_per_s": samples / seconds, "duration": seconds, "completed": samples}


def naive_loop(backend, samples: list[dict]) -> tuple[dict, list[float]]:
    """The model card's loop: prepare one sample, one plain forward pass (every token through every layer,
    as transformers runs it), next. Returns (summary, scores)."""
    from vlreward.service.backends.transformers import TransformersBackend

    assert isinstance(backend, TransformersBackend)
    backend.model.score_batch([backend.encode(formatted(backend, samples[0]))], plain=True)  # warm-up
    scores = []
    started = time.perf_counter()
    for sample in samples:
        scores += backend.model.score_batch([backend.encode(formatted(backend, sample))], plain=True)
    return _in_process_run(len(samples), time.perf_counter() - started), scores


def forward_seconds(backend, samples: list[dict]) -> list[float]:
    """The service's own forward pass per sample, one at a time on every core (what a lone request costs
    the model; the latency row's reference)."""
    encoded = [backend.encode(formatted(backend, s)) for s in samples]
    backend.model.score_batch(encoded[:1])  # warm-up
    seconds = []
    for sample in encoded:
        started = time.perf_counter()
        backend.model.score_batch([sample])
        seconds.append(time.perf_counter() - started)
    return seconds


def planned_batches(backend, samples: list[dict]) -> tuple[dict, list[float]]:
    """The transformers limit: the same samples prepared, then scored in planned batches (no HTTP)."""
    backend.score_encoded_sync([backend.encode(formatted(backend, samples[0]))])  # warm-up
    started = time.perf_counter()
    encoded = [backend.encode(formatted(backend, s)) for s in samples]
    scores = backend.score_encoded_sync(encoded)
    return _in_process_run(len(samples), time.perf_counter() - started), scores


def http_run(url: str, calls: list[Call], concurrency: int, warm_up: int = 0) -> Run:
    """The calls sent with ``concurrency`` in flight; every one must succeed."""
    run: Run = asyncio.run(closed_loop(url, calls, concurrency, warm_up=warm_up, quiet=True))
    if run.statuses.get(200, 0) != len(calls):
        raise RuntimeError(f"{url}: statuses {dict(run.statuses)}")
    return run


def http(url: str, calls: list[Call], concurrency: int, warm_up: int = 0) -> tuple[dict, list[float]]:
    run = http_run(url, calls, concurrency, warm_up)
    return run.summary(), run.flat_scores()


Side = Callable[[int, int], tuple[dict, list]]
"""One side of a comparison: (round number, units to send) -> (summary, scores). Round ``plan.rounds`` is the
warm-up round: every round's data is its own, so no round repeats another's samples into a cache."""
ROUND_SPARE = 1.5
"""Timed rounds are sized to last this much more than ``min_round_s`` at the warm-up round's pace (a warmed-up
server runs faster than in its warm-up round: the tiny model's vLLM rounds by up to 1.3x)."""


def round_units(plan: Plan, units: int, seconds: list[float]) -> int:
    """Units per timed round, from a round of ``units`` that took ``seconds`` (each side's): unchanged while its
    faster side lasted ``plan.min_round_s``, else enough for that at its pace (with :data:`ROUND_SPARE`)."""
    fastest = min(seconds, default=0.0)
    if plan.min_round_s <= 0 or fastest <= 0 or fastest >= plan.min_round_s:
        return units
    return max(units, math.ceil(units * plan.min_round_s * ROUND_SPARE / fastest))


def round_samples(mix: Mix, seed: int) -> Callable[[int, int], list[dict]]:
    """Round r's ``n`` distinct samples of ``mix`` (seed ``seed + r``; the warm-up round's too), made once."""
    return functools.cache(lambda r, n: make_samples(mix.with_(samples=n, seed=seed + r)))


def alternate(
    name: str, a: str, b: str, plan: Plan, units: int, run_a: Side, run_b: Side, metric: str = "samples_per_s"
) -> tuple[Comparison, list, list]:
    """An untimed warm-up round of ``units`` on each side (unless the plan has no minimum round length), then
    A then B, ``plan.rounds`` times, each round the same data on both sides, sized by :func:`round_units`;
    returns round 0's scores too."""
    comparison = Comparison(name, a, b, metric=metric)
    if plan.min_round_s > 0:
        comparison.warm_up = [run_a(plan.rounds, units)[0], run_b(plan.rounds, units)[0]]
        units = round_units(plan, units, [run["duration"] for run in comparison.warm_up])
    first_a, first_b = [], []
    for index in tqdm(range(plan.rounds), desc=name, file=sys.stderr, leave=False):
        comparison.units_by_round.append(units)
        summary_a, scores_a = run_a(index, units)
        summary_b, scores_b = run_b(index, units)
        # a round shorter than the minimum: the later ones grow (a round is never rerun: its samples are cached)
        units = round_units(plan, units, [summary_a["duration"], summary_b["duration"]])
        comparison.a_runs.append(summary_a)
        comparison.b_runs.append(summary_b)
        ratio = summary_a[metric] / summary_b[metric]
        comparison.ratios.append(ratio)
        if index == 0:
            first_a, first_b = scores_a, scores_b
    return comparison, first_a, first_b


def transformers_section(model: Path, plan: Plan, checks: Checks) -> list[Comparison]:
    from vlreward.service.backends.transformers import TransformersBackend

    backend = TransformersBackend(model, dtype="float32", device="cpu")
    samples_of = round_samples(Mix(), 0)

    def naive(r: int, n: int):
        return naive_loop(backend, samples_of(r, n))

    server = start_vlreward(model, "transformers", dtype="float32", max_queue=100_000, max_items=256)
    comparisons = []
    latency = Comparison("forward time / p99 latency c=1", "model forward p99 (in process)", "HTTP p99, c=1")
    try:
        for concurrency in plan.hf_concurrency:

            def service(r: int, n: int, c: int = concurrency):
                calls = [score_call([s]) for s in samples_of(r, n)]
                summary, scores = http(server.url, calls, c, warm_up=min(c, 4))
                if c == 1 and r < plan.rounds:  # the same samples' own forward times, right after (same noise)
                    forward_p99 = quantile(forward_seconds(backend, samples_of(r, n)), 0.99) * 1000
                    latency.ratios.append(forward_p99 / summary["p99_e2el_ms"])
                    latency.a_runs.append({"p99_forward_ms": forward_p99})
                    latency.b_runs.append({"p99_e2el_ms": summary["p99_e2el_ms"]})
                return summary, scores

            comparison, ours, naive_scores = alternate(
                f"service c={concurrency} / naive loop", f"vlreward serve, c={concurrency}", "naive loop", plan,
                plan.samples, service, naive,
            )  # fmt: skip
            comparisons.append(comparison)
            checks.add(f"/score c={concurrency} (transformers)", ours, naive_scores, SAME_BACKEND)
        top = max(plan.hf_concurrency)
        comparison, ours, limit = alternate(
            f"service c={top} / in-process batches", f"vlreward serve, c={top}", "in-process planned batches",
            plan, plan.samples,
            lambda r, n: http(server.url, [score_call([s]) for s in samples_of(r, n)], top, warm_up=4),
            lambda r, n: planned_batches(backend, samples_of(r, n)),
        )  # fmt: skip
        comparisons.append(comparison)
        checks.add("in-process planned batches", limit, ours, SAME_BACKEND)
        if latency.ratios:
            comparisons.append(latency)
    finally:
        server.stop()
    return comparisons


def grpo_section(model: Path, plan: Plan, checks: Checks) -> list[Comparison]:
    """GRPO groups through /score (shared vs own images) and /rank vs separate /score calls (transformers)."""
    from vlreward.service.backends.transformers import TransformersBackend

    backend = TransformersBackend(model, dtype="float32", device="cpu")
    grpo = Mix(group=8, image_fraction=1.0, image_size=(224, 224), prompt_words=(390, 390), response_words=(48, 48))
    # 390 / 48 words: a 512-token prompt and 64-token answers in words of English text; the bench
    # model's 835-token vocabulary makes them ~1,050 and ~140 tokens (one 224x224 image: 64 more).
    shared = functools.cache(lambda r, n: make_groups(grpo.with_(samples=8 * n, seed=100 + r)))
    own = functools.cache(lambda r, n: make_groups(grpo.with_(samples=8 * n, seed=100 + r, shared_images=False)))

    def solo(groups: list[list[dict]]) -> list[float]:
        return [backend.score_sync([formatted(backend, s)])[0] for g in groups for s in g]

    server = start_vlreward(model, "transformers", dtype="float32", max_queue=100_000, max_items=256)
    comparisons = []
    try:
        comparison, shared_scores, own_scores = alternate(
            "GRPO G=8 shared / own images", "/score, G=8 sharing prompt + image", "/score, G=8 with own images",
            plan, plan.grpo_groups, lambda r, n: http(server.url, [score_call(g) for g in shared(r, n)], 1, warm_up=1),
            lambda r, n: http(server.url, [score_call(g) for g in own(r, n)], 1, warm_up=1),
        )  # fmt: skip
        comparisons.append(comparison)
        first = comparison.units_by_round[0]
        checks.add("/score GRPO groups (shared prefix)", shared_scores, solo(shared(0, first)), SAME_BACKEND)
        checks.add("/score G=8 own images", own_scores, solo(own(0, first)), SAME_BACKEND)
        rank = lambda r, n: http(server.url, [rank_call(g) for g in shared(r, n)], 1, warm_up=1)  # noqa: E731
        for clients, concurrency in {"sequential": 1, "concurrent": 8}.items():
            comparison, ranked, separate = alternate(
                f"/rank N=8 / 8 {clients} /score", "/rank, N=8", f"8 one-item /score calls, {clients}", plan,
                plan.grpo_groups, rank, lambda r, n, c=concurrency: http(
                    server.url, [score_call([s]) for g in shared(r, n) for s in g], c, warm_up=1),
            )  # fmt: skip
            comparisons.append(comparison)
            expected = solo(shared(0, comparison.units_by_round[0]))
            checks.add(f"8 {clients} one-item /score", separate, expected, SAME_BACKEND)
            checks.add(f"/rank N=8 ({clients} row)", ranked, expected, SAME_BACKEND)
    finally:
        server.stop()
    return comparisons


SECTIONS = (
    "transformers", "grpo", "process", "process-vllm", "judge", "judge-generate", "models", "heads", "adapters",
    "offline", "vllm",
)  # fmt: skip
"""The suite's sections, in the order they run."""
MODELS_CONCURRENCY = 16
"""Calls in flight in the two-models rows, half to each model."""


def to_both(targets: list[tuple[str, list[Call]]], concurrency: int) -> tuple[dict, list[float]]:
    """Each (url, calls) pair sent at the same time, ``concurrency`` in flight in all (split evenly); one
    summary over everything (samples/s over the common wall time, latency quantiles over every call)."""

    async def run() -> tuple[list[Run], float]:
        started = time.perf_counter()
        share = max(1, concurrency // len(targets))
        runs = await asyncio.gather(*(closed_loop(url, calls, share, warm_up=2, quiet=True) for url, calls in targets))
        return runs, time.perf_counter() - started

    runs, _ = asyncio.run(run())
    for (url, calls), done in zip(targets, runs, strict=True):
        if done.statuses.get(200, 0) != len(calls):
            raise RuntimeError(f"{url}: statuses {dict(done.statuses)}")
    merged = Run(duration_s=max(done.duration_s for done in runs))
    for done in runs:
        merged.latencies_ms += done.latencies_ms
        merged.statuses.update(done.statuses)
        merged.samples += done.samples
        merged.input_tokens += done.input_tokens
    return merged.summary(), [score for done in runs for score in done.flat_scores()]


STEPS_PER_SAMPLE = 4
"""Steps each process sample's response is cut into (by words, evenly)."""


def as_steps(sample: dict, count: int = STEPS_PER_SAMPLE) -> dict:
    """A workload sample whose response becomes ``count`` steps of about equal length."""
    words = sample["response"].split()
    size = -(-len(words) // count)
    steps = [" ".join(words[i : i + size]) for i in range(0, len(words), size)] or [sample["response"]]
    return {k: v for k, v in sample.items() if k != "response"} | {"steps": steps}


PRM_GRPO = Mix(group=8, image_fraction=1.0, image_size=(224, 224), prompt_words=(390, 390), response_words=(48, 48))
"""The process rows' GRPO groups: the scalar GRPO row's shape, each response cut into steps."""


@functools.cache
def step_samples(count: int, seed: int) -> list[dict]:
    """``count`` distinct one-sample step lists."""
    return [as_steps(s) for s in make_samples(Mix(samples=count).with_(seed=seed))]


@functools.cache
def step_groups(count: int, seed: int, shared_images: bool = True) -> list[list[dict]]:
    """``count`` GRPO groups of 8 step lists sharing a prompt (and its image, or an image each)."""
    mix = PRM_GRPO.with_(samples=8 * count, seed=seed, shared_images=shared_images)
    return [[as_steps(s) for s in group] for group in make_groups(mix)]


def prm_aggregates(backend) -> Callable[[dict], float]:
    """A process model's aggregate of one step-list sample, scored alone in process (the reference)."""
    head = backend.process

    def aggregate(sample: dict) -> float:
        return head.aggregate_of(head.step_scores(backend.score_sync([backend.format_request_sample(sample)])[0]))

    return aggregate


def process_section(model: Path, plan: Plan, checks: Checks) -> list[Comparison]:
    """A process model through ``vlreward serve`` against the in-process loop, and GRPO groups of step
    lists sharing their prompt and image against the same calls with an image each."""
    from vlreward.service.backends.transformers import TransformersBackend

    prm = build_model_like(model, seed=3, process=True)
    backend = TransformersBackend(prm, dtype="float32", device="cpu")
    aggregate = prm_aggregates(backend)

    def in_process(r: int, n: int) -> tuple[dict, list[float]]:
        samples = step_samples(n, 400 + r)
        aggregate(samples[0])  # warm-up
        started = time.perf_counter()
        scores = [aggregate(sample) for sample in samples]
        return _in_process_run(len(scores), time.perf_counter() - started), scores

    server = start_vlreward(prm, "transformers", dtype="float32", max_queue=100_000)
    try:
        service, ours, loop = alternate(
            "PRM service c=8 / in-process loop", "vlreward serve, PRM, c=8", "in-process loop, one at a time",
            plan, plan.samples,
            lambda r, n: http(server.url, [score_call([s]) for s in step_samples(n, 400 + r)], 8, warm_up=4),
            in_process,
        )  # fmt: skip
        groups, shared_scores, own_scores = alternate(
            "PRM GRPO G=8 shared / own images", "/score, 8 step lists sharing prompt + image",
            "/score, 8 step lists with own images", plan, plan.grpo_groups,
            lambda r, n: http(server.url, [score_call(g) for g in step_groups(n, 500 + r)], 1, warm_up=1),
            lambda r, n: http(server.url, [score_call(g) for g in step_groups(n, 500 + r, False)], 1, warm_up=1),
        )  # fmt: skip
    finally:
        server.stop()
    checks.add("/score, process model", ours, loop, SAME_BACKEND)
    shared, own = step_groups(groups.units_by_round[0], 500), step_groups(groups.units_by_round[0], 500, False)
    checks.add("/score, PRM GRPO groups (shared prefix)", shared_scores, [aggregate(s) for g in shared for s in g],
               SAME_BACKEND)  # fmt: skip
    checks.add("/score, PRM G=8 own images", own_scores, [aggregate(s) for g in own for s in g], SAME_BACKEND)
    return [service, groups]


def judge_like(model: Path) -> Path:
    """A judge on ``model``'s backbone (its head dropped): a generative checkpoint declaring the generic
    judge, its LM head the tied embeddings', with its probe."""
    from vlreward.service.backends.transformers import stamp_reference_probe
    from vlreward.service.judge import read_declaration
    from vlreward.training.judge import judge_model_from_base, save_judge_model

    judge = read_declaration("generic")
    network, processor = judge_model_from_base(model, judge)
    path = save_judge_model(network, processor, Path(tempfile.mkdtemp(prefix="suite-")) / "judge", judge, model)
    stamp_reference_probe(path)
    return path


def card_judge(judge_dir: Path) -> Callable[[list], list[list[float]]]:
    """The model card's way to read a judge: transformers' generative model, one formatted question at a
    time, the next-token logits of the verdict tokens (relative to the first's, as the service gives them)."""
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from vlreward.service.judge import declared_judge, verdict_token_ids

    network = Qwen2_5_VLForConditionalGeneration.from_pretrained(judge_dir, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(judge_dir)
    ids = verdict_token_ids(declared_judge(judge_dir), processor.tokenizer)

    @torch.inference_mode()
    def read(questions: list) -> list[list[float]]:
        verdicts = []
        for question in questions:
            inputs = processor(text=[question.text], images=question.images or None, return_tensors="pt")
            logits = network(**inputs).logits[0, -1, ids]
            verdicts.append((logits - logits[0]).tolist())
        return verdicts

    return read


def judge_pairs(samples: list[dict]) -> list[dict]:
    """Pairs of one sample's prompt and images: its response against the next sample's."""
    pairs = []
    for sample, other in zip(samples, samples[1:] + samples[:1], strict=True):
        shared = {key: value for key, value in sample.items() if key != "response"}
        pairs.append({**shared, "a": sample["response"], "b": other["response"]})
    return pairs


def judge_section(model: Path, plan: Plan, checks: Checks) -> list[Comparison]:
    """A judge read from logits through ``vlreward serve`` against the model card's loop: pointwise
    ratings (/score) and debiased pairwise verdicts (/compare, both orders) at concurrency 8."""
    from vlreward.service.backends.transformers import TransformersBackend
    from vlreward.service.media import MediaPolicy
    from vlreward.service.model.formatting import format_judged_orders
    from vlreward.service.prepare import load_images
    from vlreward.service.schemas import ComparePair

    judge_dir = judge_like(model)
    backend = TransformersBackend(judge_dir, dtype="float32", device="cpu")
    judge = backend.judge
    read = card_judge(judge_dir)
    samples_of = round_samples(Mix(), 600)
    pairs_of = functools.cache(lambda r, n: judge_pairs(make_samples(Mix(samples=n).with_(seed=700 + r))))

    def card_ratings(r: int, n: int) -> tuple[dict, list[float]]:
        read([formatted(backend, samples_of(r, n)[0])])  # warm-up
        started = time.perf_counter()
        ratings = [judge.rating(read([formatted(backend, sample)])[0]) for sample in samples_of(r, n)]
        return _in_process_run(len(ratings), time.perf_counter() - started), ratings

    def card_verdicts(r: int, n: int) -> tuple[dict, list[float]]:
        started = time.perf_counter()
        probs = []
        for pair in pairs_of(r, n):
            a, b = ComparePair.model_validate(pair).samples()
            images = load_images(a.image_refs(), a.image_params(), MediaPolicy(), 1 << 30, None)
            probs.append(judge.prob_a(read(format_judged_orders(a, b, images, backend.processor, judge))))
        return _in_process_run(len(probs), time.perf_counter() - started), probs

    server = start_vlreward(judge_dir, "transformers", dtype="float32", max_queue=100_000)
    try:
        rated, ours, card = alternate(
            "judge /score c=8 / model-card loop", "vlreward serve, judge ratings, c=8",
            "model-card loop, one question at a time", plan, plan.samples,
            lambda r, n: http(server.url, [score_call([s]) for s in samples_of(r, n)], 8, warm_up=4), card_ratings,
        )  # fmt: skip
        compared, ours_pairs, card_pairs = alternate(
            "judge /compare c=8 / model-card loop", "vlreward serve, judge /compare (both orders), c=8",
            "model-card loop, both orders", plan, plan.samples // 2,
            lambda r, n: http(server.url, [compare_call([p]) for p in pairs_of(r, n)], 8, warm_up=4), card_verdicts,
        )  # fmt: skip
    finally:
        server.stop()
    checks.add("/score, judge ratings", ours, card, ACROSS_BACKENDS)
    checks.add("/compare, judge (debiased)", ours_pairs, card_pairs, ACROSS_BACKENDS)
    return [rated, compared]


def one_sample_mix(plan: Plan) -> Mix:
    """One-sample RLHF requests, as the vLLM rows send them: a third with an 84x84 image, prompts of 8-40
    words, responses of 4-60."""
    return Mix(samples=plan.vllm_requests, image_fraction=1 / 3, image_size=(84, 84), prompt_words=(8, 40),
               response_words=(4, 60))  # fmt: skip


GENERATE_TOKENS = 32
"""New tokens per answer in the judge-generate row (greedy; a judge built on the suite's model writes until
its end token or this many)."""


def judge_chat(judge, sample: dict) -> list[dict]:
    """The judge's pointwise question about ``sample`` as chat messages, what a user of ``vllm serve`` sends:
    one user turn, the images then the rendered template. vLLM's chat template opens the answer as ours does
    (the generic declaration has no system message and no generate prefix): the same prompt tokens."""
    from vlreward.service.model.formatting import judged_parts
    from vlreward.service.schemas import Sample

    question, response, system = judged_parts(Sample.model_validate(sample))
    text = judge.render("pointwise", question=question, response=response, system=system)
    parts = [{"type": "image_url", "image_url": {"url": ref}} for ref in sample.get("images", [])]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def judge_generate_section(model: Path, plan: Plan, checks: Checks) -> list[Comparison]:
    """A judge writing its answers (generate mode, greedy, :data:`GENERATE_TOKENS` new tokens at most):
    ``vlreward serve --backend vllm`` (/score, mode generate) against ``vllm serve --runner generate`` given
    the same prompts (/v1/chat/completions): tokens written per second, one-sample requests at concurrency 16.
    Both run vLLM's engine in float32, so their answers must be the same text."""
    from vlreward.service.judge import read_declaration

    judge_dir = judge_like(model)
    judge = read_declaration("generic")
    concurrency = 16 if 16 in plan.vllm_concurrency else max(plan.vllm_concurrency)
    mix = one_sample_mix(plan)
    samples_of = round_samples(mix, 300)
    answers: dict[str, list[str]] = {}

    def side(name: str, url: str, call: Callable[[dict], Call]) -> Side:
        def run(r: int, n: int) -> tuple[dict, list]:
            done = http_run(url, [call(s) for s in samples_of(r, n)], concurrency, warm_up=2)
            if r == 0:
                answers[name] = [text for texts in done.texts for text in texts or []]
            return done.summary(), []

        return run

    asked = lambda s: chat_generate_call(judge_chat(judge, s), str(judge_dir), GENERATE_TOKENS)  # noqa: E731
    ours, theirs = all_ready(  # their start-ups overlap
        start_vlreward(judge_dir, "vllm", max_queue=100_000, wait=False),
        start_vllm_serve(judge_dir, runner="generate", wait=False),
    )
    try:
        comparison, _, _ = alternate(
            f"judge generate tokens/s, vLLM backend / vllm serve, c={concurrency}",
            f"vlreward serve --backend vllm, /score mode generate, c={concurrency}",
            f"vllm serve --runner generate, /v1/chat/completions, c={concurrency}", plan, plan.vllm_requests,
            side("ours", ours.url, lambda s: generate_call([s], GENERATE_TOKENS)),
            side("theirs", theirs.url, asked),
            metric="output_token_throughput",
        )  # fmt: skip
    finally:
        ours.stop()
        theirs.stop()
    checks.add_same("judge generate: vLLM backend vs vllm serve answers", answers["ours"], answers["theirs"])
    return [comparison]


def process_vllm_section(model: Path, plan: Plan, checks: Checks) -> list[Comparison]:
    """A process model on the vLLM backend, its two ways of reading the step tags side by side: one
    classify request per step (prefix-cached) against one step-pooling request per item. vLLM caches
    prefixes, so every round sends samples neither server has seen."""
    from vlreward.service.backends.transformers import TransformersBackend
    from vlreward.service.backends.vllm import STEP_SCORING

    prm = build_model_like(model, seed=3, process=True)
    aggregate = prm_aggregates(TransformersBackend(prm, dtype="float32", device="cpu"))
    starting = [start_vlreward(prm, "vllm", max_queue=100_000, vllm_step_scoring=m, wait=False) for m in STEP_SCORING]
    servers = dict(zip(STEP_SCORING, all_ready(*starting), strict=True))
    per_step, pooled = servers["per_step"].url, servers["step_pooling"].url
    concurrency = 16
    try:
        singles, per_step_scores, pooled_scores = alternate(
            f"vLLM PRM per-step / step pooling, c={concurrency}", f"per-step classify, c={concurrency}",
            f"step pooling, c={concurrency}", plan, plan.samples,
            lambda r, n: http(per_step, [score_call([s]) for s in step_samples(n, 600 + r)], concurrency, warm_up=2),
            lambda r, n: http(pooled, [score_call([s]) for s in step_samples(n, 600 + r)], concurrency, warm_up=2),
        )  # fmt: skip
        groups, per_step_groups, pooled_groups = alternate(
            "vLLM PRM GRPO G=8 per-step / step pooling", "per-step classify, 8 step lists sharing prompt + image",
            "step pooling, the same calls", plan, plan.grpo_groups,
            lambda r, n: http(per_step, [score_call(g) for g in step_groups(n, 700 + r)], 1, warm_up=1),
            lambda r, n: http(pooled, [score_call(g) for g in step_groups(n, 700 + r)], 1, warm_up=1),
        )  # fmt: skip
    finally:
        for server in servers.values():
            server.stop()
    expected = [aggregate(s) for s in step_samples(singles.units_by_round[0], 600)]
    expected_groups = [aggregate(s) for g in step_groups(groups.units_by_round[0], 700) for s in g]
    checks.add("/score PRM, vLLM per-step", per_step_scores, expected, ACROSS_BACKENDS)
    checks.add("/score PRM, vLLM step pooling", pooled_scores, expected, ACROSS_BACKENDS)
    checks.add("/score PRM GRPO groups, vLLM per-step", per_step_groups, expected_groups, ACROSS_BACKENDS)
    checks.add("/score PRM GRPO groups, vLLM step pooling", pooled_groups, expected_groups, ACROSS_BACKENDS)
    return [singles, groups]


def models_section(model: Path, plan: Plan, checks: Checks) -> list[Comparison]:
    """Two models from one server against one server per model (transformers backend, float32): the same
    distinct one-sample calls, half to each model, ``MODELS_CONCURRENCY`` in flight in all."""
    from vlreward.service.backends.transformers import TransformersBackend

    models = {"first": model, "second": build_model_like(model, seed=2)}
    samples_of = round_samples(Mix(), 300)

    def halves(r: int, n: int) -> dict[str, list[dict]]:
        return {"first": samples_of(r, n)[0::2], "second": samples_of(r, n)[1::2]}

    settings = {"dtype": "float32", "max_queue": 100_000}
    together, *separate = all_ready(
        start_vlreward(models, "transformers", wait=False, **settings),
        *(start_vlreward(path, "transformers", wait=False, **settings) for path in models.values()),
    )
    apart = dict(zip(models, separate, strict=True))
    try:
        one_server = lambda r, n: to_both(  # noqa: E731
            [(together.url, [score_call([s], name) for s in part]) for name, part in halves(r, n).items()],
            MODELS_CONCURRENCY,
        )
        two_servers = lambda r, n: to_both(  # noqa: E731
            [(apart[name].url, [score_call([s]) for s in part]) for name, part in halves(r, n).items()],
            MODELS_CONCURRENCY,
        )
        throughput, ours, theirs = alternate(
            "two models: one server / two servers", f"one server, both models, c={MODELS_CONCURRENCY}",
            f"two servers, one model each, c={MODELS_CONCURRENCY}", plan, plan.samples, one_server, two_servers,
        )  # fmt: skip
        memory = Comparison(
            "two models: memory, two servers / one", "two servers, resident memory", "one server, resident"
        )
        memory.a_runs = [{"rss_bytes": resident_bytes(server.url)} for server in apart.values()]
        memory.b_runs = [{"rss_bytes": resident_bytes(together.url)}]
        memory.ratios = [sum(run["rss_bytes"] for run in memory.a_runs) / memory.b_runs[0]["rss_bytes"]]
    finally:
        together.stop()
        for server in apart.values():
            server.stop()
    latency = Comparison("two models: two servers p99 / one server p99", "two servers, p99", "one server, p99")
    latency.a_runs = [{"p99_e2el_ms": run["p99_e2el_ms"]} for run in throughput.b_runs]
    latency.b_runs = [{"p99_e2el_ms": run["p99_e2el_ms"]} for run in throughput.a_runs]
    latency.ratios = [a["p99_e2el_ms"] / b["p99_e2el_ms"] for a, b in zip(latency.a_runs, latency.b_runs, strict=True)]
    expected = []
    for name, part in halves(0, throughput.units_by_round[0]).items():
        backend = TransformersBackend(models[name], dtype="float32", device="cpu")
        expected += [backend.score_sync([formatted(backend, s)])[0] for s in part]
    checks.add("/score, two models in one server", ours, expected, SAME_BACKEND)
    checks.add("/score, one server per model", theirs, expected, SAME_BACKEND)
    return [throughput, latency, memory]


def compare_ensembles(
    plan: Plan, what: str, row: str, seed: int, ours: tuple[str, dict[str, Path], dict],
    theirs: tuple[str, dict[str, Path], dict],
) -> tuple[list[Comparison], list, list]:  # fmt: skip
    """Two servers (transformers, float32), each serving models (name -> checkpoint) and a models file (holding
    an ensemble named ``ensemble``), sent the same distinct one-sample calls to their ensembles,
    ``MODELS_CONCURRENCY`` in flight, in alternating rounds: the throughput row ``row`` and a memory row (theirs
    over ours) of K ``what``, and round 0's scores of each side. ``ours``/``theirs``: (label, models, models
    file mapping)."""
    import yaml

    samples_of = round_samples(Mix(), seed)
    files = Path(tempfile.mkdtemp(prefix="suite-"))
    starting = []
    for index, (_, models, entries) in enumerate((ours, theirs)):
        (files / f"{index}.yaml").write_text(yaml.safe_dump(entries))
        starting.append(start_vlreward(models, "transformers", models=str(files / f"{index}.yaml"), dtype="float32",
                                       max_queue=100_000, wait=False))  # fmt: skip
    servers = all_ready(*starting)
    try:

        def side(server: ServerProcess) -> Side:
            return lambda r, n: http(
                server.url, [score_call([x], "ensemble") for x in samples_of(r, n)], MODELS_CONCURRENCY
            )

        labels = [f"{label}, c={MODELS_CONCURRENCY}" for label, _, _ in (ours, theirs)]
        throughput, first_ours, first_theirs = alternate(row, *labels, plan, plan.samples, *map(side, servers))
        memory = Comparison(
            f"K={HEADS_K} {what}: memory, K models / {what}", f"{theirs[0]}, resident", f"{ours[0]}, resident"
        )
        memory.a_runs = [{"rss_bytes": resident_bytes(servers[1].url)}]
        memory.b_runs = [{"rss_bytes": resident_bytes(servers[0].url)}]
        memory.ratios = [memory.a_runs[0]["rss_bytes"] / memory.b_runs[0]["rss_bytes"]]
    finally:
        for server in servers:
            server.stop()
    return [throughput, memory], first_ours, first_theirs


def ensemble_of(members: list[str]) -> dict:
    """A models-file entry: the ensemble ``ensemble`` of ``members``, equal weights."""
    return {"ensemble": {"ensemble": dict.fromkeys(members, 1.0)}}


def heads_section(model: Path, plan: Plan, checks: Checks) -> list[Comparison]:
    """K heads in one forward pass against K separate models: an ensemble of a multi-head model's heads (the
    server asks the model once) against the ensemble of K one-head models with the same heads on copies of the
    backbone (K passes) (:func:`compare_ensembles`). Both ensembles give the same scores (checked)."""
    from vlreward.service.backends.transformers import stamp_reference_probe
    from vlreward.service.reference import statistics_of, write_reference
    from vlreward.training.multihead import stack_heads

    names = [f"h{k}" for k in range(HEADS_K)]
    separate = {name: build_model_like(model, seed=20 + k) for k, name in enumerate(names)}
    stacked = stack_heads(separate, Path(tempfile.mkdtemp(prefix="suite-")) / "multi")
    stamp_reference_probe(stacked)
    scale = statistics_of([-1.0, 0.0, 1.0], "suite")  # one scale for every head: the two ensembles are equal
    write_reference(stacked, dict.fromkeys(names, scale))
    for path in separate.values():
        write_reference(path, scale)
    rows, ours, theirs = compare_ensembles(
        plan, "heads", f"K={HEADS_K} heads one pass / K models", 400,
        (f"ensemble of {HEADS_K} heads", {"multi": stacked}, ensemble_of([f"multi:{n}" for n in names])),
        (f"ensemble of {HEADS_K} models", separate, ensemble_of(names)),
    )  # fmt: skip
    checks.add(f"/score, ensemble of {HEADS_K} heads vs of {HEADS_K} models", ours, theirs, SAME_BACKEND)
    return rows


def adapters_section(model: Path, plan: Plan, checks: Checks) -> list[Comparison]:
    """An ensemble of K LoRA adapters on one base (one copy of the backbone, each adapter's rows through it with
    its low-rank updates) against the ensemble of the K merged models (K copies) (:func:`compare_ensembles`).
    Both ensembles' scores must agree."""
    from vlreward.service.reference import statistics_of, write_reference
    from vlreward.training.lora import merge_adapter, random_adapter, stamp_adapter_probe

    names = [f"a{k}" for k in range(HEADS_K)]
    root = Path(tempfile.mkdtemp(prefix="suite-"))
    adapters = {name: random_adapter(model, root / name, seed=30 + k) for k, name in enumerate(names)}
    merged = {name: merge_adapter(model, path, root / f"{name}-merged") for name, path in adapters.items()}
    scale = statistics_of([-1.0, 0.0, 1.0], "suite")
    stamp_adapter_probe(model, *adapters.values())
    for name in names:
        write_reference(adapters[name], scale)
        write_reference(merged[name], scale)
    on_base = {name: {"model": str(path), "base": "base"} for name, path in adapters.items()}
    rows, ours, theirs = compare_ensembles(
        plan, "adapters", f"K={HEADS_K} adapters one base / K models", 500,
        (f"ensemble of {HEADS_K} adapters", {"base": model}, ensemble_of(names) | on_base),
        (f"ensemble of {HEADS_K} merged models", merged, ensemble_of(names)),
    )  # fmt: skip
    checks.add(f"/score, ensemble of {HEADS_K} adapters vs of merged models", ours, theirs, ACROSS_BACKENDS)
    return rows


def offline_section(model: Path, plan: Plan, checks: Checks) -> list[Comparison]:
    """Rows per second of offline scoring: ``vlreward score --engine ray`` against the in-process engine, each
    run as the command runs it (the model loaded, the input read, every row scored and written), on the same
    distinct rows (JSONL, the workload's mix, half with an image) in alternating rounds. The local Ray is
    started once, untimed (a user's command starts it once per run of any size); each Ray run starts its
    preparing and scoring actors, and the scoring actor loads the model, as the in-process run does. Shards of
    ``OFFLINE_ROWS_PER_SHARD`` rows, so a run has several, as a large run has many."""
    import ray

    from vlreward.offline.ray_engine import RayOptions, score_with_ray
    from vlreward.offline.shards import read_output
    from vlreward.service.backends.transformers import TransformersBackend
    from vlreward.service.offline import score_file

    folder = Path(tempfile.mkdtemp(prefix="suite-offline-"))

    @functools.cache
    def input_of(r: int, rows: int) -> Path:
        """Round r's input file of ``rows`` distinct rows."""
        samples = make_samples(Mix(samples=rows).with_(seed=700 + r))
        path = folder / f"in-{r}-{rows}.jsonl"
        path.write_text("".join(json.dumps({"id": f"r{i}"} | s) + "\n" for i, s in enumerate(samples)))
        return path

    def in_process(r: int, rows: int) -> tuple[dict, list[float]]:
        source, output = input_of(r, rows), folder / f"local-{r}-{rows}.jsonl"
        started = time.monotonic()
        backend = TransformersBackend(model, dtype="float32", device="cpu")
        score_file(backend, source, output)
        seconds = time.monotonic() - started
        backend.release()
        written = [json.loads(line) for line in output.read_text().splitlines()]
        return _in_process_run(rows, seconds), [row["score"] for row in written]

    def on_ray(r: int, rows: int) -> tuple[dict, list[float]]:
        source, output = input_of(r, rows), folder / f"ray-{r}-{rows}"
        started = time.monotonic()
        settings = {"dtype": "float32", "device": "cpu"}
        score_with_ray(source, output, model, settings, RayOptions(), OFFLINE_ROWS_PER_SHARD, False)
        seconds = time.monotonic() - started
        scored = {row["id"]: row["score"] for row in read_output(output).to_pylist()}
        return _in_process_run(rows, seconds), [scored.get(f"r{i}", math.nan) for i in range(rows)]

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        comparison, first_ray, first_local = alternate(
            OFFLINE_ROW, "ray engine, rows", "in-process engine, rows", plan, plan.samples * OFFLINE_ROWS_PER_SAMPLE,
            on_ray, in_process,
        )  # fmt: skip
    finally:
        ray.shutdown()
    checks.add("vlreward score: ray engine vs in process", first_ray, first_local, SAME_BACKEND)
    return [comparison]


def resident_bytes(url: str) -> float:
    """A server's resident memory (``process_resident_memory_bytes`` of its /metrics)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for sample in family.samples:
            if sample.name == "process_resident_memory_bytes":
                return sample.value
    raise RuntimeError(f"{url}/metrics has no process_resident_memory_bytes")


def vllm_in_process(model: Path, samples: list[dict]) -> tuple[dict, list[float]]:
    """vLLM's limit on this machine: AsyncLLM fed the prompts and images with no HTTP, each handed over as
    soon as it is prepared (the engine works while the rest are prepared, as behind a server)."""
    from vlreward.service.backends.vllm import EngineSettings, VLLMBackend

    backend = VLLMBackend(model, engine=EngineSettings(gpu_memory_utilization=0.2))
    try:

        async def run() -> tuple[float, list[float]]:
            await backend.run_batch([backend.encode(formatted(backend, s)) for s in samples[:8]])  # warm-up
            started = time.perf_counter()
            tasks = []
            for sample in samples:
                encoded = backend.encode(formatted(backend, sample))
                tasks.append(asyncio.ensure_future(backend.run_batch([encoded])))
                await asyncio.sleep(0)
            scores = [score for task in tasks for score in await task]
            return time.perf_counter() - started, scores

        seconds, scores = asyncio.run(run())
    finally:
        backend.engine.shutdown()
    return _in_process_run(len(samples), seconds), scores


def vllm_section(
    model: Path, plan: Plan, checks: Checks, vllm_serve_url: str | None, vllm_serve_all_cores: bool = False
) -> list[Comparison]:
    from vlreward.service.backends.transformers import TransformersBackend

    mix = one_sample_mix(plan)
    # vLLM caches prefixes: every run gets samples no server has seen (one seed per concurrency and round,
    # the warm-up round's included, and one for the limit row), or a later run would be served from the
    # cache an earlier one filled.
    runs = itertools.product(plan.vllm_concurrency, range(plan.rounds + 1))
    seeds = {run: 200 + number for number, run in enumerate(runs)}
    samples_of = functools.cache(lambda c, r, n: make_samples(mix.with_(samples=n, seed=seeds[c, r])))
    limit_samples = make_samples(mix.with_(seed=199))
    reference_backend = TransformersBackend(model, dtype="float32", device="cpu")

    def reference(samples: list[dict]) -> list[float]:
        return [reference_backend.score_sync([formatted(reference_backend, s)])[0] for s in samples]

    comparisons = []
    limit_summary, limit_scores = vllm_in_process(model, limit_samples)
    checks.add("vLLM AsyncLLM in process", limit_scores, reference(limit_samples), ACROSS_BACKENDS)
    starting = [start_vlreward(model, "vllm", max_queue=100_000, wait=False)]
    if not vllm_serve_url:
        starting.append(start_vllm_serve(model, all_cores=vllm_serve_all_cores, wait=False))
    ours, theirs = [*all_ready(*starting), None][:2]
    their_url = vllm_serve_url or theirs.url
    try:
        for concurrency in plan.vllm_concurrency:

            def our_side(r: int, n: int, c: int = concurrency):
                return http(ours.url, [score_call([s]) for s in samples_of(c, r, n)], c, warm_up=2)

            def their_side(r: int, n: int, c: int = concurrency):
                return http(their_url, [classify_call(s, str(model)) for s in samples_of(c, r, n)], c, warm_up=2)

            comparison, our_scores, their_scores = alternate(
                f"vLLM backend / vllm serve, c={concurrency}", f"vlreward serve --backend vllm, c={concurrency}",
                f"vllm serve /classify, c={concurrency}", plan, plan.vllm_requests, our_side, their_side,
            )  # fmt: skip
            comparisons.append(comparison)
            expected = reference(samples_of(concurrency, 0, comparison.units_by_round[0]))
            checks.add(f"/score c={concurrency} (vLLM backend)", our_scores, expected, ACROSS_BACKENDS)
            checks.add(f"vllm serve /classify c={concurrency}", their_scores, expected, ACROSS_BACKENDS)
        top = max(plan.vllm_concurrency)
        service_summary, _ = http(ours.url, [score_call([s]) for s in limit_samples], top, warm_up=2)
        limit = Comparison(
            "vLLM service c=max / in-process AsyncLLM", f"vlreward serve --backend vllm, c={top}", "AsyncLLM in process"
        )
        limit.ratios = [service_summary["samples_per_s"] / limit_summary["samples_per_s"]]
        limit.a_runs, limit.b_runs = [service_summary], [limit_summary]
        comparisons.append(limit)
    finally:
        ours.stop()
        if theirs is not None:
            theirs.stop()
    return comparisons


def build_model(size: str, workdir: Path) -> Path:
    from vlreward.training.base_model import build_base_model

    return reward_checkpoint(build_base_model(workdir / "base", size=size), workdir / "reward", seed=1)


def reward_checkpoint(base: Path, destination: Path, seed: int, process: bool = False) -> Path:
    """A reward checkpoint on ``base`` with a seeded random head (and bias), with its probe (``process``:
    a process model with the default step tag, read at every step)."""
    from vlreward.service.backends.transformers import stamp_reference_probe
    from vlreward.service.kinds import ProcessHead
    from vlreward.service.model.checkpoint import save_reward_model
    from vlreward.training.model import reward_model_from_base

    model, processor = reward_model_from_base(base, head_bias=True, seed=seed)
    path = save_reward_model(model, processor, destination, process=ProcessHead() if process else None)
    stamp_reference_probe(path)
    return path


def build_model_like(model: Path, seed: int, process: bool = False) -> Path:
    """Another reward model of the same architecture as ``model``: its backbone with another head."""
    return reward_checkpoint(model, Path(tempfile.mkdtemp(prefix="suite-")) / "second", seed=seed, process=process)


def print_table(comparisons: list[Comparison], checks: Checks, bench_run: bool) -> None:
    """The ratios, then the score checks. The targets are the bench model's: on another run (tiny, smoke,
    a given checkpoint) they and their verdicts are shown in brackets, for reference."""
    print(f"\n{'comparison (A / B)':<44} {'median':>7} {'IQR':>9} {'min':>6} {'max':>6} {'target':>7} {'met':>5}"
          "  A samples/s  B samples/s")  # fmt: skip
    verdicts = {None: "", True: "yes", False: "NO"}
    for c in comparisons:
        goal = TARGETS.get(c.name)
        target = "" if goal is None else f"{goal:.2f}"
        met = verdicts[c.target_met]
        if not bench_run and target:  # another model's (or a smoke run's) figures: for reference only
            target, met = f"({target})", f"({met})"
        a, b = (statistics.median(r.get(c.metric, 0) for r in runs) for runs in (c.a_runs, c.b_runs))
        unit = " tok/s" if c.metric == "output_token_throughput" else ""
        a, b = (f"{x:.1f}{unit}" if x else "" for x in (a, b))  # the latency row has no throughput
        print(f"{c.name:<44} {c.median:>7.3f} {interquartile(c.ratios):>9} {min(c.ratios):>6.2f} "
              f"{max(c.ratios):>6.2f} {target:>7} {met:>5}  {a:>11}  {b:>11}")  # fmt: skip
    print(f"\n{'scores of':<44} {'max |diff|':>11} {'tolerance':>9}")
    for row in checks.rows:
        diff = "missing" if row["max_abs_diff"] is None else f"{row['max_abs_diff']:.2e}"
        print(f"{row['path']:<44} {diff:>11} {row['tolerance']:>9.0e} {'ok' if row['ok'] else 'DIFFERENT'}")


def plot(comparisons: list[Comparison], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 0.45 * len(comparisons) + 1.5))
    names = [c.name for c in comparisons][::-1]
    medians = [c.median for c in comparisons][::-1]
    low = [c.median - min(c.ratios) for c in comparisons][::-1]
    high = [max(c.ratios) - c.median for c in comparisons][::-1]
    axis.barh(names, medians, xerr=[low, high], color="#4c72b0", capsize=3)
    for index, c in enumerate(comparisons[::-1]):
        if TARGETS.get(c.name) is not None:
            axis.plot([TARGETS[c.name]] * 2, [index - 0.4, index + 0.4], color="#c44e52", linewidth=2)
    axis.axvline(1.0, color="grey", linewidth=0.8)
    axis.set_xlabel("ratio A / B (median of alternating rounds; bars: min-max; red: target)")
    axis.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


app = typer.Typer(add_completion=False)


@app.command()
def main(
    size: str = typer.Option("tiny", help="tiny or bench: the model built here (seeded)."),
    model: Path | None = typer.Option(None, help="Use this reward checkpoint instead of building one."),
    smoke: bool = typer.Option(False, help="A few requests per row, one round (CI)."),
    rounds: int | None = typer.Option(
        None, help=f"Alternating rounds per comparison (default {PLANS['full'].rounds}; smoke {PLANS['smoke'].rounds})."
    ),
    sections: str = typer.Option(",".join(SECTIONS), help="Which sections to run (a part writes its own file)."),
    vllm_serve_url: str | None = typer.Option(None, help="A running `vllm serve` on the same model (else started)."),
    vllm_serve_all_cores: bool = typer.Option(
        False, help="Start `vllm serve` with every core (VLLM_CPU_NUM_OF_RESERVED_CPU=0), as our engine has them."
    ),
    hf_concurrency: str | None = typer.Option(
        None, help="The transformers rows' concurrencies, comma-separated (default 1,8,32; smoke 1,8)."
    ),
    output: Path = typer.Option(Path("loadtest/results"), help="Folder for suite_<size>.json and .png."),
) -> None:
    command = " ".join(["python -m loadtest.suite", *sys.argv[1:]])
    print("command:", command, flush=True)
    plan = PLANS["smoke" if smoke else "full"]
    if rounds is not None:
        plan = dataclasses.replace(plan, rounds=rounds)
    if hf_concurrency is not None:
        plan = dataclasses.replace(plan, hf_concurrency=tuple(int(c) for c in hf_concurrency.split(",")))
    started = time.monotonic()
    # the run the targets are for: our model against vllm serve as a user starts it
    bench_run = size == "bench" and model is None and not smoke and not vllm_serve_all_cores
    model = model or build_model(size, Path(tempfile.mkdtemp(prefix="suite-")))
    checks = Checks()
    comparisons: list[Comparison] = []
    asked = set(sections.split(","))
    if asked - set(SECTIONS):
        raise typer.BadParameter(f"unknown sections {sorted(asked - set(SECTIONS))}; choose from {', '.join(SECTIONS)}")
    chosen = [section for section in SECTIONS if section in asked]
    if "transformers" in chosen:
        comparisons += transformers_section(model, plan, checks)
    if "grpo" in chosen:
        comparisons += grpo_section(model, plan, checks)
    if "process" in chosen:
        comparisons += process_section(model, plan, checks)
    if "process-vllm" in chosen:
        comparisons += process_vllm_section(model, plan, checks)
    if "judge" in chosen:
        comparisons += judge_section(model, plan, checks)
    if "judge-generate" in chosen:
        comparisons += judge_generate_section(model, plan, checks)
    if "models" in chosen:
        comparisons += models_section(model, plan, checks)
    if "heads" in chosen:
        comparisons += heads_section(model, plan, checks)
    if "adapters" in chosen:
        comparisons += adapters_section(model, plan, checks)
    if "offline" in chosen:
        comparisons += offline_section(model, plan, checks)
    if "vllm" in chosen:
        comparisons += vllm_section(model, plan, checks, vllm_serve_url, vllm_serve_all_cores)
    print_table(comparisons, checks, bench_run)
    output.mkdir(parents=True, exist_ok=True)
    name = f"suite_{size}" + ("_smoke" if smoke else "") + (".vllm-serve-all-cores" if vllm_serve_all_cores else "")
    name += "" if chosen == list(SECTIONS) else "." + "-".join(chosen)  # a part of the suite: its own file
    name += "" if hf_concurrency is None else f".c{hf_concurrency.replace(',', '-')}"
    record = {
        "command": command, "benchmark": "suite", "size": size, "smoke": smoke, "plan": plan.__dict__,
        "threads": torch.get_num_threads(), "cpu": cpu_name(),
        "seconds": time.monotonic() - started, "comparisons": [c.record() for c in comparisons],
        "score_checks": checks.rows, "scores_ok": checks.ok,
    }  # fmt: skip
    (output / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    title = f"vlreward suite, {size} model, {plan.rounds} alternating rounds"
    plot(comparisons, output / f"{name}.png", title + (", vllm serve on every core" if vllm_serve_all_cores else ""))
    print(f"wrote {output / name}.json and .png ({time.monotonic() - started:.0f} s)")
    if not checks.ok:
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
