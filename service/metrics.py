"""Prometheus metrics (prefix ``vlreward_``). Each app gets its own registry so tests can run several."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from vlreward.service.judge import PARSE_FAILURES

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_DISAGREEMENT_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
_TOKEN_BUCKETS = (64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
_STEP_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
_SCORE_BUCKETS = (-10.0, -5.0, -3.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0)
SERVER_REJECTION_REASONS = (
    "body_too_large",
    "unauthorized",
    "client_disconnected",
    "connections",
    "read_timeout",
    "headers_too_large",
)
"""Refusals before a request reaches a model: counted with ``model=""``."""
MODEL_REJECTION_REASONS = (
    "dropped_from_queue",
    "timeout",
    "overloaded",
    "cancelled",
    "draining",
    "not_ready",
    "item_error",
    "model_error",
    "image_memory",
)
"""Refusals of a request to one model: counted with its name."""
REJECTION_REASONS = SERVER_REJECTION_REASONS + MODEL_REJECTION_REASONS
"""Every ``reason`` of ``vlreward_rejected_total``: each series exists from the start (at 0; the model
ones for every served model), so that dashboards and alert rules see them before the first rejection."""
JUDGE_ORDERS = ("agree", "disagree")
"""The ``orders`` of ``vlreward_judge_debiased_pairs``."""
SERVER = ""
"""The ``model`` label of series that belong to no one model (a request refused before it chose one)."""


class _BackendCounters(Collector):
    """Counters each model's backend keeps itself (read at scrape time; 0 until its backend is attached)."""

    def __init__(self) -> None:
        self.backends: dict[str, Any] = {}

    def collect(self):
        runs = CounterMetricFamily(
            "vlreward_shared_prefix_runs",
            "Prompt + image prefixes computed once for several samples (/rank, GRPO groups in /score; "
            "transformers backend; vLLM's prefix cache does this inside the engine).",
            labels=["model"],
        )
        for model, backend in self.backends.items():
            runs.add_metric([model], float(getattr(backend, "shared_prefix_runs", 0)))
        yield runs


class Metrics:
    """The service's metrics (names and labels are a contract: dashboards and alert rules query them)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "vlreward_requests",
            'HTTP requests by endpoint, status code and model ("" before a model was chosen).',
            ["endpoint", "status", "model"],
            registry=r,
        )
        self.request_duration = Histogram(
            "vlreward_request_duration_seconds",
            "End-to-end request latency.",
            ["endpoint", "model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "vlreward_queue_wait_seconds",
            "Time a sample waited before its batch started.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_duration = Histogram(
            "vlreward_inference_duration_seconds",
            "Forward-pass time per batch.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "vlreward_batch_size",
            "Samples per forward pass (transformers backend).",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.batch_tokens = Histogram(
            "vlreward_batch_tokens",
            "Padded tokens per forward pass (transformers backend).",
            ["model"],
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "vlreward_queue_depth",
            "Samples waiting for a batch (the server's bound, vlreward_queue_limit, covers every model).",
            ["model"],
            registry=r,
        )
        self.inflight = Gauge("vlreward_inflight_requests", "Scoring requests being handled.", registry=r)
        self.samples = Counter("vlreward_samples", "Samples scored.", ["endpoint", "model"], registry=r)
        self.input_tokens = Counter(
            "vlreward_input_tokens", "Input tokens scored, image tokens included.", ["model"], registry=r
        )
        self.images = Counter("vlreward_images", "Images scored.", ["model"], registry=r)
        self.rejected = Counter(
            "vlreward_rejected", "Requests or samples refused, by reason and model.", ["reason", "model"], registry=r
        )
        for reason in SERVER_REJECTION_REASONS:
            self.rejected.labels(reason=reason, model=SERVER)
        self.batch_splits = Counter(
            "vlreward_batch_splits",
            "Batches the model failed on, split in halves and rerun (reason: out_of_memory or error), so that one "
            "bad sample fails alone and a batch too large for memory still runs.",
            ["reason", "model"],
            registry=r,
        )
        self.score = Histogram(
            "vlreward_score", "Returned rewards (for drift panels).", ["model"], buckets=_SCORE_BUCKETS, registry=r
        )
        self.steps = Histogram(
            "vlreward_steps",
            "Steps per item scored by a process model.",
            ["model"],
            buckets=_STEP_BUCKETS,
            registry=r,
        )
        self.judge_pairs = Counter(
            "vlreward_judge_debiased_pairs",
            "Pairs a judge was asked in both orders (/compare, debias), by whether the two orders picked the same "
            "response (orders=agree) or the same position (orders=disagree: position bias).",
            ["model", "orders"],
            registry=r,
        )
        self.ensemble_disagreement = Histogram(
            "vlreward_ensemble_disagreement",
            "Per item, the weighted standard deviation of an ensemble's member z-scores (model: the ensemble).",
            ["model"],
            buckets=_DISAGREEMENT_BUCKETS,
            registry=r,
        )
        self.judge_parse_failures = Counter(
            "vlreward_judge_parse_failures",
            "Generated judge answers whose verdict could not be parsed, by reason (no_verdict: the declared pattern "
            "never matched; unknown_verdict: it matched a token that is no verdict; truncated: no match and the "
            "answer hit its token limit).",
            ["model", "reason"],
            registry=r,
        )
        self.judge_generated_tokens = Counter(
            "vlreward_judge_generated_tokens",
            "Tokens judges generated in generate mode (critiques and verdicts).",
            ["model"],
            registry=r,
        )
        self.ready = Gauge(
            "vlreward_ready", "1 when the model is loaded, warmed, its probe passed and the server not draining.",
            ["model"], registry=r,
        )  # fmt: skip
        self.model_info = Gauge(
            "vlreward_model_info",
            "A served model (value always 1).",
            ["model", "kind", "backend", "dtype", "device"],
            registry=r,
        )
        self.queue_limit = Gauge(
            "vlreward_queue_limit", "Samples that may wait at most (max_queue); beyond it: 429.", registry=r
        )
        self._backend_counters = _BackendCounters()
        r.register(self._backend_counters)
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, ...

    def for_model(self, model: str) -> ModelMetrics:
        """The series of one served model (created at 0 now, so they exist before its first request)."""
        return ModelMetrics(self, model)

    def reject(self, reason: str, count: int = 1, model: str = SERVER) -> None:
        """Count refused requests or samples under one of :data:`REJECTION_REASONS`."""
        if reason not in REJECTION_REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}; add it to REJECTION_REASONS")
        self.rejected.labels(reason=reason, model=model).inc(count)

    def set_ready(self, ready: bool) -> None:
        """Every served model's readiness at once (draining: the whole server)."""
        for model in self._backend_counters.backends:
            self.ready.labels(model=model).set(int(ready))


class ModelMetrics:
    """The series of one model: what the schedulers, admission and the scoring pipeline record."""

    def __init__(self, metrics: Metrics, model: str):
        self.server = metrics
        self.model = model
        self.queue_wait = metrics.queue_wait.labels(model=model)
        self.inference_duration = metrics.inference_duration.labels(model=model)
        self.batch_size = metrics.batch_size.labels(model=model)
        self.batch_tokens = metrics.batch_tokens.labels(model=model)
        self.queue_depth = metrics.queue_depth.labels(model=model)
        self.input_tokens = metrics.input_tokens.labels(model=model)
        self.images = metrics.images.labels(model=model)
        self.score = metrics.score.labels(model=model)
        self.steps = metrics.steps.labels(model=model)
        self.judge_orders = {orders: metrics.judge_pairs.labels(model=model, orders=orders) for orders in JUDGE_ORDERS}
        self.judge_parse_failures = {
            reason: metrics.judge_parse_failures.labels(model=model, reason=reason) for reason in PARSE_FAILURES
        }
        self.judge_generated_tokens = metrics.judge_generated_tokens.labels(model=model)
        self.ready = metrics.ready.labels(model=model)
        for reason in MODEL_REJECTION_REASONS:
            metrics.rejected.labels(reason=reason, model=model)
        for reason in ("out_of_memory", "error"):
            metrics.batch_splits.labels(reason=reason, model=model)
        metrics._backend_counters.backends.setdefault(model, None)

    def samples(self, endpoint: str):
        return self.server.samples.labels(endpoint=endpoint, model=self.model)

    def batch_split(self, reason: str) -> None:
        self.server.batch_splits.labels(reason=reason, model=self.model).inc()

    def reject(self, reason: str, count: int = 1) -> None:
        self.server.reject(reason, count, self.model)

    def watch_backend(self, backend: Any) -> None:
        """Export the counters the model's backend keeps (see :class:`_BackendCounters`)."""
        self.server._backend_counters.backends[self.model] = backend

    def describe(self, kind: str, info: dict[str, Any]) -> None:
        """The model's info series (backend, dtype, device)."""
        self.server.model_info.labels(self.model, kind, info["backend"], info["dtype"], info["device"]).set(1)
