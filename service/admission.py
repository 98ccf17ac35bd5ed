"""Admission: which scoring requests are let in, and how long they may take.

Every backend sits behind the same admission: a bound on queued samples (beyond it
:class:`~vlreward.service.errors.Overloaded`, a 429 with ``Retry-After``), a deadline per request
(:class:`~vlreward.service.errors.DeadlineExceeded`) and cancellation (a client that goes away has
its work cancelled; the scheduler drops its samples). How admitted samples reach the backend is the
scheduler's job (:mod:`vlreward.service.batching`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from vlreward.service.backends.base import EncodedInput
from vlreward.service.batching import BatchResult, Groups, Scheduler
from vlreward.service.errors import DeadlineExceeded, Overloaded
from vlreward.service.metrics import ModelMetrics


class Admission:
    """Bounded, deadline-limited, cancellable access to one model's scheduler. ``queued``: the samples
    waiting in the whole server (every model's scheduler), which ``max_queue`` bounds; default: this
    scheduler's own."""

    def __init__(
        self, scheduler: Scheduler, metrics: ModelMetrics, max_queue: int, queued: Callable[[], int] | None = None
    ):
        self.scheduler = scheduler
        self.metrics = metrics
        self.max_queue = max_queue
        self._queued = queued or (lambda: scheduler.queued)

    async def submit(self, items: Sequence[EncodedInput], timeout_s: float, groups: Groups = ()) -> BatchResult:
        """Score a request's samples (in order) within ``timeout_s``, or refuse it when the queue is full.

        ``groups``: indices of samples that share their prompt and images (a /rank request, a GRPO group
        in /score); each group runs as one unit.
        """
        if not items:
            return BatchResult([], 0.0, 0.0)
        if timeout_s <= 0:
            self.metrics.reject("timeout")
            raise DeadlineExceeded("request deadline passed while preparing its inputs")
        queued = self._queued()
        if queued + len(items) > self.max_queue:
            self.metrics.reject("overloaded")
            raise Overloaded.queue_full(queued, self.max_queue)
        try:
            return await asyncio.wait_for(self.scheduler.run(items, groups), timeout=timeout_s)
        except TimeoutError as exc:
            self.metrics.reject("timeout")
            raise DeadlineExceeded(f"request did not finish within {timeout_s:g} s") from exc
        except asyncio.CancelledError:
            self.metrics.reject("cancelled")
            raise
