"""The vLLM backend on vLLM's CPU build: parity with transformers through HTTP, prefix caching with
images, cancellation, head checks, and an engine that dies while serving."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
from safetensors.torch import load_file, save_file

from tests.helpers import (
    COLOURS,
    VLREWARD,
    LiveServer,
    check_ensemble_formula,
    free_port,
    post_and_leave,
    shape_image,
    uri,
    wait_ready,
    wait_until,
)
from tests.processes import Processes
from vlreward.service.media import MediaPolicy
from vlreward.service.model.checkpoint import HEAD_BIAS, HEAD_WEIGHT, CheckpointError
from vlreward.service.prepare import prepare_sample
from vlreward.service.schemas import Sample

pytestmark = pytest.mark.slow  # end-to-end: real processes, minutes (make test runs them)

TOLERANCE = 1e-4
ADAPTER_WEIGHTS = {"helpful": 0.7, "safety": 0.3}
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def vllm_backend(tiny_multihead):
    """The engine most tests share, on the multi-head model whose default head is tiny_reward's: its ``scores``
    are tiny_reward's (what the tests compare with ``hf_backend``), and its other head comes along."""
    from vlreward.service.backends.vllm import EngineSettings, VLLMBackend

    backend = VLLMBackend(tiny_multihead, engine=EngineSettings(gpu_memory_utilization=0.2))
    yield backend
    backend.engine.shutdown()


@pytest.fixture(scope="module")
def vllm_server(vllm_backend):
    with LiveServer(vllm_backend, max_tokens=6000, max_items=64) as live:
        yield live


def solo_hf(hf_backend, sample: dict) -> float:
    return hf_backend.score_sync([prepare_sample(Sample.model_validate(sample), hf_backend.processor, MediaPolicy())])[
        0
    ]


def fifty_samples() -> list[dict]:
    colours = list(COLOURS)
    samples = []
    for i in range(50):
        sample = {"prompt": f"Question {i}: " + "describe it " * (1 + 40 * (i % 5 == 4)), "response": f"Answer {i}."}
        if i % 3 == 1:
            sample["image"] = uri(shape_image(colours[i % 6], size=(84 + 28 * (i % 4), 84)))
        elif i % 3 == 2:
            sample["images"] = [uri(shape_image(colours[i % 6])), uri(shape_image(colours[(i + 1) % 6], "square"))]
        samples.append(sample)
    return samples


def test_fifty_samples_score_the_same_on_vllm_and_transformers_through_http(vllm_server, hf_backend):
    samples = fifty_samples()
    with LiveServer(hf_backend, max_tokens=6000, max_items=64) as hf_server:
        hf_scores = httpx.post(hf_server.url + "/score", json={"items": samples}, timeout=120).json()["scores"]
    response = httpx.post(vllm_server.url + "/score", json={"items": samples}, timeout=300)
    assert response.status_code == 200, response.text
    vllm_scores = response.json()["scores"]
    assert max(abs(a - b) for a, b in zip(vllm_scores, hf_scores, strict=True)) <= TOLERANCE
    assert response.json()["usage"]["images"] == sum(len(s.get("images", [])) + ("image" in s) for s in samples)
    info = httpx.get(vllm_server.url + "/info").json()
    assert info["backend"] == "vllm" and (info["min_pixels"], info["max_pixels"]) == (3136, 50176)


def test_concurrent_rank_calls_sharing_text_but_not_images_get_their_own_scores(vllm_server, hf_backend):
    responses = ["It is red.", "It is blue.", "It is green.", "It is yellow."]
    prompt = "Look carefully at the picture. " * 8 + "What colour is the circle?"
    colours = ["red", "blue", "green", "yellow", "purple", "orange"] * 2
    requests = [{"prompt": prompt, "image": uri(shape_image(c, size=(84 + 28 * (i % 3), 84))), "responses": responses}
                for i, c in enumerate(colours)]  # fmt: skip

    def rank(body):
        return httpx.post(vllm_server.url + "/rank", json=body, timeout=120).json()["scores"]

    with ThreadPoolExecutor(max_workers=12) as pool:
        concurrent = list(pool.map(rank, requests))
    for body, scores in zip(requests, concurrent, strict=True):
        alone = [solo_hf(hf_backend, {"prompt": prompt, "image": body["image"], "response": r}) for r in responses]
        assert max(abs(a - b) for a, b in zip(scores, alone, strict=True)) <= TOLERANCE


def test_a_client_that_disconnects_frees_its_engine_requests(vllm_server, vllm_backend):
    long_prompt = "word " * 1200  # about 3,600 tokens with the tiny tokenizer
    body = {"items": [{"prompt": f"{i} {long_prompt}", "response": "r"} for i in range(64)]}
    cancelled_before = vllm_server.metric("vlreward_rejected_total", reason="cancelled")
    engine = vllm_backend.engine.output_processor
    post_and_leave(vllm_server.port, "/score", body, engine.has_unfinished_requests, "the request in the engine")
    wait_until(lambda: not engine.has_unfinished_requests(), what="its engine requests aborted")
    assert vllm_server.metric("vlreward_rejected_total", reason="cancelled") == cancelled_before + 1
    assert httpx.post(vllm_server.url + "/score", json={"items": [{"prompt": "a", "response": "b"}]}).status_code == 200


def test_token_limit_follows_the_engines_context_length(vllm_server):
    response = httpx.post(vllm_server.url + "/score", json={"items": [{"prompt": "word " * 1500, "response": "r"}]})
    assert response.status_code == 413 and response.json()["error"]["param"] == "items[0]"
    assert "4096" in response.json()["error"]["message"]
    assert httpx.get(vllm_server.url + "/info").json()["limits"]["max_tokens"] == 4096


def test_metrics_carry_vllms_engine_metrics_for_the_dashboard_and_the_alerts(vllm_server):
    import yaml

    from deploy import dashboard

    httpx.post(vllm_server.url + "/score", json={"items": [{"prompt": "a", "response": "b"}]}, timeout=60)
    text = httpx.get(vllm_server.url + "/metrics").text
    alerts = yaml.safe_load((ROOT / "helm" / "vlreward" / "files" / "alerts.yml").read_text())
    expressions = [expr for expr, needs in dashboard.queries() if needs == "vllm"]
    expressions += [rule["expr"] for group in alerts["groups"] for rule in group["rules"] if "vllm:" in rule["expr"]]
    assert len(expressions) > 1
    for expr in expressions:
        for name in re.findall(r"vllm:[a-z_]+", expr):
            assert re.search(rf"^{name}\{{", text, re.M), name
    assert "vlreward_requests_total" in text and text.count("# TYPE process_cpu_seconds_total") == 1


def test_the_cpu_engine_runs_fp32_with_the_cpu_defaults_and_no_video(vllm_server, vllm_backend):
    from vlreward.service.backends.vllm import CPU_ENGINE_DEFAULTS

    info = httpx.get(vllm_server.url + "/info").json()
    assert (info["dtype"], info["device"]) == ("float32", "cpu")  # dtype auto on the CPU
    assert info["engine"]["max_model_len"] == CPU_ENGINE_DEFAULTS["max_model_len"] == 4096
    assert info["engine"]["enforce_eager"] is True and info["engine"]["gpu_memory_utilization"] == 0.2
    multimodal = vllm_backend.engine.model_config.multimodal_config
    assert multimodal.get_limit_per_prompt("video") == 0 and multimodal.get_limit_per_prompt("image") == 8


def test_the_engine_worker_computes_on_the_cores_the_model_needs(vllm_backend):
    """vLLM keeps one core from its worker's OpenMP threads by default (half of a 2-core host); ours keeps none
    on hosts of up to 4 cores for a model large enough to use them, and vLLM's one for a small model (the
    tiny one), where the server's per-request work runs beside the pass. Read from the worker's threads'
    bindings, and the setting does not leak into processes started later (a `vllm serve` baseline keeps
    vLLM's own choice)."""
    from vlreward.service.backends.vllm import checkpoint_language_model_parameters, cpu_reserved_cores_for

    reserved = vllm_backend.engine_settings["cpu_reserved_cores"]
    parameters = checkpoint_language_model_parameters(vllm_backend.model_dir)
    assert parameters < 1_000_000 and reserved == cpu_reserved_cores_for(parameters, os.cpu_count() or 1)
    assert reserved == (0 if (os.cpu_count() or 1) <= 4 and parameters >= 4_000_000 else None)
    assert "VLLM_CPU_NUM_OF_RESERVED_CPU" not in os.environ
    workers = [p for p in psutil.Process().children(recursive=True) if p.name().startswith("VLLM::Worker")]
    assert workers
    bound = set()  # cores that an OpenMP thread of a worker is pinned to alone
    for worker in workers:
        for thread in worker.threads():
            cores = psutil.Process(thread.id).cpu_affinity()
            if len(cores) == 1:
                bound |= set(cores)
    assert len(bound) == len(os.sched_getaffinity(0)) - (1 if reserved is None else reserved)


def test_a_model_large_enough_computes_on_every_core_of_a_small_host(tmp_path):
    from transformers import Qwen2_5_VLConfig

    from vlreward.service.backends.facts import SMALL_MODEL_PARAMETERS
    from vlreward.service.backends.vllm import checkpoint_language_model_parameters, cpu_reserved_cores_for

    config = Qwen2_5_VLConfig(text_config={"hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 8,
                                           "num_attention_heads": 8, "num_key_value_heads": 2})  # fmt: skip
    config.save_pretrained(tmp_path)
    bench = checkpoint_language_model_parameters(tmp_path)  # the bench model's shape: 8 x (q, o + k, v + MLP)
    assert bench == 8 * (2 * 512 * 512 + 2 * 512 * 128 + 3 * 512 * 1536) > SMALL_MODEL_PARAMETERS
    assert cpu_reserved_cores_for(bench, 2) == 0 and cpu_reserved_cores_for(bench, 4) == 0
    assert cpu_reserved_cores_for(bench, 8) is None  # a larger host: vLLM's own one core
    assert cpu_reserved_cores_for(SMALL_MODEL_PARAMETERS - 1, 2) is None


def test_reserved_cores_are_set_for_the_engine_start_only(monkeypatch):
    from vlreward.service.backends.vllm import reserved_cpu_cores

    name = "VLLM_CPU_NUM_OF_RESERVED_CPU"
    monkeypatch.delenv(name, raising=False)
    with reserved_cpu_cores(None, 0):
        assert os.environ[name] == "0"  # the device default, where the environment says nothing
    assert name not in os.environ
    monkeypatch.setenv(name, "1")
    with reserved_cpu_cores(None, 0):
        assert os.environ[name] == "1"  # the environment wins over a default
    with reserved_cpu_cores(2, 2):
        assert os.environ[name] == "2"  # an explicit setting wins over the environment
    assert os.environ[name] == "1"
    with reserved_cpu_cores(None, None):
        assert os.environ[name] == "1"


@pytest.mark.parametrize("before", [None, "fork"])
def test_the_engine_process_is_spawned_whatever_the_environment_said(tiny_reward, monkeypatch, before):
    """On CUDA vLLM forks its engine by default; we build it from a thread while uvicorn's threads run."""
    from vllm.v1.engine.async_llm import AsyncLLM

    from vlreward.service.backends.vllm import MULTIPROC_ENV, VLLMBackend

    if before is None:
        monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    else:
        monkeypatch.setenv(MULTIPROC_ENV, before)
    seen = []

    def at_engine_build(*args, **kwargs):
        seen.append(os.environ.get(MULTIPROC_ENV))
        raise RuntimeError("stop before the engine starts")

    monkeypatch.setattr(AsyncLLM, "from_engine_args", at_engine_build)
    with pytest.raises(RuntimeError, match="stop before"):
        VLLMBackend(tiny_reward)
    assert seen == ["spawn"]


def test_a_device_index_on_the_gpu_build_becomes_the_engines_visible_device(monkeypatch):
    from vllm.platforms import current_platform

    from vlreward.service.model.devices import DeviceError, vllm_placement

    monkeypatch.setattr(current_platform, "is_cuda", lambda: True)
    monkeypatch.setattr(current_platform, "is_cpu", lambda: False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    placement = vllm_placement("cuda:1", "auto")
    assert (placement.device, placement.dtype, os.environ["CUDA_VISIBLE_DEVICES"]) == ("cuda:1", "bfloat16", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    vllm_placement("cuda:1", "float16")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"  # the index counts within what is already visible
    with pytest.raises(DeviceError, match="tensor parallelism"):
        vllm_placement("cuda:0", "auto", tensor_parallel_size=2)
    with pytest.raises(DeviceError, match="runs on cuda: serve with --backend transformers"):
        vllm_placement("cpu", "auto")


def test_the_cpu_build_refuses_a_cuda_device_and_says_which_build_to_install():
    from vlreward.service.model.devices import DeviceError, vllm_placement

    placement = vllm_placement("auto", "auto")
    assert (placement.device, placement.dtype) == ("cpu", "float32")
    with pytest.raises(DeviceError, match="runs on cpu: install the GPU build"):
        vllm_placement("cuda:0", "auto")


def test_checkpoint_without_head_is_refused_before_the_engine_starts(tiny_reward, tmp_path):
    from vlreward.service.backends.vllm import VLLMBackend

    broken = tmp_path / "no-head"
    import shutil

    shutil.copytree(tiny_reward, broken)
    tensors = load_file(broken / "model.safetensors")
    del tensors[HEAD_WEIGHT], tensors[HEAD_BIAS]
    save_file(tensors, broken / "model.safetensors")
    with pytest.raises(CheckpointError, match="reward head is missing"):
        VLLMBackend(broken)


@pytest.fixture(scope="module")
def lora_server(tiny_reward, tiny_multihead, lora_adapters, tmp_path_factory):
    """`vlreward serve --backend vllm` with a models file: tiny_reward as `rm` and its two LoRA adapters on one
    engine, the multi-head model, and an ensemble of the two adapters. (The engine-death test below kills this
    server's engines, so it runs last.)"""
    models = tmp_path_factory.mktemp("lora-serve") / "models.yaml"
    lines = [f"rm: {{model: {tiny_reward}, default: true}}", f"multi: {{model: {tiny_multihead}}}",
             f"pair: {{ensemble: {json.dumps(ADAPTER_WEIGHTS)}}}"]  # fmt: skip
    lines += [f"{name}: {{model: {path}, base: rm}}" for name, (path, _) in lora_adapters.items()]
    models.write_text("\n".join(lines) + "\n")
    port = free_port()
    env = {**os.environ, "VLREWARD_VLLM_GPU_MEMORY_UTILIZATION": "0.05"}  # two engines beside the module's
    started = Processes()
    process = started.start([VLREWARD, "serve", "--backend", "vllm", "--models", str(models), "--port", str(port)],
                            env=env)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, process)
        yield url, process
    finally:
        started.stop_all()


def test_lora_adapters_on_one_vllm_engine_score_what_their_merged_models_score(lora_server, lora_adapters, tiny_reward):
    """Each adapter (its low-rank updates and its own head, through the vllm_plugin) scores what the merged
    model scores on transformers in float32; the base's scores do not move; concurrent requests to the base and
    both adapters, which the engine batches together, each get their own model's scores."""
    from vlreward.service.backends.transformers import TransformersBackend

    url, _ = lora_server
    samples = fifty_samples()[:9]
    expected = {}
    for name, model in [("rm", tiny_reward), *((name, merged) for name, (_, merged) in lora_adapters.items())]:
        reference = TransformersBackend(model, dtype="float32", device="cpu")
        expected[name] = [solo_hf(reference, s) for s in samples]
        reference.release()
    assert expected["helpful"] != pytest.approx(expected["rm"], abs=1e-2)  # the adapters do change the scores
    calls = [name for name in expected for _ in range(4)]
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        answers = list(pool.map(lambda n: httpx.post(url + "/score", json={"model": n, "items": samples}, timeout=300),
                                calls))  # fmt: skip
    for name, response in zip(calls, answers, strict=True):
        assert response.status_code == 200, response.text
        assert response.json()["scores"] == pytest.approx(expected[name], abs=TOLERANCE), name
    info = httpx.get(url + "/info").json()["models"]
    assert info["helpful"]["adapter"]["base"] == str(tiny_reward)
    assert info["rm"]["engine"]["lora"] == {"max_loras": 3, "max_lora_rank": 8}  # 2 + the CPU's empty slot; rank 4


def test_one_vllm_server_serves_a_multi_head_model_and_an_ensemble_of_adapters_each_as_its_formula_says(
    lora_server, tiny_reward, other_reward
):
    """Beside the adapters: the multi-head model's heads equal the one-head models served alone (transformers,
    float32), and the adapters' ensemble follows its formula from the members' scores and statistics."""
    from vlreward.service.backends.transformers import TransformersBackend

    url, _ = lora_server
    samples = fifty_samples()[:6]
    for head, checkpoint in (("helpful", tiny_reward), ("safety", other_reward)):
        reference = TransformersBackend(checkpoint, dtype="float32", device="cpu")
        alone = [solo_hf(reference, s) for s in samples]
        reference.release()
        body = httpx.post(url + "/score", json={"model": "multi", "items": samples, "head": head}, timeout=300).json()
        assert body["scores"] == pytest.approx(alone, abs=TOLERANCE), head
    check_ensemble_formula(url, "pair", ADAPTER_WEIGHTS, samples)


def test_engine_death_turns_ready_503_and_exits_non_zero(lora_server):
    """A server whose engine dies (here one of the two: a base's with its adapters, and the multi-head model's)
    turns /ready 503 and exits non-zero."""
    url, process = lora_server
    deadline = time.monotonic() + 120
    engines = [
        p
        for p in psutil.Process(process.pid).children(recursive=True)
        if "EngineCore" in " ".join(p.cmdline()) or "EngineCore" in p.name()
    ]
    assert engines, [p.name() for p in psutil.Process(process.pid).children(recursive=True)]
    for engine in engines:
        engine.send_signal(signal.SIGKILL)
    seen_503 = threading.Event()
    while process.poll() is None and time.monotonic() < deadline:
        try:
            if httpx.get(url + "/ready", timeout=1).status_code == 503:
                seen_503.set()
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    assert seen_503.is_set()
    assert process.wait(timeout=60) != 0


def test_vlreward_score_with_the_vllm_backend_matches_transformers(tiny_reward, hf_backend, tmp_path):

    samples = fifty_samples()[:9]
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps(s) + "\n" for s in samples))
    outputs = tmp_path / "out.jsonl"
    env = {**os.environ, "VLREWARD_VLLM_GPU_MEMORY_UTILIZATION": "0.2"}
    command = [VLREWARD, "score", "--backend", "vllm", "--model", str(tiny_reward)]
    subprocess.run([*command, "--input", str(inputs), "--output", str(outputs)], check=True, env=env, timeout=600)
    scores = [json.loads(line)["score"] for line in outputs.read_text().splitlines()]
    expected = [solo_hf(hf_backend, s) for s in samples]
    assert max(abs(a - b) for a, b in zip(scores, expected, strict=True)) <= TOLERANCE


def test_the_cpu_builds_bf16_scores_stay_inside_the_probe_tolerance_and_its_probe_passes(bench_reward):
    """The vLLM CPU build in bfloat16 against the float32 transformers reference, as a share of each sample's
    scale (the measure RELATIVE_TOLERANCE is derived from, in vlreward.service.model.probe)."""
    from vlreward.service.backends.transformers import TransformersBackend
    from vlreward.service.backends.vllm import EngineSettings, VLLMBackend
    from vlreward.service.model.probe import RELATIVE_TOLERANCE, probe_sample, read_probe, verify_probe

    samples = [
        {"prompt": f"What colour is shape {i}?", "response": f"It is {c}, a circle.", "images": [uri(shape_image(c))]}
        for i, c in enumerate(COLOURS)
    ] + [{"prompt": "Count to ten.", "response": "one two three four five six seven eight nine ten"}, probe_sample()]
    reference = TransformersBackend(bench_reward, dtype="float32", device="cpu")
    expected = [reference.probe_score_and_scale(sample) for sample in samples]
    reference.release()
    backend = VLLMBackend(bench_reward, dtype="bfloat16", engine=EngineSettings(gpu_memory_utilization=0.2))
    try:
        assert backend.dtype == "bfloat16"
        scores = backend.score_sync([prepare_sample(Sample.model_validate(s), backend.processor, MediaPolicy())
                                     for s in samples])  # fmt: skip
    finally:
        backend.close_sync()
    shares = [abs(score - e) / scale for score, (e, scale) in zip(scores, expected, strict=True)]
    print(f"vLLM CPU bf16 vs fp32, share of the scale: max {max(shares):.2e}, mean {sum(shares) / len(shares):.2e}")
    assert 0 < max(shares) <= RELATIVE_TOLERANCE["bfloat16"] / 3
    verify_probe(read_probe(bench_reward), scores[-1], "bfloat16")  # what warm-up checks before readiness


def test_engine_defaults_fill_only_what_the_settings_leave_unset():
    from vlreward.service.backends.vllm import CPU_ENGINE_DEFAULTS, GPU_ENGINE_DEFAULTS, EngineSettings
    from vlreward.service.settings import Settings

    gpu = EngineSettings.from_settings(Settings()).resolved(on_gpu=True)
    assert {k: gpu[k] for k in GPU_ENGINE_DEFAULTS} == GPU_ENGINE_DEFAULTS
    assert gpu["max_num_batched_tokens"] >= gpu["max_model_len"]  # a whole sample prefills in one step
    chosen = EngineSettings.from_settings(Settings(vllm_max_num_batched_tokens=4096, vllm_enforce_eager=True))
    assert chosen.resolved(on_gpu=True)["max_num_batched_tokens"] == 4096
    assert chosen.resolved(on_gpu=True)["enforce_eager"] is True
    assert EngineSettings().resolved(on_gpu=False)["max_model_len"] == CPU_ENGINE_DEFAULTS["max_model_len"]


def test_one_server_serves_a_vllm_and_a_transformers_model_each_as_alone_and_drains_both_on_sigterm(
    vllm_server, other_reward, tiny_reward, tmp_path, processes
):
    """`vlreward serve --models FILE`: the vLLM model answers as the same model served alone on vLLM, the
    transformers model as that model alone in-process (1e-5 within a backend); a SIGTERM lets the requests
    in flight on both models finish."""
    from vlreward.service.backends.transformers import TransformersBackend

    models = tmp_path / "models.yaml"
    models.write_text(
        f"engine:\n  model: {tiny_reward}\n  backend: vllm\n  vllm_gpu_memory_utilization: 0.2\n  max_tokens: 6000\n"
        f"batched:\n  model: {other_reward}\n  backend: transformers\n  default: true\n  max_wait_ms: 1500\n"
    )
    port = free_port()
    process = processes.start([VLREWARD, "serve", "--models", str(models), "--port", str(port), "--max-items", "64"])
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, process)
    cards = {card["id"]: card for card in httpx.get(url + "/v1/models").json()["data"]}
    assert {name: (card["backend"], card["kind"], card["default"]) for name, card in cards.items()} == {
        "engine": ("vllm", "scalar", False),
        "batched": ("transformers", "scalar", True),
    }
    samples = fifty_samples()[:12]
    served = httpx.post(url + "/score", json={"model": "engine", "items": samples}, timeout=300).json()
    alone = httpx.post(vllm_server.url + "/score", json={"items": samples}, timeout=300).json()
    assert served["model"] == "engine"
    assert max(abs(a - b) for a, b in zip(served["scores"], alone["scores"], strict=True)) <= 1e-5
    batched = httpx.post(url + "/score", json={"items": samples}, timeout=300).json()  # the default model
    reference = TransformersBackend(other_reward, dtype="float32", device="cpu")
    expected = [solo_hf(reference, sample) for sample in samples]
    assert batched["model"] == "batched"
    assert max(abs(a - b) for a, b in zip(batched["scores"], expected, strict=True)) <= 1e-5
    assert httpx.post(url + "/score", json={"model": "other", "items": samples[:1]}).status_code == 404
    text = httpx.get(url + "/metrics").text
    assert 'vlreward_samples_total{endpoint="/score",model="engine"} 12.0' in text
    assert 'vlreward_samples_total{endpoint="/score",model="batched"} 12.0' in text
    assert "vllm:" in text  # the engine's own metrics, once

    def post(model: str) -> int:  # the engine's requests are long; the batched model's wait 1.5 s for their batch
        items = fifty_samples() if model == "engine" else samples
        return httpx.post(url + "/score", json={"model": model, "items": items}, timeout=300).status_code

    with ThreadPoolExecutor(max_workers=4) as pool:
        inflight = [pool.submit(post, model) for model in ("engine", "batched", "engine", "batched")]
        wait_until(lambda: "vlreward_inflight_requests 4.0" in httpx.get(url + "/metrics").text, what="4 in flight")
        process.send_signal(signal.SIGTERM)
        assert [future.result() for future in inflight] == [200, 200, 200, 200]
    assert process.wait(timeout=120) == 0


# -- process models ----------------------------------------------------------------------------------------

STEPS = ["I look at the picture.", "The circle is red.", "Red is a warm colour.", "So the answer is red."]


def test_a_multihead_model_gives_every_head_in_one_request_as_on_transformers(vllm_server, tiny_multihead):
    """vLLM's classify pooler returns every label's logit: one engine request per item gives every head."""
    from vlreward.service.backends.transformers import TransformersBackend

    items = fifty_samples()[:12]
    with LiveServer(TransformersBackend(tiny_multihead), max_tokens=6000, max_items=64) as theirs:
        for head in (None, "safety"):
            body = {"items": items} | ({} if head is None else {"head": head})
            got = httpx.post(vllm_server.url + "/score", json=body, timeout=120).json()
            want = httpx.post(theirs.url + "/score", json=body, timeout=120).json()
            assert got["scores"] == pytest.approx(want["scores"], abs=TOLERANCE), head
            for mine, other in zip(got["details"], want["details"], strict=True):
                assert mine["heads"] == pytest.approx(other["heads"], abs=TOLERANCE)


def step_items() -> list[dict]:
    """Step lists of 1-4 steps: with one image, two images, none, and in the messages form."""
    red, blue = uri(shape_image("red")), uri(shape_image("blue", "square"))
    items = []
    for i in range(8):
        item = {"prompt": f"Question {i}: which colour is the shape? " * (1 + i % 3), "steps": STEPS[: 1 + i % 4]}
        if i % 4 == 1:
            item["image"] = red
        elif i % 4 == 2:
            item["images"] = [red, blue]
        items.append(item)
    items.append({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": blue}},
                  {"type": "text", "text": "Which shape?"}]}, {"role": "assistant", "steps": STEPS}]})  # fmt: skip
    return items


@pytest.fixture(scope="module", params=["per_step", "step_pooling"])
def vllm_process_server(request, tiny_process):
    """A process model on the vLLM backend, each way of reading its step tags."""
    from vlreward.service.backends.vllm import EngineSettings, VLLMBackend

    backend = VLLMBackend(tiny_process, engine=EngineSettings(gpu_memory_utilization=0.05, step_scoring=request.param))
    with LiveServer(backend, max_tokens=4000, max_items=64) as live:
        yield live
    backend.engine.shutdown()


@pytest.fixture(scope="module")
def hf_process_server(tiny_process):
    from vlreward.service.backends.transformers import TransformersBackend

    with LiveServer(TransformersBackend(tiny_process, dtype="float32", device="cpu"), max_items=64) as live:
        yield live


def step_scores(server, items: list[dict], **fields) -> tuple[list[float], list[list[float]]]:
    response = httpx.post(server.url + "/score", json={"items": items, **fields}, timeout=120)
    assert response.status_code == 200, response.text
    body = response.json()
    return body["scores"], [detail["step_scores"] for detail in body["details"]]


def close(got: list[list[float]], expected: list[list[float]], tolerance: float) -> bool:
    return all(a == pytest.approx(b, abs=tolerance) for a, b in zip(got, expected, strict=True))


def test_a_process_model_scores_every_step_on_vllm_as_on_transformers(vllm_process_server, hf_process_server):
    items = step_items()
    for aggregate in ("min", "last", "mean", "product"):
        ours, ours_steps = step_scores(vllm_process_server, items, aggregate=aggregate)
        theirs, their_steps = step_scores(hf_process_server, items, aggregate=aggregate)
        assert ours == pytest.approx(theirs, abs=TOLERANCE) and close(ours_steps, their_steps, TOLERANCE), aggregate
    assert [len(steps) for steps in ours_steps] == [len(item.get("steps", STEPS)) for item in items]


def test_on_vllm_the_prefix_property_and_batch_invariance_hold(vllm_process_server):
    image = uri(shape_image("green"))
    prefixes = [{"prompt": "Which colour?", "image": image, "steps": STEPS[:k]} for k in range(1, 5)]
    _, steps = step_scores(vllm_process_server, prefixes)
    for k, item in enumerate(steps, start=1):
        assert item == pytest.approx(steps[-1][:k], abs=1e-5), k
    items = step_items()
    _, together = step_scores(vllm_process_server, items)
    alone = [step_scores(vllm_process_server, [item])[1][0] for item in items]
    assert close(together, alone, 1e-5)


def test_on_vllm_rank_orders_step_lists_and_info_shows_how_steps_are_read(vllm_process_server, hf_process_server):
    image = uri(shape_image("red"))
    candidates = [STEPS[: 1 + i % 4] + [f"Attempt {i}."] for i in range(6)]
    body = {"prompt": "Which colour is the circle?", "image": image, "responses": candidates}
    ours = httpx.post(vllm_process_server.url + "/rank", json=body, timeout=120).json()
    theirs = httpx.post(hf_process_server.url + "/rank", json=body, timeout=120).json()
    assert ours["scores"] == pytest.approx(theirs["scores"], abs=TOLERANCE) and ours["ranking"] == theirs["ranking"]
    info = httpx.get(vllm_process_server.url + "/info").json()
    card = httpx.get(vllm_process_server.url + "/v1/models").json()["data"][0]
    assert card["kind"] == "process" and info["backend"] == "vllm"
    scoring = info["engine"]["step_scoring"]
    assert info["engine"]["enable_prefix_caching"] is (scoring == "per_step")  # step pooling turns it off
    refused = httpx.post(vllm_process_server.url + "/score", json={"items": [{"prompt": "a", "response": "b"}]})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "items[0].response"


# -- generative judges ------------------------------------------------------------------------------------

JUDGE_PAIRS = [
    {"prompt": "What colour is the circle?", "image": uri(shape_image("red")), "a": "Red.", "b": "Blue, surely."},
    {"prompt": "Say hello.", "a": "Hello!", "b": "Goodbye."},
    {"prompt": "Two shapes?", "images": [uri(shape_image("blue", "square")), uri(shape_image("green"))],
     "a": "A square and a circle.", "b": "Two circles."},
]  # fmt: skip


def judge_engine_server(model_dir):
    """A live server of a judge on a generate-runner engine; its engine is stopped after."""
    from vlreward.service.backends.vllm import EngineSettings, VLLMBackend

    backend = VLLMBackend(model_dir, engine=EngineSettings(gpu_memory_utilization=0.05))
    with LiveServer(backend, max_tokens=4000, max_items=64) as live:
        live.backend = backend
        yield live
    backend.engine.shutdown()


@pytest.fixture(scope="module")
def vllm_judge_server(tiny_judge):
    """A judge on a generate-runner engine (its verdict tokens' log-probabilities)."""
    yield from judge_engine_server(tiny_judge)


@pytest.fixture(scope="module")
def hf_judge_server(judge_backend):
    with LiveServer(judge_backend, max_items=64) as live:
        yield live


def judge_items() -> list[dict]:
    items = [{"prompt": p["prompt"], **{k: p[k] for k in ("image", "images") if k in p}, "response": p[side]}
             for p in JUDGE_PAIRS for side in "ab"]  # fmt: skip
    return items + [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}]


def test_a_judge_on_vllm_rates_and_compares_as_on_transformers(vllm_judge_server, hf_judge_server):
    items = judge_items()
    ours = httpx.post(vllm_judge_server.url + "/score", json={"items": items}, timeout=120).json()["scores"]
    theirs = httpx.post(hf_judge_server.url + "/score", json={"items": items}, timeout=120).json()["scores"]
    assert ours == pytest.approx(theirs, abs=TOLERANCE)
    for debias in (True, False):
        body = {"pairs": JUDGE_PAIRS, "debias": debias}
        ours = httpx.post(vllm_judge_server.url + "/compare", json=body, timeout=120).json()["results"]
        theirs = httpx.post(hf_judge_server.url + "/compare", json=body, timeout=120).json()["results"]
        assert [r["prob_a"] for r in ours] == pytest.approx([r["prob_a"] for r in theirs], abs=TOLERANCE), debias
    info = httpx.get(vllm_judge_server.url + "/info").json()
    assert info["kind"]["name"] == "judge" and info["judge"]["name"] == "generic" and info["backend"] == "vllm"


def test_on_vllm_a_judge_is_batch_invariant_deterministic_and_antisymmetric(vllm_judge_server):
    items = judge_items()
    url = vllm_judge_server.url
    together = httpx.post(url + "/score", json={"items": items}, timeout=120).json()["scores"]
    alone = [httpx.post(url + "/score", json={"items": [item]}, timeout=120).json()["scores"][0] for item in items]
    assert together == pytest.approx(alone, abs=1e-5)
    assert httpx.post(url + "/score", json={"items": items}, timeout=120).json()["scores"] == together
    forward = httpx.post(url + "/compare", json={"pairs": JUDGE_PAIRS}, timeout=120).json()["results"]
    swapped = [{**p, "a": p["b"], "b": p["a"]} for p in JUDGE_PAIRS]
    backward = httpx.post(url + "/compare", json={"pairs": swapped}, timeout=120).json()["results"]
    # The same two questions in the other roles: 1 - P up to the engine's own repeatability (a question asked
    # again may read its prefix from the cache: ~1e-7 off); the formula's exactness is tests/service/test_judge.py's.
    assert [b["prob_a"] for b in backward] == pytest.approx([1.0 - f["prob_a"] for f in forward], abs=1e-5)


# -- a judge's generate mode -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vllm_critique_server(critique_judge):
    """The judge trained on critiques, on vLLM's generate engine."""
    yield from judge_engine_server(critique_judge)


def test_on_vllm_a_judge_writes_and_its_verdicts_are_parsed_as_on_transformers(vllm_critique_server, critique_backend):
    items = judge_items()
    body = {"items": items, "mode": "generate", "critique": True, "max_new_tokens": 40}
    ours = httpx.post(vllm_critique_server.url + "/score", json=body, timeout=120).json()
    with LiveServer(critique_backend) as hf:
        theirs = httpx.post(hf.url + "/score", json=body, timeout=120).json()
    assert all(d["parse_failures"] == 0 for d in ours["details"])
    # Greedy on both engines: the same written answers (float32; a near-tie could differ, not on this model).
    assert ours["details"] == theirs["details"] and ours["scores"] == theirs["scores"]
    pairs = {"pairs": JUDGE_PAIRS, "mode": "generate", "max_new_tokens": 40}
    compared = httpx.post(vllm_critique_server.url + "/compare", json=pairs, timeout=120).json()
    assert all(None not in d["verdicts"] for d in compared["details"])


def test_on_vllm_seeded_answers_repeat_whatever_else_the_engine_runs(vllm_critique_server):
    url = vllm_critique_server.url + "/score"
    body = {"items": judge_items()[:3], "mode": "generate", "samples": 3, "temperature": 1.0, "seed": 11,
            "max_new_tokens": 40, "critique": True, "on_error": "null"}  # fmt: skip
    alone = httpx.post(url, json=body, timeout=120).json()
    with ThreadPoolExecutor(4) as pool:  # the same request beside others
        others = [pool.submit(httpx.post, url, json=body | {"seed": s}, timeout=120) for s in range(3)]
        again = pool.submit(httpx.post, url, json=body, timeout=120).result().json()
        [other.result() for other in others]
    assert again["details"] == alone["details"] and again["scores"] == alone["scores"]
    assert {len(d["critiques"]) for d in alone["details"]} == {3}


LONG_ANSWERS = {"mode": "generate", "samples": 8, "temperature": 1.0, "seed": 3, "max_new_tokens": 1024}
"""A random judge writing 8 answers of up to 1,024 tokens: seconds of generation on the tiny model."""


def test_on_vllm_a_client_that_leaves_or_a_deadline_stops_the_judges_generation(vllm_judge_server):
    engine = vllm_judge_server.backend.engine.output_processor
    body = {"items": [{"prompt": "Hi?", "response": "Hello."}], **LONG_ANSWERS}
    post_and_leave(vllm_judge_server.port, "/score", body, engine.has_unfinished_requests, "the answers in the engine")
    wait_until(lambda: not engine.has_unfinished_requests(), what="the answers aborted after the client left")
    body = {"items": [{"prompt": "Bye?", "response": "Goodbye."}], **LONG_ANSWERS, "timeout_s": 1}
    late = httpx.post(vllm_judge_server.url + "/score", json=body, timeout=60)
    assert late.status_code == 504 and late.json()["error"]["type"] == "timeout"
    wait_until(lambda: not engine.has_unfinished_requests(), what="the answers aborted at the deadline")


def test_an_engine_for_adapters_refuses_a_base_that_cannot_carry_them(tiny_process, lora_adapters):
    """Refused before the engine starts, naming the rule (a process model's token_classify cannot take a head)."""
    from vlreward.service.backends.vllm import VLLMBackend
    from vlreward.service.model.lora import AdapterError

    path, _ = lora_adapters["helpful"]
    with pytest.raises(AdapterError, match="one-head scalar"):
        VLLMBackend(tiny_process, adapters=[path])
