"""vlreward's Grafana dashboard as code (grafana-foundation-sdk); the generated JSON is committed.

    python -m deploy.dashboard            # rewrites helm/vlreward/files/dashboard.json

One dashboard for Compose (provisioned from that file) and Helm (a ConfigMap for Grafana's sidecar).
Every query is PromQL over the metrics of ``vlreward.service.metrics`` (tests/deploy checks each one
against a real Prometheus scraping a live server), plus panels that need an exporter which may not run:
the DCGM exporter's GPU metrics (``DCGM_*``) and vLLM's engine metrics (``vllm:*``, vLLM backend only).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard as builders
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh

OUTPUT = Path(__file__).resolve().parent.parent / "helm" / "vlreward" / "files" / "dashboard.json"
UID = "vlreward"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"
# Every vlreward series on the dashboard is narrowed by the namespace, service and pod variables (each
# "All" = ".*", which also matches Compose's series that carry none of these labels); the per-model ones
# also by the model variable. The server's own series (queue limit, requests in flight, the process) have
# no model label.
SERVER_SCOPE = 'job="vlreward", namespace=~"$namespace", service=~"$service", pod=~"$pod"'
SCOPE = SERVER_SCOPE + ', model=~"$model"'
SCORING = f'{SCOPE}, endpoint=~"/score|/rank|/get_reward|/classify"'
S = "{" + SCOPE + "}"
"""The scope as a selector, for the queries below."""
SERVER = "{" + SERVER_SCOPE + "}"
# NVIDIA's DCGM exporter labels a GPU with the pod using it: as namespace/pod/container when Prometheus keeps
# the exporter's labels (honorLabels), as exported_* otherwise. Only vlreward's GPUs are shown.
DCGM_SCOPES = (
    'container="vlreward", namespace=~"$namespace", pod=~"$pod"',
    'exported_container="vlreward", exported_namespace=~"$namespace", exported_pod=~"$pod"',
)
VARIABLES = ("namespace", "service", "pod", "model")


def dcgm(aggregate: str, metric: str) -> str:
    """``aggregate`` over a DCGM metric on vlreward's GPUs only, whichever way its pod labels arrived."""
    return f"{aggregate} ({' or '.join(f'{metric}{{{scope}}}' for scope in DCGM_SCOPES)})"


@dataclass
class PanelSpec:
    """One panel: a title, its queries (expression, legend) and how to show them."""

    title: str
    queries: list[tuple[str, str]]
    unit: str = "short"
    kind: str = "timeseries"
    width: int = 12
    description: str = ""
    needs: str | None = None
    """An exporter the panel needs beyond vlreward itself (DCGM exporter, the vLLM backend)."""


@dataclass
class RowSpec:
    title: str
    panels: list[PanelSpec] = field(default_factory=list)


def quantiles(metric: str, by: str, labels: str = SCOPE, qs: tuple[float, ...] = (0.5, 0.95, 0.99)) -> list:
    """histogram_quantile queries of ``metric`` for each quantile, grouped ``by``."""
    selector = f"{metric}_bucket{{{labels}}}"
    legend_by = "".join(f" {{{{{label.strip()}}}}}" for label in by.split(",") if label.strip())
    return [
        (
            f"histogram_quantile({q}, sum by ({by + ', ' if by else ''}le) (rate({selector}[{RATE}])))",
            f"p{round(q * 100)}{legend_by}",
        )
        for q in qs
    ]


ROWS = [
    RowSpec("Traffic", [
        PanelSpec("Requests by endpoint, status and model",
                  [(f"sum by (endpoint, status, model) (rate(vlreward_requests_total{S}[{RATE}]))",
                    "{{endpoint}} {{status}} {{model}}")],
                  unit="reqps"),
        PanelSpec("Errors by status (4xx, 5xx)",
                  [(f'sum by (status) (rate(vlreward_requests_total{{{SCOPE}, status=~"4..|5.."}}[{RATE}]))',
                    "{{status}}")],
                  unit="reqps"),
        PanelSpec("Latency per endpoint and model (p50, p95, p99)",
                  quantiles("vlreward_request_duration_seconds", "endpoint, model", SCORING), unit="s", width=24),
    ]),
    RowSpec("Throughput", [
        PanelSpec("Samples/s", [(f"sum by (endpoint, model) (rate(vlreward_samples_total{S}[{RATE}]))",
                                  "{{endpoint}} {{model}}")]),
        PanelSpec("Tokens/s and images/s", [
            (f"sum by (model) (rate(vlreward_input_tokens_total{S}[{RATE}]))", "tokens/s {{model}}"),
            (f"sum by (model) (rate(vlreward_images_total{S}[{RATE}]))", "images/s {{model}}"),
        ]),
    ]),
    RowSpec("Queue and batches", [
        PanelSpec("Queue depth, limit and requests in flight", [
            (f"sum by (instance, model) (vlreward_queue_depth{S})", "queued {{instance}} {{model}}"),
            (f"sum by (instance) (vlreward_queue_limit{SERVER})", "limit {{instance}}"),
            (f"sum by (instance) (vlreward_inflight_requests{SERVER})", "in flight {{instance}}"),
        ], description="The limit bounds the samples queued for all models of a server together."),
        PanelSpec("Queue wait (p50, p99)", quantiles("vlreward_queue_wait_seconds", "model", qs=(0.5, 0.99)),
                  unit="s"),
        PanelSpec("Samples and padded tokens per batch (mean)", [
            (f"sum by (model) (rate(vlreward_batch_size_sum{S}[{RATE}]))"
             f" / sum by (model) (rate(vlreward_batch_size_count{S}[{RATE}]))",
             "samples {{model}}"),
            (f"sum by (model) (rate(vlreward_batch_tokens_sum{S}[{RATE}]))"
             f" / sum by (model) (rate(vlreward_batch_tokens_count{S}[{RATE}]))",
             "tokens {{model}}"),
        ], description="The transformers backend's batches (vLLM batches inside its engine)."),
        PanelSpec("Forward pass time (p50, p99)",
                  quantiles("vlreward_inference_duration_seconds", "model", qs=(0.5, 0.99)), unit="s"),
        PanelSpec("Batch splits by reason",
                  [(f"sum by (reason, model) (rate(vlreward_batch_splits_total{S}[{RATE}]))", "{{reason}} {{model}}")],
                  unit="ops", description="Batches split in halves and rerun: out_of_memory (lower "
                  "max_batch_tokens when steady; alert VlrewardOutOfMemorySplits) or error (a bad sample isolated)."),
    ]),
    RowSpec("Health", [
        PanelSpec("Ready replicas per model", [(f"sum by (model) (vlreward_ready{S})", "{{model}}")], kind="stat",
                  width=6),
        PanelSpec("Served models", [(f"count by (model, kind, backend, dtype, device) (vlreward_model_info{S})",
                                     "{{model}} {{kind}} {{backend}} {{dtype}} {{device}}")], kind="stat", width=6),
        PanelSpec("Rejections by reason and model",
                  [(f"sum by (reason, model) (rate(vlreward_rejected_total{S}[{RATE}]))", "{{reason}} {{model}}")],
                  unit="reqps", description="model is empty for requests refused before they chose one."),
    ]),
    RowSpec("Scores (reward drift)", [
        PanelSpec("Score quantiles (p10, p50, p90)", quantiles("vlreward_score", "model", qs=(0.1, 0.5, 0.9)),
                  description="A moved median means a changed model or changed inputs (alert VlrewardScoreShift). "
                  "Each model has its own scale: compare a model with itself."),
        PanelSpec("Median score vs a day earlier", [
            (f"histogram_quantile(0.5, sum by (model, le) (rate(vlreward_score_bucket{S}[1h])))",
             "now (1 h) {{model}}"),
            (f"histogram_quantile(0.5, sum by (model, le) (rate(vlreward_score_bucket{S}[1h] offset 1d)))",
             "a day ago {{model}}"),
        ]),
        PanelSpec("Judges: pairs whose two orders disagree", [
            (f'sum by (model) (rate(vlreward_judge_debiased_pairs_total{{{SCOPE}, orders="disagree"}}[{RATE}]))'
             f" / sum by (model) (rate(vlreward_judge_debiased_pairs_total{S}[{RATE}]))", "{{model}}"),
        ], unit="percentunit", description="/compare with debias asks a judge both orders; a disagreement picks the "
           "same position twice (position bias). Only judges have this series."),
        PanelSpec("Ensembles: member disagreement (p50, p90)",
                  quantiles("vlreward_ensemble_disagreement", "model", qs=(0.5, 0.9)),
                  description="The weighted standard deviation of an ensemble's member z-scores per item (alert "
                  "VlrewardEnsembleDisagreementShift): rising, a policy may be gaming one member. Only ensembles "
                  "have this series."),
        PanelSpec("Judges: generated answers without a parsed verdict", [
            (f"sum by (model, reason) (rate(vlreward_judge_parse_failures_total{S}[{RATE}]))", "{{model}} {{reason}}"),
            (f"sum by (model) (rate(vlreward_judge_generated_tokens_total{S}[{RATE}]))", "{{model}} tokens/s"),
        ], description="Generate mode: a verdict the declared pattern cannot read is an item error, never a default; "
           "a rising rate means a judge that stopped following its answer format (or too few max_new_tokens)."),
    ]),
    RowSpec("Process", [
        PanelSpec("CPU (cores)", [(f"rate(process_cpu_seconds_total{SERVER}[{RATE}])", "{{instance}}")]),
        PanelSpec("Resident memory", [(f"process_resident_memory_bytes{SERVER}", "{{instance}}")],
                  unit="bytes"),
    ]),
    RowSpec("GPU (DCGM exporter)", [
        PanelSpec("GPU utilisation",
                  [(dcgm("avg by (Hostname, gpu)", "DCGM_FI_DEV_GPU_UTIL"), "{{Hostname}} GPU {{gpu}}")],
                  unit="percent", needs="dcgm-exporter"),
        PanelSpec("GPU memory used",
                  [(dcgm("sum by (Hostname, gpu)", "DCGM_FI_DEV_FB_USED"), "{{Hostname}} GPU {{gpu}}")],
                  unit="decmbytes", needs="dcgm-exporter"),
    ]),
    RowSpec("vLLM engine (vLLM backend)", [
        PanelSpec("Engine requests running and waiting", [
            (f"sum(vllm:num_requests_running{SERVER})", "running"),
            (f"sum(vllm:num_requests_waiting{SERVER})", "waiting"),
        ], needs="vllm"),
        PanelSpec("KV cache usage", [(f"max(vllm:kv_cache_usage_perc{SERVER})", "used")], unit="percentunit",
                  needs="vllm"),
    ]),
]  # fmt: skip


def _panel(spec: PanelSpec):
    builder = (stat.Panel() if spec.kind == "stat" else timeseries.Panel()).title(spec.title)
    description = spec.description + (f" Needs: {spec.needs}." if spec.needs else "")
    if description:
        builder = builder.description(description.strip())
    builder = builder.datasource(DATASOURCE).unit(spec.unit).span(spec.width).height(8)
    for ref, (expr, legend) in zip("ABCDEFGH", spec.queries, strict=False):
        builder = builder.with_target(prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref))
    return builder


def build() -> dict:
    """The dashboard as Grafana's JSON model."""
    board = (
        builders.Dashboard("vlreward")
        .uid(UID)
        .tags(["vlreward", "reward-model"])
        .description("vlreward: traffic, latency, queue and batches, scores, process, GPU and vLLM engine.")
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .with_variable(builders.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
    )
    scope = 'job="vlreward"'
    for name in VARIABLES:  # each narrowed by the ones before it
        variable = (
            builders.QueryVariable(name)
            .label(name)
            .datasource(DATASOURCE)
            .query(f"label_values(vlreward_ready{{{scope}}}, {name})")
            .include_all(True)
            .all_value(".*")
            .multi(True)
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        )
        board = board.with_variable(variable)
        scope += f', {name}=~"${name}"'
    for row in ROWS:
        board = board.with_row(builders.Row(row.title))
        for spec in row.panels:
            board = board.with_panel(_panel(spec))
    return json.loads(json.dumps(board.build(), cls=JSONEncoder))


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def queries() -> list[tuple[str, str | None]]:
    """Every (expression, exporter it needs or None) of the dashboard."""
    return [(expr, spec.needs) for row in ROWS for spec in row.panels for expr, _ in spec.queries]


def main() -> None:
    OUTPUT.write_text(render())
    print(f"wrote {OUTPUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
