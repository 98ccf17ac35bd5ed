"""Admission in front of any scheduler: queue bound, deadline, cancellation (events, not sleeps)."""

from __future__ import annotations

import asyncio

import pytest

from tests.service.test_batching import GatedRunner, Item, rejected, run_async, until
from vlreward.service.admission import Admission
from vlreward.service.batching import DirectScheduler
from vlreward.service.errors import DeadlineExceeded, ErrorKind, Overloaded
from vlreward.service.metrics import Metrics


def admission(max_queue: int = 4) -> tuple[Admission, GatedRunner, Metrics]:
    runner, metrics = GatedRunner(), Metrics().for_model("m")
    return Admission(DirectScheduler(runner, runner, metrics), metrics, max_queue=max_queue), runner, metrics


@run_async
async def test_a_request_over_the_queue_bound_is_refused_with_retry_after_and_counted():
    gate, runner, metrics = admission(max_queue=4)
    held = asyncio.ensure_future(gate.submit([Item("a1"), Item("a2"), Item("a3")], timeout_s=60))
    await runner.started.wait()
    with pytest.raises(Overloaded) as refused:
        await gate.submit([Item("b1"), Item("b2")], timeout_s=60)
    assert refused.value.kind is ErrorKind.OVERLOADED and refused.value.retry_after >= 1
    assert rejected(metrics, "overloaded") == 1
    runner.gate.set()
    assert (await held).scores == [1.0, 2.0, 3.0]
    assert (await gate.submit([Item("c4")], timeout_s=60)).scores == [4.0]


@run_async
async def test_a_request_past_its_deadline_gets_deadline_exceeded_and_leaves_the_queue():
    gate, runner, metrics = admission()
    with pytest.raises(DeadlineExceeded):
        await gate.submit([Item("a1")], timeout_s=0.01)  # the runner never opens its gate
    assert rejected(metrics, "timeout") == 1
    assert gate.scheduler.queued == 0


@run_async
async def test_no_time_left_is_refused_before_anything_is_queued():
    gate, runner, metrics = admission()
    with pytest.raises(DeadlineExceeded, match="preparing"):
        await gate.submit([Item("a1")], timeout_s=0)
    assert runner.batches == []


@run_async
async def test_cancelling_a_request_cancels_its_work_and_frees_its_queue_places():
    gate, runner, metrics = admission(max_queue=2)
    task = asyncio.ensure_future(gate.submit([Item("a1"), Item("a2")], timeout_s=60))
    await runner.started.wait()
    assert gate.scheduler.queued == 2
    task.cancel()
    await until(task.done)
    assert rejected(metrics, "cancelled") == 1
    assert gate.scheduler.queued == 0


@run_async
async def test_an_empty_request_is_answered_at_once():
    gate, runner, _ = admission()
    assert (await gate.submit([], timeout_s=60)).scores == []
    assert runner.batches == []
