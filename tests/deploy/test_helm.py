"""The Helm chart with the real Helm engine (helm-python-sdk): every scenario renders, lints strict, and
every built-in manifest validates against Kubernetes 1.37's schemas (kubernetes-validate, strict)."""

from __future__ import annotations

import json
from pathlib import Path

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml

from vlreward.service.settings import default

CHART = Path(__file__).resolve().parents[2] / "helm" / "vlreward"
KUBERNETES = "1.37.0"
# Custom resources: their CRDs' schemas, vendored in tests/deploy/crds (see SOURCES.md there).
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule-v1.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-v1alpha1.json",
}
SCENARIOS = {
    "defaults": {},
    "gpu with autoscaling and monitoring": {
        "autoscaling": {"enabled": True, "maxReplicas": 8},
        "monitoring": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True},
                       "dashboard": {"enabled": True}},
        "runtimeClassName": "nvidia", "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        "networkPolicy": {"enabled": True},
    },
    "ingress with an existing TLS secret and API keys": {
        "ingress": {"enabled": True, "className": "nginx", "tls": {"enabled": True, "secretName": "vlreward-tls"}},
        "apiKeys": {"existingSecret": "vlreward-keys"},
        "hfToken": {"existingSecret": "hf"},
        "model": {"name": "Skywork/Skywork-VL-Reward-7B", "storage": "existingClaim", "existingClaim": "weights"},
    },
    "keda": {"keda": {"enabled": True}, "autoscaling": {"enabled": True}},
    "transformers backend, weights fetched by an init container": {
        "backend": "hf", "settings": {"max_batch_size": 16, "dtype": "bfloat16"},
        "model": {"storage": "emptyDir", "fetch": {"enabled": True,
                  "command": ["vlreward", "convert", "Skywork/Skywork-VL-Reward-7B", "/models/reward"]}},
    },
    "cpu image": yaml.safe_load((CHART / "values-cpu.yaml").read_text()),
}  # fmt: skip


def strict(schema: dict) -> dict:
    """A CRD schema that also refuses unknown fields, as the API server prunes them (structural schemas)."""
    schema = dict(schema)
    if "properties" in schema and "additionalProperties" not in schema:
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        schema["properties"] = {k: strict(v) for k, v in schema["properties"].items()}
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            schema[key] = strict(schema[key])
    return schema


def validate_custom_resource(doc: dict) -> None:
    name = CRD_SCHEMAS[(doc["apiVersion"], doc["kind"])]
    schema = strict(json.loads((Path(__file__).parent / "crds" / name).read_text()))
    jsonschema.Draft7Validator(schema).validate(doc)


def render(values: dict) -> list[dict]:
    chart = helm_python.Chart.load(str(CHART))
    rendered = chart.render(values=values, name="rm", namespace="ml")
    return [doc for name, text in rendered.items() if name.endswith(".yaml") for doc in yaml.safe_load_all(text) if doc]


def by_kind(docs: list[dict]) -> dict[str, dict]:
    return {doc["kind"]: doc for doc in docs}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_each_scenario_renders_lints_strict_and_validates(scenario):
    values = SCENARIOS[scenario]
    docs = render(values)
    lint = helm_python.lint(str(CHART), values=values, strict=True, kube_version=KUBERNETES)
    assert not lint["errors"] and all(m["severity"] <= 1 for m in lint["messages"]), lint
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRD_SCHEMAS:
            validate_custom_resource(doc)
        else:
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_gpu_requests_equal_limits_and_the_pod_is_locked_down():
    deployment = by_kind(render({}))["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["requests"]["nvidia.com/gpu"] == container["resources"]["limits"]["nvidia.com/gpu"]
    assert pod["securityContext"]["runAsNonRoot"] and container["securityContext"]["readOnlyRootFilesystem"]
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    writable = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/tmp", "/var/lib/vlreward", "/dev/shm"} <= writable
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["VLREWARD_BACKEND"] == "vllm" and env["VLREWARD_MODEL"] == "/models/reward"
    cpu = by_kind(render(SCENARIOS["cpu image"]))["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"] and "VLREWARD_MODEL" not in str(cpu["env"])
    # torch's threads follow the pod's CPU request, not the node's core count
    threads = {e["name"]: e for e in cpu["env"]}["OMP_NUM_THREADS"]["valueFrom"]["resourceFieldRef"]
    assert threads == {"containerName": "vlreward", "resource": "requests.cpu", "divisor": "1"}
    unrequested = by_kind(render({"resources": {"requests": {"cpu": None, "memory": "4Gi"}}}))["Deployment"]
    assert "OMP_NUM_THREADS" not in str(unrequested["spec"]["template"]["spec"]["containers"][0]["env"])


def test_drain_grace_period_and_probes_agree_with_the_service_settings():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["drainTimeoutSeconds"] == default("drain_timeout_s")
    pod = by_kind(render({}))["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    drain = int(env["VLREWARD_DRAIN_TIMEOUT_S"])
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > drain + pre_stop
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == container["startupProbe"]["httpGet"]["path"] == "/health"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # a 7B model's load and first convert


def test_rules_and_dashboard_come_from_the_same_files_as_compose():
    docs = by_kind(render(SCENARIOS["gpu with autoscaling and monitoring"]))
    rules = yaml.safe_load((CHART / "files" / "alerts.yml").read_text())
    assert docs["PrometheusRule"]["spec"] == rules
    dashboard = json.loads(docs["ConfigMap"]["data"]["vlreward.json"])
    assert dashboard == json.loads((CHART / "files" / "dashboard.json").read_text())
    assert docs["ConfigMap"]["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert docs["HorizontalPodAutoscaler"]["spec"]["metrics"][0]["pods"]["metric"]["name"] == "vlreward_queue_depth"
    keda = by_kind(render(SCENARIOS["keda"]))
    assert "vlreward_queue_depth" in keda["ScaledObject"]["spec"]["triggers"][0]["metadata"]["query"]
    assert "HorizontalPodAutoscaler" not in keda  # KEDA owns the scaling


def test_the_crd_schemas_do_catch_a_wrong_custom_resource():
    monitor = by_kind(render(SCENARIOS["gpu with autoscaling and monitoring"]))["ServiceMonitor"]
    validate_custom_resource(monitor)
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError, match="intervall"):
        validate_custom_resource(monitor)
    scaled = by_kind(render(SCENARIOS["keda"]))["ScaledObject"]
    scaled["spec"]["minReplicaCount"] = "one"
    with pytest.raises(jsonschema.ValidationError, match="one"):
        validate_custom_resource(scaled)


@pytest.mark.parametrize(
    ("values", "message"),
    [({"backend": "triton"}, "/backend"), ({"replicaCount": "two"}, "/replicaCount"),
     ({"gpu": {"count": "1"}}, "/gpu/count"), ({"model": {"storage": "s3"}}, "/model/storage")],
)  # fmt: skip
def test_the_values_schema_refuses_wrong_types_and_unknown_backends(values, message):
    with pytest.raises(helm_python.HelmValuesError, match=message):
        render(values)


def documented_driver_affinity() -> dict:
    """The affinity block values.yaml documents for the driver floor (a comment: it cannot be a default,
    since clusters without GPU Feature Discovery have no such label)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if "keep the pods off older drivers with it:" in line) + 1
    block = []
    for line in lines[start:]:
        if not line.startswith("#   "):
            break
        block.append(line[4:])
    return yaml.safe_load("\n".join(block))


def test_the_documented_driver_floor_affinity_renders_validates_and_notes_name_the_driver():
    values = documented_driver_affinity()
    expression = values["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert expression["nodeSelectorTerms"][0]["matchExpressions"][0] == {
        "key": "nvidia.com/cuda.driver-version.major", "operator": "Gt", "values": ["579"]}  # fmt: skip
    deployment = by_kind(render(values))["Deployment"]
    assert deployment["spec"]["template"]["spec"]["affinity"] == values["affinity"]
    kubernetes_validate.validate(deployment, KUBERNETES, strict=True)
    chart = helm_python.Chart.load(str(CHART))
    notes = next(text for name, text in chart.render(values={}, name="rm", namespace="ml").items() if "NOTES" in name)
    assert "580" in notes and "nvidia.com/cuda.driver-version.major" in notes
    cpu_notes = chart.render(values=SCENARIOS["cpu image"], name="rm", namespace="ml")
    assert "580" not in next(text for name, text in cpu_notes.items() if "NOTES" in name)
    assert "580" in (CHART / "README.md").read_text()
