"""The dashboard and alert rules against the real tools: promtool, and a Prometheus server (Debian's)
scraping a live `vlreward serve` with the Compose stack's prometheus.yml and rule file."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from deploy import dashboard
from tests.helpers import VLREWARD, free_port, shape_image, uri, wait_ready, wait_until
from vlreward.service.reference import statistics_of, write_reference

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "helm" / "vlreward" / "files" / "alerts.yml"
PROMETHEUS_YML = ROOT / "docker" / "prometheus" / "prometheus.yml"
# Exporters that do not run here: their panels are checked for syntax only.
NOT_HERE = {"dcgm-exporter": "DCGM_", "vllm": "vllm:"}
_NAME = re.compile(r"\b(vlreward_[a-z_]+|process_[a-z_]+|DCGM_[A-Z_]+|vllm:[a-z_:]+|up)\b")


def alert_expressions() -> list[str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def test_the_committed_dashboard_is_what_the_generator_writes():
    assert dashboard.OUTPUT.read_text() == dashboard.render(), "run `python -m deploy.dashboard` and commit"


def test_the_alert_rules_pass_promtool_and_each_alert_fires_on_synthetic_series(prometheus_tools):
    checked = subprocess.run([prometheus_tools.promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True)
    rules = {rule["alert"] for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]}
    found = f"SUCCESS: {len(rules)} rules found"
    assert checked.returncode == 0 and found in checked.stdout, checked.stdout + checked.stderr
    tested = subprocess.run(
        [prometheus_tools.promtool, "test", "rules", "alerts_test.yml"],
        cwd=Path(__file__).parent,
        capture_output=True,
        text=True,
    )
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr
    cases = [case for test in yaml.safe_load((Path(__file__).parent / "alerts_test.yml").read_text())["tests"]
             for case in test["alert_rule_test"]]  # fmt: skip
    fires = {case["alertname"] for case in cases if case["exp_alerts"]}
    holds = {case["alertname"] for case in cases if not case["exp_alerts"]}
    assert fires == rules and holds == rules  # every alert has a case that fires and one that must not


@pytest.mark.slow
def test_a_real_prometheus_finds_every_series_and_evaluates_every_query(
    tiny_reward, other_reward, tmp_path, processes, prometheus_tools
):
    """A server with two models: every dashboard and alert query evaluates, each model's series apart."""
    port, prometheus_port = free_port(), free_port()
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(ALERTS)]
    for job in config["scrape_configs"]:
        if job["job_name"] == "vlreward":
            job["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    models = {}
    for name, checkpoint in (("helpful", tiny_reward), ("safety", other_reward)):  # each with a scale
        models[name] = {"model": str(shutil.copytree(checkpoint, tmp_path / name))}
        write_reference(models[name]["model"], statistics_of([-1.0, 0.5, 2.0], "test"))
    models["guarded"] = {"ensemble": {"helpful": 0.5, "safety": 0.5}}
    (tmp_path / "models.yaml").write_text(yaml.safe_dump(models, sort_keys=False))
    server = processes.start([VLREWARD, "serve", "--models", str(tmp_path / "models.yaml"), "--port", str(port)])
    processes.start(
        [prometheus_tools.prometheus, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prometheus_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    api = f"http://127.0.0.1:{prometheus_port}/api/v1"
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, server)
    items = [{"prompt": f"Colour {i}?", "response": "Red.", "image": uri(shape_image("red"))} for i in range(4)]
    for _ in range(3):
        assert httpx.post(url + "/score", json={"items": items}, timeout=60).status_code == 200
        assert httpx.post(url + "/score", json={"model": "safety", "items": items[:2]}, timeout=60).status_code == 200
        assert httpx.post(url + "/rank", json={"prompt": "Which?", "responses": ["a", "b"]}).status_code == 200
        assert httpx.post(url + "/score", json={"model": "guarded", "items": items[:1]}, timeout=60).status_code == 200
        assert httpx.post(url + "/score", json={"items": [{"prompt": 1}]}).status_code == 422
        time.sleep(1.5)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # rates need two scrapes after the traffic
        query = 'sum(vlreward_samples_total{model="helpful"})'
        result = httpx.get(api + "/query", params={"query": query}).json()["data"]["result"]
        if result and float(result[0]["value"][1]) >= 18:
            break
        time.sleep(0.5)
    wait_until(lambda: _rules_evaluated(api), what="every alert rule evaluated")
    expressions = [expr for expr, _ in dashboard.queries()] + alert_expressions()
    for expr in expressions:
        query = expr.replace("$__rate_interval", "1m")
        for variable in dashboard.VARIABLES:  # each variable's "All"
            query = query.replace(f"${variable}", ".*")
        answer = httpx.get(api + "/query", params={"query": query}).json()
        assert answer["status"] == "success", (expr, answer)
        for name in set(_NAME.findall(expr)):
            if name.startswith(tuple(NOT_HERE.values())):  # exporters that do not run here
                continue
            series = httpx.get(api + "/series", params={"match[]": name}).json()["data"]
            assert series, f"{name} (used by {expr!r}) is not in Prometheus"
    for query in ('rate(process_cpu_seconds_total{job="vlreward"}[1m])', 'process_resident_memory_bytes{job="vlreward"}',
                  'sum by (reason) (rate(vlreward_rejected_total[1m]))'):  # fmt: skip
        assert httpx.get(api + "/query", params={"query": query}).json()["data"]["result"], query
    per_model = httpx.get(api + "/query", params={"query": "sum by (model) (vlreward_samples_total)"}).json()
    samples = {series["metric"]["model"]: float(series["value"][1]) for series in per_model["data"]["result"]}
    assert samples == {"helpful": 21.0, "safety": 9.0}, samples  # the ensemble's item counts for both members
    ready = httpx.get(api + "/query", params={"query": "vlreward_ready"}).json()["data"]["result"]
    assert sorted(series["metric"]["model"] for series in ready) == ["helpful", "safety"]
    rules = httpx.get(api + "/rules").json()["data"]["groups"][0]["rules"]
    expected = sum(len(group["rules"]) for group in yaml.safe_load(ALERTS.read_text())["groups"])
    assert len(rules) == expected and all(rule["health"] == "ok" for rule in rules), rules


def _rules_evaluated(api: str) -> bool:
    """Whether Prometheus has evaluated every alert rule at least once (since the traffic)."""
    groups = httpx.get(api + "/rules").json()["data"]["groups"]
    return bool(groups) and all(rule["health"] != "unknown" for rule in groups[0]["rules"])


SERVER_SERIES = {"vlreward_queue_limit", "vlreward_inflight_requests"}
"""The server's own series: no model label (the queue bound covers every model)."""


def test_the_dashboard_narrows_every_vlreward_query_and_the_gpu_panels_to_the_chosen_pods():
    variables = {v["name"]: v for v in dashboard.build()["templating"]["list"]}
    assert {"datasource", *dashboard.VARIABLES} <= set(variables)
    for name in dashboard.VARIABLES:
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"
    for expr, needs in dashboard.queries():
        if needs == "dcgm-exporter":
            assert expr.count('container="vlreward"') == 2 and expr.count('pod=~"$pod"') == 2, expr
        else:  # every selector is narrowed; a model's series by the model variable too
            for name, selector in re.findall(r"([A-Za-z_:]+)\{([^}]*)\}", expr):
                server_wide = name in SERVER_SERIES or name.startswith(("process_", "vllm:"))
                assert selector.startswith(dashboard.SERVER_SCOPE if server_wide else dashboard.SCOPE), expr
    titles = [panel.get("title") for panel in dashboard.build()["panels"]]
    assert "Batch splits by reason" in titles
