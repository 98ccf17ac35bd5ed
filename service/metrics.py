"""Prometheus metrics (prefix ``vlreward_``). Each app gets its own registry so tests can run several."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_TOKEN_BUCKETS = (64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
_SCORE_BUCKETS = (-10.0, -5.0, -3.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0)
REJECTION_REASONS = (
    "body_too_large",
    "unauthorized",
    "client_disconnected",
    "dropped_from_queue",
    "timeout",
    "overloaded",
    "cancelled",
    "draining",
    "not_ready",
    "item_error",
    "model_error",
    "image_memory",
    "connections",
    "read_timeout",
    "headers_too_large",
)
"""Every ``reason`` of ``vlreward_rejected_total``: each series exists from the start (at 0), so that
dashboards and alert rules see them before the first rejection."""


class _BackendCounters(Collector):
    """Counters the backend keeps itself (read at scrape time; 0 until a backend is attached)."""

    def __init__(self) -> None:
        self.backend: Any = None

    def collect(self):
        runs = CounterMetricFamily(
            "vlreward_shared_prefix_runs",
            "Prompt + image prefixes computed once for several samples (/rank, GRPO groups in /score; "
            "transformers backend; vLLM's prefix cache does this inside the engine).",
        )
        runs.add_metric([], float(getattr(self.backend, "shared_prefix_runs", 0)))
        yield runs


class Metrics:
    """The service's metrics (names and labels are a contract: dashboards and alert rules query them)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "vlreward_requests", "HTTP requests by endpoint and status code.", ["endpoint", "status"], registry=r
        )
        self.request_duration = Histogram(
            "vlreward_request_duration_seconds",
            "End-to-end request latency.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "vlreward_queue_wait_seconds",
            "Time a sample waited before its batch started.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_duration = Histogram(
            "vlreward_inference_duration_seconds", "Forward-pass time per batch.", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "vlreward_batch_size",
            "Samples per forward pass (transformers backend).",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.batch_tokens = Histogram(
            "vlreward_batch_tokens",
            "Padded tokens per forward pass (transformers backend).",
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("vlreward_queue_depth", "Samples waiting for a batch.", registry=r)
        self.inflight = Gauge("vlreward_inflight_requests", "Scoring requests being handled.", registry=r)
        self.samples = Counter("vlreward_samples", "Samples scored.", ["endpoint"], registry=r)
        self.input_tokens = Counter("vlreward_input_tokens", "Input tokens scored, image tokens included.", registry=r)
        self.images = Counter("vlreward_images", "Images scored.", registry=r)
        self.rejected = Counter("vlreward_rejected", "Requests or samples refused, by reason.", ["reason"], registry=r)
        for reason in REJECTION_REASONS:
            self.rejected.labels(reason=reason)
        self.batch_splits = Counter(
            "vlreward_batch_splits",
            "Batches the model failed on, split in halves and rerun (reason: out_of_memory or error), so that one "
            "bad sample fails alone and a batch too large for memory still runs.",
            ["reason"],
            registry=r,
        )
        for reason in ("out_of_memory", "error"):
            self.batch_splits.labels(reason=reason)
        self.score = Histogram(
            "vlreward_score", "Returned rewards (for drift panels).", buckets=_SCORE_BUCKETS, registry=r
        )
        self.ready = Gauge("vlreward_ready", "1 when the model is loaded, warmed and its probe passed.", registry=r)
        self.model_info = Gauge(
            "vlreward_model_info",
            "The served model (value always 1).",
            ["model", "backend", "dtype", "device"],
            registry=r,
        )
        self.queue_limit = Gauge(
            "vlreward_queue_limit", "Samples that may wait at most (max_queue); beyond it: 429.", registry=r
        )
        self._backend_counters = _BackendCounters()
        r.register(self._backend_counters)
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, ...

    def watch_backend(self, backend: Any) -> None:
        """Export the counters ``backend`` keeps (see :class:`_BackendCounters`)."""
        self._backend_counters.backend = backend

    def reject(self, reason: str, count: int = 1) -> None:
        """Count refused requests or samples under one of :data:`REJECTION_REASONS`."""
        if reason not in REJECTION_REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}; add it to REJECTION_REASONS")
        self.rejected.labels(reason=reason).inc(count)
