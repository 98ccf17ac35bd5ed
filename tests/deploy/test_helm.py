"""The Helm chart with the real Helm engine (helm-python-sdk): every scenario renders, lints strict, and
every built-in manifest validates against Kubernetes 1.37's schemas (kubernetes-validate, strict)."""

from __future__ import annotations

import json
import re
import tempfile
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
    ("ray.io/v1", "RayJob"): "rayjob-v1.json",  # deploy/kuberay (tests/deploy/test_kuberay.py)
}
SHARED = {"accessModes": ["ReadWriteMany"]}  # a model volume several nodes can attach
SCENARIOS = {
    "defaults": {},
    "gpu with autoscaling and monitoring": {
        "autoscaling": {"enabled": True, "maxReplicas": 8}, "model": SHARED,
        "monitoring": {"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
                       "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
                       "dashboard": {"enabled": True}},
        "runtimeClassName": "nvidia", "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        "networkPolicy": {"enabled": True}, "service": {"headless": True},
    },
    "ingress with an existing TLS secret and API keys": {
        "ingress": {"enabled": True, "className": "nginx", "tls": {"enabled": True, "secretName": "vlreward-tls"}},
        "apiKeys": {"existingSecret": "vlreward-keys"},
        "hfToken": {"existingSecret": "hf"},
        "model": {"name": "Skywork/Skywork-VL-Reward-7B", "storage": "existingClaim", "existingClaim": "weights",
                  "fetch": {"enabled": False}},
    },
    "repo id without a model volume": {
        "model": {"name": "Skywork/Skywork-VL-Reward-7B", "storage": "none", "fetch": {"enabled": False}},
    },
    "several replicas, a copy of the model each": {"replicaCount": 3, "model": {"storage": "emptyDir"}},
    "keda": {"keda": {"enabled": True}, "autoscaling": {"enabled": True}, "model": SHARED},
    "transformers backend, weights fetched by an init container": {
        "backend": "hf", "settings": {"max_batch_size": 16, "dtype": "bfloat16"},
        "model": {"storage": "emptyDir", "fetch": {"enabled": True,
                  "command": ["vlreward", "convert", "Skywork/Skywork-VL-Reward-7B", "/models/reward"]}},
    },
    "cpu image": yaml.safe_load((CHART / "values-cpu.yaml").read_text()),
    "two models sharing the GPU, one on the transformers backend": {
        "model": {"storage": "existingClaim", "existingClaim": "weights", "fetch": {"enabled": False}},
        "models": [
            {"name": "helpful", "model": "/models/helpful", "settings": {"vllm_gpu_memory_utilization": 0.5}},
            {"name": "safety", "model": "/models/safety", "default": True,
             "settings": {"backend": "transformers", "max_tokens": 4096}},
        ],
    },
}  # fmt: skip
TWO_VLLM = [
    {"name": "a", "model": "/models/reward", "settings": {"vllm_gpu_memory_utilization": 0.45}},
    {"name": "b", "model": "Skywork/Skywork-VL-Reward-7B", "settings": {"vllm_gpu_memory_utilization": 0.45}},
]


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


def pod_of(values: dict) -> dict:
    return by_kind(render(values))["Deployment"]["spec"]["template"]["spec"]


def check_consistency(docs: list[dict], values: dict) -> None:
    """What the API server or the kubelet would refuse and kubernetes-validate does not see: mounts of
    undeclared volumes, keys of Secrets and ConfigMaps nobody renders or names, probes on missing ports."""
    rendered_keys = {
        (d["kind"], d["metadata"]["name"]): set(d.get("data", {})) for d in docs if d["kind"] in ("Secret", "ConfigMap")
    }
    named_by_user = {values.get("apiKeys", {}).get("existingSecret"), values.get("hfToken", {}).get("existingSecret")}
    for doc in docs:
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        pod = doc["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        claims = {t["metadata"]["name"] for t in doc["spec"].get("volumeClaimTemplates", [])}
        for container in pod.get("initContainers", []) + pod["containers"]:
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes or mount["name"] in claims, (container["name"], mount["name"])
            ports = {p["name"] for p in container.get("ports", [])} | {
                p["containerPort"] for p in container.get("ports", [])
            }
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if probe in container:
                    assert container[probe]["httpGet"]["port"] in ports, (container["name"], probe)
            for env in container.get("env", []):
                ref = env.get("valueFrom", {})
                for kind, key in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
                    if key in ref:
                        name = ref[key]["name"]
                        assert name in named_by_user or ref[key]["key"] in rendered_keys.get((kind, name), set()), ref
        for volume in volumes.values():
            if "secret" in volume:
                assert volume["secret"]["secretName"] in named_by_user, volume
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                rendered = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
                assert claim in rendered or claim == values.get("model", {}).get("existingClaim"), claim


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
    check_consistency(docs, values)


def test_the_consistency_checks_do_catch_a_mount_of_an_undeclared_volume_and_a_missing_probe_port():
    docs = render({})
    deployment = by_kind(docs)["Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"].append(
        {"name": "nowhere", "mountPath": "/x"}
    )
    with pytest.raises(AssertionError, match="nowhere"):
        check_consistency(docs, {})
    docs = render({})
    by_kind(docs)["Deployment"]["spec"]["template"]["spec"]["containers"][0]["startupProbe"]["httpGet"]["port"] = "grpc"
    with pytest.raises(AssertionError, match="startupProbe"):
        check_consistency(docs, {})


REFUSED = {
    "fetch without a model volume": ({"model": {"storage": "none"}}, "model.fetch.enabled needs a model volume"),
    "an empty claim and no fetch": ({"model": {"fetch": {"enabled": False}}}, "model.storage=pvc starts empty"),
    "an empty emptyDir and no fetch": ({"model": {"storage": "emptyDir", "fetch": {"enabled": False}}},
                                       "model.storage=emptyDir starts empty"),
    "fetch into a repo id": ({"model": {"name": "Skywork/Skywork-VL-Reward-7B"}}, "must be a path under model.mountPath"),
    "ReadWriteOnce with several replicas": ({"replicaCount": 2}, "ReadWriteOnce"),
    "ReadWriteOnce with an autoscaler": ({"autoscaling": {"enabled": True}}, "ReadWriteOnce"),
    "ReadWriteOnce with KEDA": ({"keda": {"enabled": True}}, "ReadWriteOnce"),
    "a grace period shorter than the shutdown": ({"terminationGracePeriodSeconds": 60}, "terminationGracePeriodSeconds"),
    "a rollout deadline shorter than the load": ({"progressDeadlineSeconds": 600}, "progressDeadlineSeconds"),
    "a model name twice": ({"models": [{"name": "a", "model": "/models/reward"}] * 2}, "models.1..name .a. is given twice"),
    "two defaults": ({"models": [{"name": n, "model": "/models/reward", "default": True} for n in "ab"]},
                     "more than one entry has default"),
    "a model path outside the volume": ({"models": [{"name": "a", "model": "/data/a"}]}, "under model.mountPath"),
    "a model path an empty volume will not have": ({"models": [{"name": "a", "model": "/models/other"}]},
                                                    "/models/other would not exist"),
    "vLLM models without their GPU share": (
        {"models": [{"name": "a", "model": "/models/reward"}, {"name": "b", "model": "/models/reward"}]},
        "give each settings.vllm_gpu_memory_utilization"),
    "vLLM models over the GPU": ({"models": [{**m, "settings": {"vllm_gpu_memory_utilization": 0.6}} for m in TWO_VLLM]},
                                 "add up to 1.20"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(REFUSED))
def test_values_that_would_give_a_broken_pod_refuse_to_render_with_one_line_naming_the_value(case):
    values, message = REFUSED[case]
    with pytest.raises(Exception, match=message) as refused:
        render(values)
    assert str(refused.value).count("\n") == 0, str(refused.value)


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


@pytest.mark.parametrize(
    "changed",
    [{}, {"maxRequestTimeoutSeconds": 600}, {"drainTimeoutSeconds": 20, "preStopSleepSeconds": 15},
     {"terminationGracePeriodSeconds": 300}],
)  # fmt: skip
def test_the_grace_period_covers_pre_stop_the_drain_and_the_servers_shutdown(changed):
    from vlreward.service.http.server import SHUTDOWN_S
    from vlreward.service.settings import Settings

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["maxRequestTimeoutSeconds"] == default("max_request_timeout_s")
    assert values["serverShutdownSeconds"] == SHUTDOWN_S
    pod = pod_of(changed)
    container = pod["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    served = Settings(**{k.removeprefix("VLREWARD_").lower(): v for k, v in env.items() if k.startswith("VLREWARD_")})
    assert served.max_request_timeout_s == changed.get("maxRequestTimeoutSeconds", values["maxRequestTimeoutSeconds"])
    assert served.drain_s >= served.max_request_timeout_s or "drainTimeoutSeconds" in changed
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pre_stop + served.drain_s + SHUTDOWN_S


def test_startup_probes_readiness_so_its_budget_bounds_the_load_and_rollouts_wait_for_it():
    deployment = by_kind(render({}))["Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == container["startupProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"  # applies once started
    startup = container["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    assert budget >= 600 and deployment["spec"]["progressDeadlineSeconds"] >= max(budget, 1200)
    assert yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"] == ">=1.30.0-0"  # preStop sleep


def test_rollouts_never_need_a_second_gpu_or_a_second_attachment_of_the_model_volume():
    assert by_kind(render({}))["Deployment"]["spec"]["strategy"] == {"type": "Recreate"}  # ReadWriteOnce claim
    shared = by_kind(render({"model": SHARED}))["Deployment"]["spec"]["strategy"]
    assert shared == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}


def test_the_default_install_fetches_and_converts_a_model_once_and_serves_it_read_only():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    pod = pod_of({})
    fetch = pod["initContainers"][0]
    assert fetch["command"] == ["vlreward", "convert", values["model"]["fetch"]["repo"], values["model"]["name"],
                                "--probe-device", "cpu"]  # fmt: skip
    assert values["model"]["fetch"]["repo"] == "Skywork/Skywork-VL-Reward-7B"
    assert {e["name"]: e["value"] for e in fetch["env"]}["HF_HOME"].startswith(values["model"]["mountPath"] + "/")
    memory = fetch["resources"]["requests"]["memory"]
    assert memory.endswith("Gi") and int(memory[:-2]) * 2**30 > 7.6e9 * 4  # a 7B model's float32 weights
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["models"]["readOnly"] is True
    pinned = pod_of({"model": {"fetch": {"revision": "abc123"}}})["initContainers"][0]["command"]
    assert pinned[-2:] == ["--revision", "abc123"]


def test_a_repo_id_keeps_its_download_and_converted_copy_on_the_model_volume_or_sizes_the_home_for_them():
    on_volume = pod_of(SCENARIOS["ingress with an existing TLS secret and API keys"])["containers"][0]
    env = {e["name"]: e.get("value") for e in on_volume["env"]}
    assert env["HF_HOME"].startswith("/models/") and env["VLREWARD_HOME"].startswith("/models/")
    assert {m["name"]: m for m in on_volume["volumeMounts"]}["models"]["readOnly"] is False
    pod = pod_of(SCENARIOS["repo id without a model volume"])
    home = {v["name"]: v for v in pod["volumes"]}["home"]["emptyDir"]["sizeLimit"]
    assert home == "40Gi" == pod["containers"][0]["resources"]["requests"]["ephemeral-storage"]
    assert pod_of({})["containers"][0]["resources"]["requests"]["ephemeral-storage"] == "20Gi"


def test_monitoring_reaches_prometheus_in_another_namespace_and_keeps_releases_apart():
    docs = render(SCENARIOS["gpu with autoscaling and monitoring"])
    kinds = by_kind(docs)
    peers = kinds["NetworkPolicy"]["spec"]["ingress"][0]["from"]
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}} in peers
    assert kinds["ServiceMonitor"]["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert kinds["PrometheusRule"]["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    relabelings = kinds["ServiceMonitor"]["spec"]["endpoints"][0]["relabelings"]
    assert all(r["targetLabel"] not in ("namespace", "service", "pod") for r in relabelings)
    for group in yaml.safe_load((CHART / "files" / "alerts.yml").read_text())["groups"]:
        for rule in group["rules"]:
            for by in re.findall(r"by \(([^)]*)\)", rule["expr"]):
                assert {"namespace", "service"} <= {label.strip() for label in by.split(",")}, rule["alert"]
    headless = [d for d in docs if d["kind"] == "Service" and d["spec"].get("clusterIP") == "None"]
    assert [d["metadata"]["name"] for d in headless] == ["rm-vlreward-pods"]
    chart = helm_python.Chart.load(str(CHART))
    notes = chart.render(values={"monitoring": {"serviceMonitor": {"enabled": True}}}, name="rm", namespace="ml")
    assert "release label" in next(text for name, text in notes.items() if "NOTES" in name)


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


def test_several_models_render_a_models_file_the_server_reads_and_a_change_rolls_the_pods():
    from vlreward.service.catalog import model_settings, read_models_file
    from vlreward.service.settings import Settings

    values = SCENARIOS["two models sharing the GPU, one on the transformers backend"]
    docs = render(values)
    configmap = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "rm-vlreward-models")
    pod = by_kind(docs)["Deployment"]["spec"]["template"]
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["VLREWARD_MODELS"] == "/etc/vlreward/models/models.yaml" and "VLREWARD_MODEL" not in env
    mount = next(m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["name"] == "models-file")
    assert mount["mountPath"] == "/etc/vlreward/models"
    path = Path(tempfile.mkdtemp()) / "models.yaml"
    path.write_text(configmap["data"]["models.yaml"])
    specs = read_models_file(path)  # what the server reads at start
    assert [(spec.name, spec.source, spec.default) for spec in specs] == [
        ("helpful", "/models/helpful", False), ("safety", "/models/safety", True)]  # fmt: skip
    server = Settings(backend=env["VLREWARD_BACKEND"])
    helpful, safety = (model_settings(server, spec) for spec in specs)
    assert (helpful.backend, helpful.vllm_gpu_memory_utilization) == ("vllm", 0.5)
    assert (safety.backend, safety.max_tokens) == ("transformers", 4096)
    changed = json.loads(json.dumps(values))
    changed["models"][1]["settings"]["max_tokens"] = 2048
    rolled = by_kind(render(changed))["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert rolled["checksum/models"] != pod["metadata"]["annotations"]["checksum/models"]
    repo = render({"model": {"storage": "existingClaim", "existingClaim": "weights", "fetch": {"enabled": False}},
                   "models": TWO_VLLM})  # fmt: skip
    env = {
        e["name"]: e.get("value")
        for e in by_kind(repo)["Deployment"]["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["HF_HOME"] == "/models/huggingface"  # a repo id among the models: its download on the volume
