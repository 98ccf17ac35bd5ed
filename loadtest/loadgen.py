"""The load generator: closed loop at a fixed concurrency, or open loop with Poisson arrivals at a rate.

Requests are :class:`Call` objects (path, JSON body, how many samples it scores, how to read its scores
and input tokens), so one generator drives /score, /rank, /get_reward, /classify and ``vllm serve``
alike. A run's summary uses the key names of vLLM's serving benchmark (``request_throughput``,
``total_input_tokens``, ``mean_e2el_ms``, ``median_e2el_ms``, ``p99_e2el_ms``, ...; e2el = end-to-end
latency) plus ``samples_per_s`` and ``errors`` (counts by HTTP status).

The client is aiohttp, as in vLLM's own serving benchmark, with every body serialized before the clock
starts: the generator shares the machine with the server it measures, and httpx's async client spent
2.1-2.7 ms of CPU per request against aiohttp's 0.6-0.8 (docs/performance.md, "Small models").

    python -m loadtest.loadgen --url http://127.0.0.1:8000 --mix mix.json --concurrency 16
    python -m loadtest.loadgen --url http://127.0.0.1:8000 --rate 40      # open loop, 40 requests/s
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import typer
from tqdm import tqdm

from loadtest.workload import Mix, chat_messages, make_groups


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0-1) as every latency row reports it: the value at index ``int(q * n)``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Call:
    """One request: where it goes, its body, and how to read its answer."""

    path: str
    body: dict
    samples: int
    read_scores: Callable[[dict], list[float]]
    read_tokens: Callable[[dict], int]
    read_written: Callable[[dict], tuple[int, list[str]]] | None = None
    """Generating calls: the tokens written and the texts (answers) of a response."""

    @functools.cached_property
    def payload(self) -> bytes:
        """The body as sent (serialized once, before a run's clock starts)."""
        return json.dumps(self.body).encode()


@dataclass
class Run:
    """What a run measured."""

    duration_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    scores: list[list[float] | None] = field(default_factory=list)
    samples: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    texts: list[list[str] | None] = field(default_factory=list)
    """Generating calls' answers, by call."""

    def summary(self) -> dict:
        """vLLM's benchmark keys (latency as e2el) plus samples/s and errors by status."""
        completed = self.statuses.get(200, 0)
        latencies = self.latencies_ms or [0.0]
        return {
            "duration": self.duration_s,
            "completed": completed,
            "total_input_tokens": self.input_tokens,
            "request_throughput": completed / self.duration_s if self.duration_s else 0.0,
            "samples_per_s": self.samples / self.duration_s if self.duration_s else 0.0,
            "total_token_throughput": self.input_tokens / self.duration_s if self.duration_s else 0.0,
            "output_token_throughput": self.output_tokens / self.duration_s if self.duration_s else 0.0,
            "mean_e2el_ms": statistics.fmean(latencies),
            "median_e2el_ms": statistics.median(latencies),
            "std_e2el_ms": statistics.pstdev(latencies),
            "p90_e2el_ms": quantile(latencies, 0.90),
            "p99_e2el_ms": quantile(latencies, 0.99),
            "errors": {str(status): n for status, n in sorted(self.statuses.items()) if status != 200},
        }

    def flat_scores(self) -> list[float]:
        return [s for scores in self.scores if scores is not None for s in scores]


def score_call(items: list[dict], model: str | None = None) -> Call:
    """/score of ``items`` (by the served ``model`` of that name, when given)."""
    body = {"items": items} if model is None else {"model": model, "items": items}
    return Call("/score", body, len(items), lambda j: j["scores"], lambda j: j["usage"]["input_tokens"])


def compare_call(pairs: list[dict], debias: bool = True) -> Call:
    """/compare of ``pairs``; its scores are each pair's P(A better)."""
    body = {"pairs": pairs, "debias": debias}
    return Call(
        "/compare",
        body,
        len(pairs),
        lambda j: [r["prob_a"] for r in j["results"]],
        lambda j: j["usage"]["input_tokens"],
    )


def generate_call(items: list[dict], max_new_tokens: int) -> Call:
    """/score of a judge in generate mode, greedy, its answers returned (an unparsed verdict: a null score)."""
    body = {"items": items, "mode": "generate", "max_new_tokens": max_new_tokens, "critique": True,
            "on_error": "null"}  # fmt: skip
    return Call(
        "/score", body, len(items), lambda j: [], lambda j: j["usage"]["input_tokens"],
        lambda j: (j["usage"]["output_tokens"], [c for d in j["details"] if d for c in d["critiques"]]),
    )  # fmt: skip


def chat_generate_call(messages: list[dict], model: str, max_new_tokens: int) -> Call:
    """``vllm serve``'s /v1/chat/completions, greedy: what a user of vLLM's server sends a judge."""
    body = {"model": model, "messages": messages, "max_tokens": max_new_tokens, "temperature": 0.0}
    return Call(
        "/v1/chat/completions", body, 1, lambda j: [], lambda j: j["usage"]["prompt_tokens"],
        lambda j: (j["usage"]["completion_tokens"], [c["message"]["content"] for c in j["choices"]]),
    )  # fmt: skip


def rank_call(group: list[dict]) -> Call:
    first = group[0]
    body = {"prompt": first["prompt"], "responses": [s["response"] for s in group]}
    if first.get("images"):
        body["images"] = first["images"]
    return Call("/rank", body, len(group), lambda j: j["scores"], lambda j: j["usage"]["input_tokens"])


def classify_call(sample: dict, model: str) -> Call:
    """vLLM's /classify in its chat form (``vllm serve``, or ours)."""
    body = {"model": model, "messages": chat_messages(sample)}
    return Call(
        "/classify", body, 1, lambda j: [d["probs"][0] for d in j["data"]], lambda j: j["usage"]["prompt_tokens"]
    )


JSON = {"content-type": "application/json"}


async def _send(session: aiohttp.ClientSession, call: Call, run: Run, index: int, timed: bool = True) -> None:
    """One call; its status and scores always count, its latency, samples and tokens only when ``timed``."""
    started = time.perf_counter()
    try:
        async with session.post(call.path, data=call.payload, headers=JSON) as response:
            status = response.status
            body = await response.read()
    except (aiohttp.ClientError, TimeoutError):
        status = 0  # connection error / timeout
    run.statuses[status] += 1
    if timed:
        run.latencies_ms.append((time.perf_counter() - started) * 1000)
    if status == 200:
        answer = json.loads(body)
        run.scores[index] = call.read_scores(answer)
        written = call.read_written(answer) if call.read_written else (0, None)
        run.texts[index] = written[1]
        if timed:
            run.samples += call.samples
            run.input_tokens += call.read_tokens(answer)
            run.output_tokens += written[0]


def _session(base_url: str, connections: int) -> aiohttp.ClientSession:
    """A client session to ``base_url`` with at most ``connections`` open (0: no limit)."""
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections)
    return aiohttp.ClientSession(base_url, connector=connector, timeout=aiohttp.ClientTimeout(total=600))


async def closed_loop(
    base_url: str, calls: list[Call], concurrency: int, warm_up: int = 0, label: str = "", quiet: bool = False
) -> Run:
    """Send ``calls`` with ``concurrency`` in flight. The first ``warm_up`` calls go first, untimed (their
    scores and statuses count; they are not sent again, so no timed call finds its sample in a cache)."""
    run = Run(scores=[None] * len(calls), texts=[None] * len(calls))
    for call in calls:
        call.payload  # noqa: B018  (serialized before the clock starts)
    async with _session(base_url, concurrency) as client:
        warm = min(warm_up, max(0, len(calls) - 1))  # at least one call is timed
        await asyncio.gather(*(_send(client, calls[i], run, i, timed=False) for i in range(warm)))
        slots = asyncio.Semaphore(concurrency)
        with tqdm(total=len(calls) - warm, desc=label, file=sys.stderr, disable=quiet, leave=False) as bar:

            async def one(index: int) -> None:
                async with slots:
                    await _send(client, calls[index], run, index)
                    bar.update(1)

            started = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(warm, len(calls))))
            run.duration_s = time.perf_counter() - started
    return run


async def open_loop(base_url: str, calls: list[Call], rate: float, seed: int = 0, label: str = "") -> Run:
    """Send ``calls`` as Poisson arrivals at ``rate`` requests/s, whatever the server's pace."""
    run = Run(scores=[None] * len(calls), texts=[None] * len(calls))
    rng = random.Random(seed)
    for call in calls:
        call.payload  # noqa: B018  (serialized before the clock starts)
    async with _session(base_url, 0) as client:
        with tqdm(total=len(calls), desc=label, file=sys.stderr, leave=False) as bar:
            tasks = []
            started = time.perf_counter()
            for index, call in enumerate(calls):
                tasks.append(asyncio.ensure_future(_send(client, call, run, index)))
                tasks[-1].add_done_callback(lambda _: bar.update(1))
                await asyncio.sleep(rng.expovariate(rate))
            await asyncio.gather(*tasks)
            run.duration_s = time.perf_counter() - started
    return run


app = typer.Typer(add_completion=False)


@app.command()
def main(
    url: str = typer.Option("http://127.0.0.1:8000", help="The server."),
    mix: Path | None = typer.Option(None, help="JSON request mix (loadtest.workload.Mix fields)."),
    route: str = typer.Option("score", help="score, rank (groups become /rank calls) or classify."),
    concurrency: int = typer.Option(16, help="Closed loop: requests in flight."),
    rate: float | None = typer.Option(None, help="Open loop: Poisson arrivals per second (instead of closed)."),
    model: str = typer.Option("model", help="The `model` field of /classify bodies."),
    output: Path | None = typer.Option(None, help="Write the summary JSON here."),
) -> None:
    """Run one mix against one server and print the summary."""
    chosen = Mix.from_spec(mix) if mix else Mix()
    groups = make_groups(chosen)
    if route == "rank":
        calls = [rank_call(g) for g in groups]
    elif route == "classify":
        calls = [classify_call(s, model) for g in groups for s in g]
    else:
        calls = [score_call(g) for g in groups]
    if rate is None:
        run = asyncio.run(closed_loop(url, calls, concurrency, label=route))
    else:
        run = asyncio.run(open_loop(url, calls, rate, chosen.seed, label=route))
    summary = {"mix": chosen.describe(), "route": route, "concurrency": concurrency, "rate": rate, **run.summary()}
    print(json.dumps(summary, indent=2))
    if output is not None:
        output.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    app()
