"""Overload soak: mixed valid and invalid traffic at a multiple of the measured capacity, for a while.

    python -m loadtest.soak --duration 300 --output loadtest/results/soak_300s    # docs/performance.md's figures
    python -m loadtest.soak --duration 60 --output /tmp/soak                      # what CI runs

It starts ``vlreward serve`` (tiny model built here, or ``--model``) as its own process, scores every
distinct valid sample alone (the reference), measures capacity in a closed loop, then sends Poisson
arrivals at ``--overload`` times that rate for ``--warm-up`` + ``--duration`` seconds (memory is measured
over the duration, after the warm-up): /score requests of 1-4 distinct
samples (half with images) and, ``--invalid`` of the time, a broken request of one of the kinds below.
The server's resident memory is sampled throughout. It checks, and exits 1 unless all hold:

- every answered valid request has exactly the reference scores of its own samples (nothing accepted
  is lost or given another request's score);
- every status is a documented one (200 / 4xx / 429 / 503 / 504), never a connection error or a 500;
- every broken request gets a 4xx in the JSON error shape;
- resident memory of the last quarter is within ``--max-growth`` of the first quarter's;
- /ready is 200 again afterwards.

Writes ``<output>.json`` (settings, capacity, statuses, latencies, memory, checks) and ``<output>.png``.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import typer
from tqdm import tqdm

from loadtest.loadgen import quantile
from loadtest.servers import ServerProcess, start_vlreward
from loadtest.suite import build_model
from loadtest.workload import Mix, make_samples
from vlreward.service.errors import ErrorKind
from vlreward.service.http.errors import STATUS

DOCUMENTED = {200} | {STATUS[kind] for kind in ErrorKind} - {STATUS[ErrorKind.INTERNAL], STATUS[ErrorKind.UNAUTHORIZED]}
"""What a loaded server without API keys may answer (the one status table, less 500, a bug, and 401, no keys
are set); anything else fails the soak."""

SERVER_SETTINGS = {"max_queue": 64, "request_timeout_s": 10, "max_items": 8, "max_connections": 512}
"""Small queue and deadline: overload shows as 429 and 504 within seconds, not as an ever longer queue."""


def broken_requests(sample: dict) -> list[tuple[str, str, bytes | None]]:
    """Requests a client gets wrong: (method, path, raw body). Each must get a 4xx JSON error."""

    def body(value: object) -> bytes:
        return json.dumps(value).encode()

    return [
        ("POST", "/score", b'{"items": [{"prompt": "p", "response": '),  # cut JSON
        ("POST", "/score", body({"items": [{"prompt": "p", "respone": "r"}]})),  # typo'd field
        ("POST", "/score", body({"items": [{"prompt": "p", "response": "r", "image": "%%%not-base64"}]})),
        ("POST", "/score", body({"items": [sample] * 9})),  # over max_items
        ("POST", "/score", body({"items": [sample], "timeout_s": 0.01})),  # under the shortest deadline
        ("POST", "/rank", body({"prompt": "p", "responses": []})),
        ("POST", "/get_reward", body({"query": ["a"], "images": [[], []]})),
        ("POST", "/nowhere", body({})),
        ("GET", "/score", None),
    ]


@dataclass
class Soak:
    """What the soak saw."""

    statuses: Counter = field(default_factory=Counter)
    """By kind ("valid"/"broken") and status; 0 = connection error."""
    latencies_ms: list[float] = field(default_factory=list)
    wrong_scores: list[dict] = field(default_factory=list)
    broken_answered_200: int = 0
    broken_not_json: int = 0
    memory: list[tuple[float, int]] = field(default_factory=list)
    """(seconds since the start, resident bytes of the server and its children)."""
    timeline: list[tuple[float, str, int]] = field(default_factory=list)


def resident_bytes(pid: int) -> int:
    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])


def sample_memory(
    pid: int,
    memory: list[tuple[float, int]],
    started: float,
    after_s: float,
    stop: threading.Event,
    every_s: float = 0.5,
) -> None:
    """Resident memory every ``every_s`` from ``after_s`` seconds after ``started`` (the warm-up's end)."""
    while not stop.wait(every_s):
        if (elapsed := time.monotonic() - started) >= after_s:
            memory.append((elapsed, resident_bytes(pid)))


async def reference_scores(url: str, samples: list[dict]) -> list[float]:
    """Each sample scored alone, one request at a time: what every answer must match."""
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        scores = []
        for sample in tqdm(samples, desc="reference", file=sys.stderr, leave=False):
            reply = await client.post("/score", json={"items": [sample]})
            reply.raise_for_status()
            scores.append(reply.json()["scores"][0])
    return scores


def valid_requests(count: int, pool: int, rng: random.Random) -> list[list[int]]:
    """Requests as lists of 1-4 distinct sample indices."""
    return [rng.sample(range(pool), rng.randint(1, 4)) for _ in range(count)]


async def capacity(url: str, samples: list[dict], seconds: float, concurrency: int = 4) -> float:
    """Valid requests answered per second in a closed loop (the soak's 1x)."""
    rng = random.Random(1)
    done, deadline = 0, time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:

        async def worker() -> None:
            nonlocal done
            while time.monotonic() < deadline:
                picks = valid_requests(1, len(samples), rng)[0]
                reply = await client.post("/score", json={"items": [samples[i] for i in picks]})
                done += reply.status_code == 200

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.monotonic() - started)


async def overload(
    url: str, samples: list[dict], expected: list[float], rate: float, duration_s: float, invalid: float, seed: int
) -> Soak:
    soak, rng = Soak(), random.Random(seed)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def valid(picks: list[int]) -> None:
            started = time.monotonic()
            try:
                reply = await client.post("/score", json={"items": [samples[i] for i in picks]})
                status = reply.status_code
            except httpx.HTTPError:
                status = 0
            soak.latencies_ms.append((time.monotonic() - started) * 1000)
            soak.statuses["valid", status] += 1
            soak.timeline.append((started - begun, "valid", status))
            if status == 200:
                got, want = reply.json()["scores"], [expected[i] for i in picks]
                if len(got) != len(want) or any(abs(g - w) > 1e-4 for g, w in zip(got, want, strict=False)):
                    soak.wrong_scores.append({"samples": picks, "got": got, "want": want})

        async def broken(method: str, path: str, body: bytes | None) -> None:
            started = time.monotonic()
            try:
                headers = {"content-type": "application/json"}
                reply = await client.request(method, path, content=body, headers=headers)
                status = reply.status_code
                if status == 200:
                    soak.broken_answered_200 += 1
                elif not reply.headers.get("content-type", "").startswith("application/json"):
                    soak.broken_not_json += 1
            except httpx.HTTPError:
                status = 0
            soak.statuses["broken", status] += 1
            soak.timeline.append((started - begun, "broken", status))

        tasks: list[asyncio.Task] = []
        begun = time.monotonic()
        with tqdm(total=int(duration_s), desc=f"soak at {rate:.1f} req/s", file=sys.stderr, leave=False) as bar:
            while (elapsed := time.monotonic() - begun) < duration_s:
                if int(elapsed) > bar.n:
                    bar.update(int(elapsed) - bar.n)
                if rng.random() < invalid:
                    kinds = broken_requests(samples[rng.randrange(len(samples))])
                    tasks.append(asyncio.ensure_future(broken(*rng.choice(kinds))))
                else:
                    tasks.append(asyncio.ensure_future(valid(valid_requests(1, len(samples), rng)[0])))
                await asyncio.sleep(rng.expovariate(rate))
            await asyncio.gather(*tasks)
    return soak


def memory_growth(memory: list[tuple[float, int]]) -> float:
    """Mean resident memory of the last quarter over the first quarter's, minus 1."""
    quarter = max(1, len(memory) // 4)
    first = statistics.fmean(m for _, m in memory[:quarter])
    last = statistics.fmean(m for _, m in memory[-quarter:])
    return last / first - 1


def ready_again(url: str, within_s: float = 60) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/ready", timeout=5).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


def plot(report: dict, soak: Soak, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (memory_axis, status_axis) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    memory_axis.plot([t for t, _ in soak.memory], [m / 2**20 for _, m in soak.memory])
    memory_axis.set_ylabel("server resident memory (MiB)")
    memory_axis.set_title(
        f"Soak: {report['rate_rps']:.1f} requests/s = {report['overload']}x capacity, {report['warm_up_s']:.0f} s "
        f"warm-up + {report['duration_s']:.0f} s; memory growth {report['memory_growth']:+.1%}"
    )
    bins: dict[str, Counter] = {}
    for at, _, status in soak.timeline:
        label = "200" if status == 200 else ("4xx" if 400 <= status < 500 and status != 429 else str(status))
        bins.setdefault(label, Counter())[int(at)] += 1
    for label, counts in sorted(bins.items()):
        seconds = sorted(counts)
        status_axis.plot(seconds, [counts[s] for s in seconds], label=label)
    status_axis.set_ylabel("answers per second")
    status_axis.set_xlabel("seconds")
    status_axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def run_soak(
    model: Path, duration_s: float, warm_up_s: float, overload_factor: float, invalid: float, max_growth: float,
    seed: int,
) -> tuple[dict, Soak]:  # fmt: skip
    samples = make_samples(Mix(samples=48, image_fraction=0.5, image_size=(84, 84), seed=seed))
    server: ServerProcess = start_vlreward(model, "transformers", **{k: str(v) for k, v in SERVER_SETTINGS.items()})
    try:
        expected = asyncio.run(reference_scores(server.url, samples))
        measured = asyncio.run(capacity(server.url, samples, seconds=8))
        rate = overload_factor * measured
        memory: list[tuple[float, int]] = []
        stop = threading.Event()
        sampler = threading.Thread(
            target=sample_memory, args=(server.process.pid, memory, time.monotonic(), warm_up_s, stop), daemon=True
        )
        sampler.start()
        try:
            total_s = warm_up_s + duration_s
            loaded = asyncio.run(overload(server.url, samples, expected, rate, total_s, invalid, seed))
        finally:
            stop.set()
            sampler.join()
        loaded.memory = memory
        ready = ready_again(server.url)
        exit_code = server.process.poll()
    finally:
        server.stop()
    statuses = {f"{kind} {status}": n for (kind, status), n in sorted(loaded.statuses.items())}
    undocumented = {k: n for k, n in statuses.items() if int(k.split()[1]) not in DOCUMENTED}
    broken_ok = all(int(k.split()[1]) in range(400, 500) for k in statuses if k.startswith("broken"))
    growth = memory_growth(loaded.memory)
    latencies = sorted(loaded.latencies_ms) or [0.0]
    checks = {
        "every_valid_answer_has_its_own_scores": not loaded.wrong_scores,
        "only_documented_statuses": not undocumented,
        "broken_requests_get_json_4xx": broken_ok and not loaded.broken_answered_200 and not loaded.broken_not_json,
        "memory_growth_within_limit": growth < max_growth,
        "ready_again_after": ready and exit_code is None,
        "some_requests_served": loaded.statuses["valid", 200] > 0,
        "overload_shed_with_429": loaded.statuses["valid", 429] > 0,
    }
    report = {
        "command": " ".join(sys.argv),
        "duration_s": duration_s,
        "warm_up_s": warm_up_s,
        "overload": overload_factor,
        "capacity_rps": measured,
        "rate_rps": rate,
        "invalid_fraction": invalid,
        "server_settings": SERVER_SETTINGS,
        "requests": sum(loaded.statuses.values()),
        "statuses": statuses,
        "undocumented_statuses": undocumented,
        "valid_latency_ms": {
            "median": statistics.median(latencies),
            "p99": quantile(latencies, 0.99),
        },
        "wrong_scores": loaded.wrong_scores[:10],
        "memory_mib": {
            "first": loaded.memory[0][1] / 2**20,
            "last": loaded.memory[-1][1] / 2**20,
            "max": max(m for _, m in loaded.memory) / 2**20,
        },  # fmt: skip
        "memory_growth": growth,
        "max_growth": max_growth,
        "checks": checks,
        "ok": all(checks.values()),
    }
    return report, loaded


app = typer.Typer(add_completion=False)


@app.command()
def main(
    duration: float = typer.Option(60.0, help="Seconds of overload over which memory is measured."),
    warm_up: float = typer.Option(
        15.0,
        help="Seconds at the same rate before them (batch sizes and the allocator settle; statuses and "
        "scores are checked here too).",
    ),
    overload_factor: float = typer.Option(2.0, "--overload", help="Arrival rate as a multiple of the capacity."),
    invalid: float = typer.Option(0.25, help="Share of broken requests."),
    max_growth: float = typer.Option(0.10, help="Largest allowed resident-memory growth, first to last quarter."),
    seed: int = typer.Option(0),
    model: Path | None = typer.Option(None, help="Reward checkpoint (default: the tiny model, built here)."),
    output: Path = typer.Option(Path("soak"), help="Writes <output>.json and <output>.png."),
) -> None:
    model = model or build_model("tiny", Path(tempfile.mkdtemp(prefix="soak-")))
    report, soak = run_soak(model, duration, warm_up, overload_factor, invalid, max_growth, seed)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(report, indent=2))
    plot(report, soak, output.with_suffix(".png"))
    print(json.dumps({k: report[k] for k in ("capacity_rps", "rate_rps", "requests", "statuses", "memory_growth")}))
    for name, passed in report["checks"].items():
        print(f"{'ok  ' if passed else 'FAIL'} {name}")
    raise typer.Exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    app()
