"""How admitted samples reach the backend: a scheduler.

- :class:`DirectScheduler` hands each request to the backend as it comes, for engines that batch
  continuously themselves (vLLM).
- :class:`DynamicBatcher` makes samples from concurrent requests share forward passes (the
  transformers backend). One background task owns the queue (as in text-embeddings-inference):
  requests append their samples and await a future; while another admitted request is still being
  prepared, the task waits up to ``max_wait`` for a batch to fill (a lone request runs at once), takes
  what is pending, sorts it by length and cuts it into batches within ``max_batch_size``
  and ``max_batch_tokens`` so padding stays small. Samples of a request that was cancelled (client
  gone, deadline passed) are dropped when the next batch is cut, and counted. On the CPU several
  batches may run at once (``lanes``), each on its share of the cores (:class:`CoreLanes`).

Both isolate failures (:func:`run_isolating`): a batch the model raises on is split in halves and
rerun, so a sample that makes the model fail fails alone (its request gets the error, the others their
scores), and a batch too large for memory is halved until it fits. An :class:`EngineBroken` error is
not retried: every request in the batch fails and the service is told (it stops serving).

Queue bounds and deadlines are admission's (:mod:`vlreward.service.admission`), not the scheduler's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from vlreward.service.backends.base import EncodedInput
from vlreward.service.errors import EngineBroken, OutOfMemory, ServiceError
from vlreward.service.metrics import ModelMetrics
from vlreward.service.settings import default

log = logging.getLogger("vlreward.batching")

Runner = Callable[[list], Awaitable[list[float]]]
"""Scores a list of encoded samples (one forward pass, or one engine call)."""

ModelErrorHook = Callable[[Exception], None]
"""Told of every sample the model failed on alone, and of an :class:`EngineBroken` error (the service
checks whether the engine can still serve)."""

Groups = Sequence[Sequence[int]]
"""Indices of a request's items that share a prefix (prompt + images), one sequence per group."""


def group_of(size: int, groups: Groups) -> list[int | None]:
    """For each of ``size`` items, the index of the group it belongs to (None: batched normally)."""
    membership: list[int | None] = [None] * size
    for number, group in enumerate(groups):
        if len(group) < 2:
            continue  # a group of one has nothing to share
        for index in group:
            if membership[index] is not None:
                raise ValueError(f"item {index} is in two groups")
            membership[index] = number
    return membership


@dataclass
class BatchResult:
    """Scores of one request plus where its time went."""

    scores: list[float | None]
    """None exactly for the items in ``failures``."""
    queue_ms: float
    inference_ms: float
    failures: dict[int, Exception] = field(default_factory=dict)
    """Items the model failed on, each alone (see :func:`run_isolating`): index -> its error."""


async def run_isolating(
    runner: Runner, items: list, metrics: ModelMetrics, on_model_error: ModelErrorHook | None = None
) -> list[float | Exception]:
    """Scores of ``items``, or for each sample the model failed on alone, its error.

    A batch that raises is split in halves and each half rerun (recursively): a sample that makes the
    model raise is isolated in ``log2(len(items))`` extra runs and the others are scored as they would be
    alone; an out-of-memory batch is halved until it fits. :class:`EngineBroken` is not retried.
    """
    try:
        return list(await runner(items))
    except EngineBroken as exc:
        if on_model_error is not None:
            on_model_error(exc)
        raise
    except Exception as exc:
        if len(items) == 1:
            if not isinstance(exc, ServiceError):  # (a ServiceError is the engine refusing a client's input)
                log.error("the model failed on a sample: %s: %s", type(exc).__name__, exc)
                if on_model_error is not None:
                    on_model_error(exc)
            return [exc]
        reason = "out_of_memory" if isinstance(exc, OutOfMemory) else "error"
        metrics.batch_split(reason)
        log.warning("batch of %d failed (%s: %s); rerunning it in halves", len(items), type(exc).__name__, exc)
        half = len(items) // 2
        first = await run_isolating(runner, items[:half], metrics, on_model_error)
        return first + await run_isolating(runner, items[half:], metrics, on_model_error)


class Scheduler(Protocol):
    """Runs a request's samples through the backend."""

    @property
    def queued(self) -> int:
        """Samples waiting (admission bounds this)."""
        ...

    def start(self) -> None: ...

    async def close(self) -> None: ...

    def healthy(self) -> bool: ...

    async def run(self, items: Sequence[EncodedInput], groups: Groups = ()) -> BatchResult:
        """Scores of ``items`` in order. Each of ``groups`` (indices of items that share their prompt
        and images) runs as one unit through the group runner; the other items are batched. Items the
        model failed on are in the result's ``failures``."""
        ...


BATCH_TOKENS = {"cuda": 16384, "cpu": 2048}
"""Padded tokens per forward pass where ``max_batch_tokens`` is unset, by device type; on the CPU the most
(see :func:`batch_tokens`). On the CPU large batches lose: the activations of a 16k-token batch leave the
cache and padding costs compute (the measurement: docs/performance.md, "The measurements behind the defaults")."""

CPU_BATCH_ACTIVATION_BYTES = 3 << 20
"""On the CPU, what one batch's widest activation (the MLP's, tokens x intermediate size) may take where
``max_batch_tokens`` is unset: batches run on one core each (:class:`CoreLanes`) and lose once the MLP's
activations leave the cache (the measurement: docs/performance.md, "The measurements behind the defaults")."""

CPU_MIN_BATCH_TOKENS = 256
"""The CPU's default budget is never below this: short samples of a wide model still share a pass."""


def batch_tokens(max_batch_tokens: int | None, device_type: str, activation_bytes_per_token: int) -> int:
    """The token budget in force: the setting; else on a GPU the device's default, on the CPU the tokens
    whose MLP activations (``activation_bytes_per_token`` each) fit :data:`CPU_BATCH_ACTIVATION_BYTES`,
    between :data:`CPU_MIN_BATCH_TOKENS` and ``BATCH_TOKENS["cpu"]`` (bench model: 512; tiny: 2048)."""
    if max_batch_tokens:
        return max_batch_tokens
    if device_type != "cpu":
        return BATCH_TOKENS[device_type]
    fitting = CPU_BATCH_ACTIVATION_BYTES // activation_bytes_per_token
    return max(CPU_MIN_BATCH_TOKENS, min(BATCH_TOKENS["cpu"], fitting))


def lanes_for(cpu_lanes: int | None, cores: int | None) -> int:
    """Batches run at once: one where the engine owns its threads (``cores`` None, a GPU); on the CPU the
    setting, else 2 where there are 2 or more cores (measured on 2 cores; see :class:`CoreLanes`)."""
    if cores is None:
        return 1
    return max(1, min(cpu_lanes or 2, cores))


def plan_batches(lengths: Sequence[int], max_batch_size: int, max_batch_tokens: int) -> list[list[int]]:
    """Group indices into batches sorted by length, each within the size and padded-token budget, as
    even in size as the budget allows: 32 samples of 1k tokens under a 16k budget run as 11 + 11 + 10,
    not 15 + 15 + 2 (a batch of two keeps a GPU far below its rate, and lanes finish apart).

    A single sample longer than the budget still gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        padded = lengths[index] * (len(current) + 1)  # ascending order: this one is the longest
        if current and (len(current) >= max_batch_size or padded > max_batch_tokens):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches and (_evened(order, len(batches), lengths, max_batch_tokens) or batches)


def _evened(order: list[int], count: int, lengths: Sequence[int], max_batch_tokens: int) -> list[list[int]] | None:
    """``order`` (ascending length) in ``count`` consecutive runs whose sizes differ by one at most, the
    larger runs first (they hold the shorter samples); None when a run of two or more would pass the token
    budget. (Never larger than the greedy plan's largest batch, so within the size limit too.)"""
    size, extra = divmod(len(order), count)
    runs, start = [], 0
    for number in range(count):
        end = start + size + (number < extra)
        run = order[start:end]
        if len(run) > 1 and lengths[run[-1]] * len(run) > max_batch_tokens:
            return None
        runs.append(run)
        start = end
    return runs


class DirectScheduler:
    """Each request goes straight to the engine, which batches continuously (vLLM)."""

    def __init__(
        self, run_batch: Runner, run_group: Runner, metrics: ModelMetrics, on_model_error: ModelErrorHook | None = None
    ):
        self.run_batch = run_batch
        self.run_group = run_group
        self.metrics = metrics
        self.on_model_error = on_model_error
        self._in_flight = 0

    @property
    def queued(self) -> int:
        return self._in_flight

    def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def healthy(self) -> bool:
        return True

    async def run(self, items: Sequence[EncodedInput], groups: Groups = ()) -> BatchResult:
        self._in_flight += len(items)
        self.metrics.queue_depth.set(self._in_flight)
        started = time.monotonic()
        membership = group_of(len(items), groups)
        units = [(self.run_group, [i for i, g in enumerate(membership) if g == n]) for n in set(membership) - {None}]
        units.append((self.run_batch, [i for i, g in enumerate(membership) if g is None]))
        units = [(runner, indices) for runner, indices in units if indices]
        try:
            answers = await asyncio.gather(
                *(
                    run_isolating(runner, [items[i] for i in indices], self.metrics, self.on_model_error)
                    for runner, indices in units
                )
            )
        finally:
            self._in_flight -= len(items)
            self.metrics.queue_depth.set(self._in_flight)
        scores: list[float | None] = [None] * len(items)
        failures: dict[int, Exception] = {}
        for (_, indices), values in zip(units, answers, strict=True):
            for index, value in zip(indices, values, strict=True):
                if isinstance(value, Exception):
                    failures[index] = value
                else:
                    scores[index] = value
        elapsed = time.monotonic() - started
        self.metrics.inference_duration.observe(elapsed)
        return BatchResult(scores=scores, queue_ms=0.0, inference_ms=elapsed * 1000, failures=failures)


class CoreLanes:
    """How many batches run at once, and on how many threads each (CPU).

    With work for several batches, ``lanes`` of them run side by side on ``cores // lanes`` threads each:
    a small model's forward pass does not keep two threads busy (element-wise work, attention and short
    matrix products scale poorly), so two single-thread passes finish more samples than one two-thread
    pass (docs/performance.md, "The measurements behind the defaults"). A batch that finds the machine
    idle and nothing else to run gets ``lone`` threads: every core, so a lone request is not slowed down,
    unless the backend's model is too small for them to pay (then the spare cores serve HTTP and
    preparation). Threads in use never exceed ``cores``: a batch waits for its share.
    ``cores=None`` (one lane, a GPU): one batch at a time, and the
    runners are not told a thread count.
    """

    def __init__(self, lanes: int = 1, cores: int | None = None, lone: int | None = None):
        if lanes < 1 or (lanes > 1 and not cores):
            raise ValueError("several lanes need the number of cores to share")
        self.lanes = lanes
        self.cores = cores
        self.width = max(1, (cores or 1) // lanes)
        """Threads of a batch that shares the machine."""
        self.lone = lone or cores or 0
        """Threads of a batch that finds the machine idle with nothing else to run (a small model's: fewer)."""
        self.running = 0
        self.free = cores or 0
        self._freed = asyncio.Event()

    def _full(self) -> bool:
        return self.running >= self.lanes or (self.cores is not None and self.free < self.width)

    async def available(self) -> None:
        """Wait until a batch could start (the batcher takes pending samples only then, so that samples
        arriving while every lane is busy join the next batch)."""
        while self._full():
            self._freed.clear()
            await self._freed.wait()

    async def take(self, more_work: Callable[[], bool]) -> int | None:
        """Wait for a lane; the threads the batch gets (None: the runner keeps its own setting)."""
        await self.available()
        self.running += 1
        if self.cores is None:
            return None
        threads = min(self.free, self.lone) if self.running == 1 and not more_work() else self.width
        self.free -= threads
        return threads

    def give_back(self, threads: int | None) -> None:
        self.running -= 1
        self.free += threads or 0
        self._freed.set()


@dataclass
class _Job:
    """One request's samples and the future its handler awaits."""

    items: Sequence[EncodedInput]
    future: asyncio.Future
    membership: list[int | None] = field(default_factory=list)
    """Per item, its group (run as one unit through ``run_group``), or None (mixed into batches)."""
    enqueued: float = field(default_factory=time.monotonic)
    results: list[float | None] = field(default_factory=list)
    failures: dict[int, Exception] = field(default_factory=dict)
    remaining: int = 0
    cancelled: bool = False
    first_start: float | None = None
    last_end: float | None = None

    def __post_init__(self) -> None:
        self.results = [None] * len(self.items)
        self.remaining = len(self.items)


@dataclass
class _Entry:
    job: _Job
    index: int

    @property
    def group(self) -> int | None:
        return self.job.membership[self.index]

    @property
    def tokens(self) -> int:
        return self.job.items[self.index].num_tokens

    @property
    def item(self) -> EncodedInput:
        return self.job.items[self.index]


def shared_prefix_units(taken: list[_Entry]) -> tuple[list[list[_Entry]], list[_Entry]]:
    """Split what a batch took into groups run through ``run_group`` and the rest, batched normally.

    A request's own groups (the items of one /score call sharing prompt + images) stay as they are;
    the other samples that carry the same ``prefix_key`` form groups across requests: a GRPO group sent
    as G one-sample requests runs its images and prompt once, as if it had come in one call.
    """
    own: dict[tuple[int, int], list[_Entry]] = {}
    by_key: dict[bytes, list[_Entry]] = {}
    rest: list[_Entry] = []
    for entry in taken:
        if entry.group is not None:
            own.setdefault((id(entry.job), entry.group), []).append(entry)
        elif entry.item.prefix_key is not None:
            by_key.setdefault(entry.item.prefix_key, []).append(entry)
        else:
            rest.append(entry)
    units = list(own.values())
    for group in by_key.values():
        if len(group) > 1:
            units.append(group)
        else:
            rest.extend(group)  # a key nobody else in the batch has: nothing to share
    return units, rest


class DynamicBatcher:
    """Forms batches across requests and runs them through ``run_batch`` one at a time."""

    def __init__(
        self,
        run_batch: Runner,
        run_group: Runner,
        metrics: ModelMetrics,
        max_batch_tokens: int,
        max_batch_size: int = default("max_batch_size"),
        max_wait_ms: float = default("max_wait_ms"),
        on_model_error: ModelErrorHook | None = None,
        lanes: CoreLanes | None = None,
        requests_in_flight: Callable[[], int] | None = None,
    ):
        self.run_batch = run_batch
        self.run_group = run_group
        self.metrics = metrics
        self.on_model_error = on_model_error
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_ms / 1000
        self._pending: deque[_Entry] = deque()
        self._arrived = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.lanes = lanes or CoreLanes()
        self._running: set[asyncio.Task] = set()
        self._crashed = False
        self._requests_in_flight = requests_in_flight
        """The model's admitted requests (None: unknown, a batch always waits up to ``max_wait``)."""
        self._open_jobs = 0
        """Requests that reached :meth:`run` and wait for their scores."""

    @property
    def queued(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="vlreward-batcher")

    async def close(self) -> None:
        tasks = [t for t in (self._task, *self._running) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task = None

    def healthy(self) -> bool:
        return self._task is not None and not self._task.done() and not self._crashed

    async def run(self, items: Sequence[EncodedInput], groups: Groups = ()) -> BatchResult:
        """Queue a request's samples and wait for their scores (in order); cancelling drops them."""
        membership = group_of(len(items), groups)
        job = _Job(items=items, future=asyncio.get_running_loop().create_future(), membership=membership)
        self._pending.extend(_Entry(job, i) for i in range(len(items)))
        self.metrics.queue_depth.set(len(self._pending))
        self._open_jobs += 1
        self._arrived.set()
        try:
            await asyncio.shield(job.future)
        except asyncio.CancelledError:
            job.cancelled = True
            raise
        finally:
            self._open_jobs -= 1
        start = job.first_start or job.enqueued
        return BatchResult(
            scores=job.results,
            queue_ms=(start - job.enqueued) * 1000,
            inference_ms=((job.last_end or start) - start) * 1000,
            failures=job.failures,
        )

    def _more_coming(self) -> bool:
        """Whether a request admitted to the model is still on its way here (being prepared): only then can
        waiting fill the batch; a lone request runs at once."""
        return self._requests_in_flight is None or self._requests_in_flight() > self._open_jobs

    async def _wait_to_fill(self) -> None:
        loop = asyncio.get_running_loop()
        until = loop.time() + self.max_wait_s
        while len(self._pending) < self.max_batch_size and self._more_coming():
            remaining = until - loop.time()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return

    def _take_pending(self) -> list[_Entry]:
        """Everything queued whose request is still waiting; dropped entries are counted."""
        taken, dropped = [], 0
        while self._pending:
            entry = self._pending.popleft()
            if entry.job.cancelled or entry.job.future.done():
                dropped += 1
            else:
                taken.append(entry)
        self.metrics.queue_depth.set(0)
        if dropped:
            self.metrics.reject("dropped_from_queue", dropped)
        return taken

    async def _loop(self) -> None:
        while True:
            await self.lanes.available()
            if not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            await self._wait_to_fill()
            taken = self._take_pending()
            groups, entries = shared_prefix_units(taken)
            plan = plan_batches([e.tokens for e in entries], self.max_batch_size, self.max_batch_tokens)
            work = [(self.run_group, group) for group in groups]
            work += [(self.run_batch, [entries[i] for i in indices]) for indices in plan]
            for number, (runner, batch) in enumerate(work):
                threads = await self.lanes.take(functools.partial(self._more_work, len(work) - number - 1))
                batch = [e for e in batch if not e.job.cancelled]
                if not batch:
                    self.lanes.give_back(threads)
                    continue
                if threads is not None:
                    runner = functools.partial(runner, threads=threads)
                task = asyncio.get_running_loop().create_task(self._run(batch, runner))
                self._running.add(task)
                task.add_done_callback(functools.partial(self._finished, threads=threads))

    def _more_work(self, later_units: int) -> bool:
        """Whether anything but the batch about to start is waiting to run."""
        return later_units > 0 or bool(self._pending)

    def _finished(self, task: asyncio.Task, threads: int | None) -> None:
        self._running.discard(task)
        self.lanes.give_back(threads)
        if not task.cancelled() and task.exception() is not None:  # a bug, not the model (run_isolating's)
            log.error("a batch task crashed", exc_info=task.exception())
            self._crashed = True

    async def _run(self, batch: list[_Entry], runner: Runner) -> None:
        start = time.monotonic()
        for entry in batch:
            self.metrics.queue_wait.observe(start - entry.job.enqueued)
            if entry.job.first_start is None:
                entry.job.first_start = start
        self.metrics.batch_size.observe(len(batch))
        self.metrics.batch_tokens.observe(max(e.tokens for e in batch) * len(batch))
        try:
            scores = await run_isolating(runner, [e.item for e in batch], self.metrics, self.on_model_error)
        except EngineBroken as exc:  # no retry helps: every request in the batch gets the error
            log.exception("batch of %d failed", len(batch))
            for entry in batch:
                if not entry.job.future.done():
                    entry.job.future.set_exception(exc)
            return
        end = time.monotonic()
        self.metrics.inference_duration.observe(end - start)
        for entry, score in zip(batch, scores, strict=True):
            job = entry.job
            if isinstance(score, Exception):
                job.failures[entry.index] = score
            else:
                job.results[entry.index] = score
            job.remaining -= 1
            job.last_end = end
            if job.remaining == 0 and not job.future.done():
                job.future.set_result(None)
