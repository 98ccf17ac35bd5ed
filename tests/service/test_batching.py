"""The schedulers, driven by events (a fake runner that waits for the test), never by sleeps."""

from __future__ import annotations

import asyncio
import functools
import random
import time
from dataclasses import dataclass

import pytest

from vlreward.service.batching import (
    BATCH_TOKENS,
    CPU_BATCH_ACTIVATION_BYTES,
    CPU_MIN_BATCH_TOKENS,
    CoreLanes,
    DirectScheduler,
    DynamicBatcher,
    batch_tokens,
    group_of,
    lanes_for,
    plan_batches,
    run_isolating,
)
from vlreward.service.errors import EngineBroken, OutOfMemory
from vlreward.service.metrics import Metrics, ModelMetrics


@dataclass(frozen=True)
class Item:
    """An encoded sample as the scheduler sees it; its score is its name's number."""

    name: str
    num_tokens: int = 10
    prefix_key: bytes | None = None

    @property
    def score(self) -> float:
        return float(self.name.strip("abcdefghijklmnopqrstuvwxyz_") or 0)


class GatedRunner:
    """Records every batch it is handed and finishes it only when the test opens the gate."""

    def __init__(self, fail_on: str | None = None):
        self.batches: list[list[str]] = []
        self.started = asyncio.Event()
        self.gate = asyncio.Event()
        self.fail_on = fail_on

    async def __call__(self, batch: list[Item]) -> list[float]:
        self.batches.append([item.name for item in batch])
        self.started.set()
        await self.gate.wait()
        if self.fail_on is not None and any(item.name == self.fail_on for item in batch):
            raise RuntimeError("engine failed")
        return [item.score for item in batch]


def run_async(test):
    """Run an async test body on a fresh event loop (no plugin needed)."""

    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))

    return wrapper


def started_batcher(
    runner, metrics: Metrics, group_runner=None, max_batch_size: int = 8, max_wait_ms: float = 0, **options
) -> DynamicBatcher:
    """A running DynamicBatcher around the tests' runners, with a token budget no test item reaches."""
    batcher = DynamicBatcher(runner, group_runner or runner, metrics, max_batch_size=max_batch_size,
                             max_batch_tokens=10_000, max_wait_ms=max_wait_ms, **options)  # fmt: skip
    batcher.start()
    return batcher


def rejected(metrics: ModelMetrics, reason: str) -> float:
    return metrics.server.rejected.labels(reason=reason, model=metrics.model)._value.get()


def splits(metrics: ModelMetrics, reason: str) -> float:
    return metrics.server.batch_splits.labels(reason=reason, model=metrics.model)._value.get()


async def until(condition, steps: int = 1000) -> None:
    """Let the event loop run until ``condition()`` holds (bounded, so a bug fails instead of hanging)."""
    for _ in range(steps):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


def test_plan_batches_sorts_by_length_and_respects_size_and_token_budget():
    assert plan_batches([5, 1, 3, 2, 4], max_batch_size=2, max_batch_tokens=100) == [[1, 3], [2, 4], [0]]
    assert plan_batches([10, 10, 10, 50], max_batch_size=8, max_batch_tokens=30) == [[0, 1, 2], [3]]
    assert plan_batches([500], max_batch_size=8, max_batch_tokens=30) == [[0]]  # too long: alone, not dropped
    assert plan_batches([], max_batch_size=8, max_batch_tokens=30) == []
    # the budget counts the padded batch with the newcomer in it: 4 x 10 = 40 tokens; two batches, evened
    assert plan_batches([10, 10, 10, 10], max_batch_size=8, max_batch_tokens=30) == [[0, 1], [2, 3]]
    assert plan_batches([10, 10, 10, 10], max_batch_size=8, max_batch_tokens=40) == [[0, 1, 2, 3]]


def test_plan_batches_evens_the_batches_out_so_no_small_one_trails():
    # 32 samples of ~1k tokens under the GPU's 16k budget: 11 + 11 + 10, not 15 + 15 + 2
    lengths = [1029 + i % 3 for i in range(32)]
    assert [len(b) for b in plan_batches(lengths, max_batch_size=32, max_batch_tokens=16384)] == [11, 11, 10]
    assert [len(b) for b in plan_batches([7] * 10, max_batch_size=4, max_batch_tokens=1000)] == [4, 3, 3]


def test_plan_batches_uses_the_fewest_batches_within_the_limits_for_any_lengths():
    rng = random.Random(0)
    for _ in range(300):
        lengths = [rng.randint(1, 400) for _ in range(rng.randint(1, 60))]
        size, budget = rng.randint(1, 16), rng.randint(50, 3000)
        plan = plan_batches(lengths, max_batch_size=size, max_batch_tokens=budget)
        assert sorted(i for batch in plan for i in batch) == list(range(len(lengths)))
        for batch in plan:
            assert len(batch) <= size
            assert len(batch) == 1 or max(lengths[i] for i in batch) * len(batch) <= budget
        greedy, current = 0, 0  # the batches a greedy fill in length order makes: the plan uses no more
        for length in sorted(lengths):
            if current and (current >= size or length * (current + 1) > budget):
                greedy, current = greedy + 1, 0
            current += 1
        assert len(plan) == greedy + 1


def test_an_unset_token_budget_is_the_devices_default_and_on_the_cpu_fits_the_mlp_activations():
    assert BATCH_TOKENS["cpu"] < BATCH_TOKENS["cuda"]  # on the CPU large batches lose (see BATCH_TOKENS)
    assert batch_tokens(None, "cuda", 1536 * 4) == BATCH_TOKENS["cuda"]
    # on the CPU: a batch's MLP activations within CPU_BATCH_ACTIVATION_BYTES (3 MiB), 256 to 2048 tokens
    assert batch_tokens(None, "cpu", 1536 * 4) == 512  # the bench model in float32
    assert batch_tokens(None, "cpu", 256 * 4) == BATCH_TOKENS["cpu"]  # the tiny model: capped
    assert batch_tokens(None, "cpu", 18944 * 4) == CPU_MIN_BATCH_TOKENS  # a 7B: short samples still share
    assert CPU_MIN_BATCH_TOKENS * 1536 * 4 <= CPU_BATCH_ACTIVATION_BYTES
    assert batch_tokens(512, "cpu", 256 * 4) == 512 and batch_tokens(65536, "cuda", 1536 * 4) == 65536


@run_async
async def test_queue_and_inference_times_add_up_to_no_more_than_the_wait_and_cover_the_forward():
    runner, metrics = GatedRunner(), Metrics().for_model("m")
    batcher = started_batcher(runner, metrics)
    started = time.monotonic()
    pending = asyncio.ensure_future(batcher.run([Item("a1", num_tokens=7), Item("b2", num_tokens=5)]))
    await runner.started.wait()
    await asyncio.sleep(0.05)  # the forward pass takes at least this long
    runner.gate.set()
    result = await pending
    elapsed_ms = (time.monotonic() - started) * 1000
    assert result.queue_ms >= 0 and result.inference_ms >= 50 and result.queue_ms + result.inference_ms <= elapsed_ms
    assert metrics.batch_tokens._sum.get() == 7 * 2  # padded: the longest sample times the batch size
    await batcher.close()


@run_async
async def test_requests_that_arrive_while_a_batch_runs_share_the_next_batch_in_length_order():
    runner, metrics = GatedRunner(), Metrics().for_model("m")
    batcher = started_batcher(runner, metrics)
    first = asyncio.ensure_future(batcher.run([Item("a1")]))
    await runner.started.wait()
    runner.started.clear()
    second = asyncio.ensure_future(batcher.run([Item("b2", 30), Item("b3", 20)]))
    third = asyncio.ensure_future(batcher.run([Item("c4", 10)]))
    await until(lambda: batcher.queued == 3)
    runner.gate.set()
    assert (await first).scores == [1.0]
    assert (await second).scores == [2.0, 3.0]
    assert (await third).scores == [4.0]
    assert runner.batches == [["a1"], ["c4", "b3", "b2"]]
    await batcher.close()


@run_async
async def test_a_cancelled_request_has_its_queued_samples_dropped_and_counted():
    runner, metrics = GatedRunner(), Metrics().for_model("m")
    batcher = started_batcher(runner, metrics)
    busy = asyncio.ensure_future(batcher.run([Item("a1")]))
    await runner.started.wait()
    gone = asyncio.ensure_future(batcher.run([Item("x8"), Item("x9")]))
    kept = asyncio.ensure_future(batcher.run([Item("k5")]))
    await until(lambda: batcher.queued == 3)
    gone.cancel()
    runner.gate.set()
    assert (await busy).scores == [1.0] and (await kept).scores == [5.0]
    assert runner.batches == [["a1"], ["k5"]]
    assert rejected(metrics, "dropped_from_queue") == 2
    await batcher.close()


@run_async
async def test_a_failing_sample_fails_alone_and_the_batcher_goes_on():
    runner, metrics, told = GatedRunner(fail_on="bad7"), Metrics().for_model("m"), []
    batcher = started_batcher(runner, metrics, max_wait_ms=50, on_model_error=told.append)
    runner.gate.set()
    mixed, other = await asyncio.gather(
        batcher.run([Item("a1"), Item("bad7"), Item("b2")]), batcher.run([Item("c3"), Item("d4")])
    )
    assert mixed.scores == [1.0, None, 2.0] and list(mixed.failures) == [1]
    assert str(mixed.failures[1]) == "engine failed" and [str(e) for e in told] == ["engine failed"]
    assert other.scores == [3.0, 4.0] and other.failures == {}
    assert runner.batches[0] == ["a1", "bad7", "b2", "c3", "d4"]  # one batch, then halves down to bad7 alone
    assert ["bad7"] in runner.batches and splits(metrics, "error") == 2
    assert (await batcher.run([Item("ok3")])).scores == [3.0]
    assert batcher.healthy()
    await batcher.close()
    assert not batcher.healthy()


class FlakyRunner:
    """Raises ``error`` for batches over ``above`` samples (all when 0); records batch sizes."""

    def __init__(self, error: Exception, above: int = 0):
        self.error, self.above, self.sizes = error, above, []

    async def __call__(self, batch: list[Item]) -> list[float]:
        self.sizes.append(len(batch))
        if len(batch) > self.above:
            raise self.error
        return [item.score for item in batch]


@run_async
async def test_run_isolating_halves_an_out_of_memory_batch_until_it_fits():
    runner, metrics = FlakyRunner(OutOfMemory("CUDA out of memory"), above=3), Metrics().for_model("m")
    items = [Item(f"x{i}") for i in range(10)]
    assert await run_isolating(runner, items, metrics) == [float(i) for i in range(10)]
    assert runner.sizes == [10, 5, 2, 3, 5, 2, 3]
    assert splits(metrics, "out_of_memory") == 3


@run_async
async def test_run_isolating_never_retries_a_broken_engine():
    runner, told = FlakyRunner(EngineBroken("CUDA error")), []
    with pytest.raises(EngineBroken):
        await run_isolating(runner, [Item("a1"), Item("b2")], Metrics().for_model("m"), told.append)
    assert runner.sizes == [2] and len(told) == 1


@run_async
async def test_the_direct_scheduler_isolates_a_failing_item_of_a_request():
    runner = GatedRunner(fail_on="bad2")
    runner.gate.set()
    result = await DirectScheduler(runner, runner, Metrics().for_model("m")).run([Item("a1"), Item("bad2"), Item("c3")])
    assert result.scores == [1.0, None, 3.0] and list(result.failures) == [1]


@run_async
async def test_grouped_requests_run_whole_through_the_group_runner_never_mixed_with_others():
    batch_runner, group_runner, metrics = GatedRunner(), GatedRunner(), Metrics().for_model("m")
    batcher = started_batcher(batch_runner, metrics, group_runner=group_runner, max_batch_size=2)
    batch_runner.gate.set()
    group_runner.gate.set()
    group = asyncio.ensure_future(batcher.run([Item("g1"), Item("g2"), Item("g3")], groups=[[0, 1, 2]]))
    single = asyncio.ensure_future(batcher.run([Item("s4")]))
    assert (await group).scores == [1.0, 2.0, 3.0]
    assert (await single).scores == [4.0]
    assert group_runner.batches == [["g1", "g2", "g3"]]  # over max_batch_size, still one unit
    assert batch_runner.batches == [["s4"]]
    # One request, two groups and a loner (a /score call with GRPO groups): each group is one unit.
    mixed = [Item("h5"), Item("s6"), Item("k7"), Item("h8"), Item("k9"), Item("z10", num_tokens=5)]
    result = await batcher.run(mixed, groups=[[0, 3], [2, 4], [5]])
    assert result.scores == [5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    assert sorted(group_runner.batches[1:]) == [["h5", "h8"], ["k7", "k9"]]
    assert sorted(batch_runner.batches[1]) == ["s6", "z10"]  # a group of one is batched like the rest
    with pytest.raises(ValueError, match="two groups"):
        await batcher.run(mixed, groups=[[0, 1], [1, 2]])
    await batcher.close()


@run_async
async def test_samples_of_different_requests_with_one_prefix_key_run_as_one_group():
    batch_runner, group_runner, metrics = GatedRunner(), GatedRunner(), Metrics().for_model("m")
    batcher = started_batcher(batch_runner, metrics, group_runner, max_batch_size=7, max_wait_ms=60_000)
    batch_runner.gate.set()
    group_runner.gate.set()
    requests = [
        [Item("a1", prefix_key=b"k")],
        [Item("b2", prefix_key=b"k")],
        [Item("c3", prefix_key=b"j")],  # a key nobody else has: batched like the rest
        [Item("d4")],
        [Item("e5", prefix_key=b"k"), Item("f6")],
        [Item("g7", prefix_key=b"k")],  # its request's own group of one: shares across requests too
    ]
    results = await asyncio.gather(*(batcher.run(r, groups=[[0]] if r[0].name == "g7" else ()) for r in requests))
    assert [r.scores for r in results] == [[1.0], [2.0], [3.0], [4.0], [5.0, 6.0], [7.0]]
    assert group_runner.batches == [["a1", "b2", "e5", "g7"]]
    assert sorted(batch_runner.batches[0]) == ["c3", "d4", "f6"]
    await batcher.close()


@run_async
async def test_a_batch_waits_for_more_samples_until_it_is_full():
    runner, metrics = GatedRunner(), Metrics().for_model("m")
    batcher = started_batcher(runner, metrics, max_batch_size=3, max_wait_ms=60_000)
    runner.gate.set()
    first = asyncio.ensure_future(batcher.run([Item("a1")]))
    await until(lambda: batcher.queued == 1)
    for _ in range(50):
        await asyncio.sleep(0)
    assert runner.batches == []  # still waiting to fill (the wait is a minute)
    rest = asyncio.ensure_future(batcher.run([Item("b2"), Item("c3")]))
    assert (await first).scores == [1.0] and (await rest).scores == [2.0, 3.0]
    assert runner.batches == [["a1", "b2", "c3"]]
    await batcher.close()


@run_async
async def test_the_direct_scheduler_counts_samples_in_flight_and_uses_the_group_runner_for_groups():
    batch_runner, group_runner, metrics = GatedRunner(), GatedRunner(), Metrics().for_model("m")
    scheduler = DirectScheduler(batch_runner, group_runner, metrics)
    running = asyncio.ensure_future(scheduler.run([Item("a1"), Item("a2")]))
    await batch_runner.started.wait()
    assert scheduler.queued == 2
    batch_runner.gate.set()
    assert (await running).scores == [1.0, 2.0]
    assert scheduler.queued == 0
    group_runner.gate.set()
    assert (await scheduler.run([Item("g5"), Item("s6"), Item("g7")], groups=[[0, 2]])).scores == [5.0, 6.0, 7.0]
    assert group_runner.batches == [["g5", "g7"]] and batch_runner.batches[-1] == ["s6"]


def test_group_of_skips_groups_of_one_and_keeps_reading_the_others():
    assert group_of(5, [[3], [0, 1], [4, 2]]) == [1, 1, 2, None, 2]
    with pytest.raises(ValueError, match="two groups"):
        group_of(3, [[0, 1], [1, 2]])


@run_async
async def test_a_sample_arriving_within_max_wait_joins_the_waiting_batch():
    runner, metrics = GatedRunner(), Metrics().for_model("m")
    batcher = started_batcher(runner, metrics, max_wait_ms=1500)
    runner.gate.set()
    first = asyncio.ensure_future(batcher.run([Item("a1")]))
    await until(lambda: batcher.queued == 1)
    await asyncio.sleep(0.01)  # well inside the 1.5 s wait (a zero wait would have run a1 alone)
    second = asyncio.ensure_future(batcher.run([Item("b2")]))
    assert (await first).scores == [1.0] and (await second).scores == [2.0]
    assert runner.batches == [["a1", "b2"]]  # and the wait ended although the batch was not full
    await batcher.close()


@run_async
async def test_a_lone_request_runs_at_once_when_no_other_admitted_request_is_on_its_way():
    runner, metrics = GatedRunner(), Metrics().for_model("m")
    batcher = started_batcher(runner, metrics, max_wait_ms=600_000, requests_in_flight=lambda: 1)
    runner.gate.set()
    result = await asyncio.wait_for(batcher.run([Item("a1")]), timeout=60)  # not the 10-minute wait
    assert result.scores == [1.0] and runner.batches == [["a1"]]
    await batcher.close()


@run_async
async def test_the_batch_waits_while_another_admitted_request_is_being_prepared_and_stops_when_it_arrives():
    runner, metrics = GatedRunner(), Metrics().for_model("m")
    batcher = started_batcher(runner, metrics, max_wait_ms=600_000, requests_in_flight=lambda: 2)
    runner.gate.set()
    first = asyncio.ensure_future(batcher.run([Item("a1")]))
    await until(lambda: batcher.queued == 1)
    for _ in range(20):  # the loop gets many turns: it keeps waiting for the second request
        await asyncio.sleep(0)
    assert runner.batches == []
    second = asyncio.ensure_future(batcher.run([Item("b2")]))
    done = await asyncio.wait_for(asyncio.gather(first, second), timeout=60)  # both here: no more waiting
    assert [r.scores for r in done] == [[1.0], [2.0]] and runner.batches == [["a1", "b2"]]
    await batcher.close()


@run_async
async def test_the_direct_scheduler_times_the_engine_call_and_runs_a_whole_group_through_the_group_runner():
    batch_runner, group_runner, metrics = GatedRunner(), GatedRunner(), Metrics().for_model("m")
    scheduler = DirectScheduler(batch_runner, group_runner, metrics)
    started = time.monotonic()
    running = asyncio.ensure_future(scheduler.run([Item("g1"), Item("g2")], groups=[[0, 1]]))
    await group_runner.started.wait()
    await asyncio.sleep(0.05)
    group_runner.gate.set()
    result = await running
    elapsed_ms = (time.monotonic() - started) * 1000
    assert result.scores == [1.0, 2.0] and batch_runner.batches == []  # nothing left for the batch runner
    assert result.queue_ms == 0 and 50 <= result.inference_ms <= elapsed_ms


@run_async
async def test_a_request_queued_behind_a_running_batch_reports_its_wait_and_the_metrics_add_up():
    runner, metrics = GatedRunner(), Metrics().for_model("m")
    batcher = started_batcher(runner, metrics)
    started = time.monotonic()
    running = asyncio.ensure_future(batcher.run([Item("a1")]))
    await runner.started.wait()
    queued = asyncio.ensure_future(batcher.run([Item("b2")]))
    await until(lambda: batcher.queued == 1)
    await asyncio.sleep(0.05)  # b2 waits at least this long behind a1's forward pass
    runner.gate.set()
    first, second = await running, await queued
    elapsed = time.monotonic() - started
    assert (
        second.queue_ms >= 50 and first.inference_ms >= 50 and second.queue_ms + second.inference_ms <= elapsed * 1000
    )
    assert 0.05 <= metrics.queue_wait._sum.get() <= 2 * elapsed  # a1 waited ~0, b2 at least 0.05 s
    assert 0.05 <= metrics.inference_duration._sum.get() <= 2 * elapsed
    assert metrics.queue_depth._value.get() == 0
    await batcher.close()


@run_async
async def test_a_request_split_over_several_batches_is_answered_only_when_all_are_scored():
    runner, metrics = GatedRunner(), Metrics().for_model("m")

    async def yielding(batch: list[Item]) -> list[float]:  # lets the waiting request run between batches
        await asyncio.sleep(0)
        return await runner(batch)

    batcher = started_batcher(yielding, metrics, max_batch_size=1)
    runner.gate.set()
    result = await asyncio.wait_for(batcher.run([Item("a1"), Item("b2"), Item("c3")]), 5)
    assert result.scores == [1.0, 2.0, 3.0] and runner.batches == [["a1"], ["b2"], ["c3"]]
    more = await asyncio.wait_for(batcher.run([Item(f"x{i}") for i in range(5)]), 5)  # over the size: no wait
    assert more.scores == [0.0, 1.0, 2.0, 3.0, 4.0]
    await batcher.close()


@run_async
async def test_more_samples_than_a_batch_holds_run_at_once_without_waiting():
    runner, metrics = GatedRunner(), Metrics().for_model("m")
    batcher = started_batcher(runner, metrics, max_batch_size=2, max_wait_ms=60_000)
    runner.gate.set()
    result = await asyncio.wait_for(batcher.run([Item("a1"), Item("b2"), Item("c3")]), 5)
    assert result.scores == [1.0, 2.0, 3.0] and runner.batches == [["a1", "b2"], ["c3"]]
    await batcher.close()


@run_async
async def test_a_broken_engine_fails_every_request_of_the_batch_and_the_service_is_told():
    told = []
    runner = FlakyRunner(EngineBroken("CUDA error"))
    batcher = started_batcher(runner, Metrics().for_model("m"), max_wait_ms=50, on_model_error=told.append)
    results = await asyncio.gather(
        batcher.run([Item("a1")]), batcher.run([Item("b2"), Item("c3")]), return_exceptions=True
    )
    assert all(isinstance(r, EngineBroken) for r in results) and runner.sizes == [3] and len(told) == 1
    assert DirectScheduler(runner, runner, Metrics().for_model("m")).healthy() and batcher.healthy()
    await batcher.close()


class LaneRunner:
    """Takes ``threads=`` like the CPU backend; records each batch's threads and the threads in use at
    once; every batch waits for the test's gate."""

    def __init__(self):
        self.threads: list[tuple[list[str], int]] = []
        self.in_use = 0
        self.most_in_use = 0
        self.running = 0
        self.gate = asyncio.Event()

    async def __call__(self, batch: list[Item], threads: int) -> list[float]:
        self.threads.append(([item.name for item in batch], threads))
        self.in_use += threads
        self.running += 1
        self.most_in_use = max(self.most_in_use, self.in_use)
        try:
            await self.gate.wait()
        finally:
            self.in_use -= threads
            self.running -= 1
        return [item.score for item in batch]


def test_lanes_default_to_two_on_a_cpu_and_one_where_the_engine_owns_its_threads():
    assert lanes_for(None, 2) == 2 and lanes_for(None, 16) == 2 and lanes_for(None, 1) == 1
    assert lanes_for(4, 16) == 4 and lanes_for(4, 2) == 2  # never more lanes than cores
    assert lanes_for(None, None) == 1 and lanes_for(4, None) == 1  # a GPU: one batch at a time
    with pytest.raises(ValueError, match="cores"):
        CoreLanes(2, None)


@run_async
async def test_a_lone_batch_on_an_idle_machine_gets_every_core():
    runner, metrics = LaneRunner(), Metrics().for_model("m")
    batcher = started_batcher(runner, metrics, max_batch_size=1, lanes=CoreLanes(2, cores=2))
    runner.gate.set()
    assert (await batcher.run([Item("a1")])).scores == [1.0]
    assert runner.threads == [(["a1"], 2)]
    await batcher.close()


@run_async
async def test_a_small_models_lone_batch_keeps_to_one_lane_and_the_next_starts_on_the_spare_core():
    runner, metrics = LaneRunner(), Metrics().for_model("m")
    batcher = started_batcher(runner, metrics, max_batch_size=1, lanes=CoreLanes(2, cores=2, lone=1))
    first = asyncio.ensure_future(batcher.run([Item("a1")]))
    await until(lambda: runner.running == 1)
    assert runner.threads == [(["a1"], 1)]
    second = asyncio.ensure_future(batcher.run([Item("b2")]))
    await until(lambda: runner.running == 2)
    runner.gate.set()
    assert (await first).scores == [1.0] and (await second).scores == [2.0]
    assert runner.threads == [(["a1"], 1), (["b2"], 1)] and runner.most_in_use == 2
    await batcher.close()


@run_async
async def test_with_work_for_several_batches_two_run_at_once_on_a_core_each_and_never_more_threads_than_cores():
    runner, metrics = LaneRunner(), Metrics().for_model("m")
    batcher = started_batcher(runner, metrics, max_batch_size=1, lanes=CoreLanes(2, cores=2))
    requests = [asyncio.ensure_future(batcher.run([Item(f"r{i}")])) for i in range(1, 6)]
    await until(lambda: runner.running == 2)
    assert [threads for _, threads in runner.threads] == [1, 1]  # more was queued: nobody took both cores
    for _ in range(20):
        await asyncio.sleep(0)
    assert runner.running == 2 and batcher.lanes.free == 0  # the third waits for a core
    runner.gate.set()
    assert [(await r).scores for r in requests] == [[1.0], [2.0], [3.0], [4.0], [5.0]]
    assert runner.most_in_use <= 2 and sorted(n for names, _ in runner.threads for n in names) == [
        f"r{i}" for i in range(1, 6)
    ]
    assert batcher.lanes.running == 0 and batcher.lanes.free == 2  # every lane and core given back
    await batcher.close()


@run_async
async def test_a_batch_that_took_every_core_makes_the_next_wait_until_it_is_done():
    runner, metrics = LaneRunner(), Metrics().for_model("m")
    batcher = started_batcher(runner, metrics, max_batch_size=1, lanes=CoreLanes(2, cores=2))
    first = asyncio.ensure_future(batcher.run([Item("a1")]))
    await until(lambda: runner.running == 1)
    second = asyncio.ensure_future(batcher.run([Item("b2")]))
    await until(lambda: batcher.queued == 1)
    for _ in range(20):
        await asyncio.sleep(0)
    assert runner.running == 1 and runner.threads == [(["a1"], 2)]  # not started beside it on a third thread
    runner.gate.set()
    assert (await first).scores == [1.0] and (await second).scores == [2.0]
    assert runner.threads == [(["a1"], 2), (["b2"], 2)] and runner.most_in_use == 2
    await batcher.close()


@run_async
async def test_one_lane_runs_one_batch_at_a_time_and_tells_the_runner_no_thread_count():
    runner, metrics = GatedRunner(), Metrics().for_model("m")  # takes no threads= argument
    batcher = started_batcher(runner, metrics, max_batch_size=1, lanes=CoreLanes(1))
    requests = [asyncio.ensure_future(batcher.run([Item(f"r{i}")])) for i in range(1, 4)]
    await runner.started.wait()
    for _ in range(20):
        await asyncio.sleep(0)
    assert runner.batches == [["r1"]]
    runner.gate.set()
    assert [(await r).scores for r in requests] == [[1.0], [2.0], [3.0]]
    await batcher.close()


@run_async
async def test_a_batch_task_that_crashes_makes_the_batcher_unhealthy():
    async def wrong_count(batch: list[Item], threads: int) -> list[float]:
        return []  # a runner bug: fewer scores than samples

    batcher = started_batcher(wrong_count, Metrics().for_model("m"), lanes=CoreLanes(2, cores=2))
    assert batcher.healthy()
    request = asyncio.ensure_future(batcher.run([Item("a1")]))
    await until(lambda: not batcher.healthy())
    request.cancel()
    await batcher.close()
