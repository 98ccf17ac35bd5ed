"""Checkpoints by Hugging Face repo id, offline, from a hub cache laid out here (HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import httpx
import pytest

from tests.helpers import VLREWARD, free_port, wait_ready
from vlreward.service.model.checkpoint import model_name
from vlreward.service.model.hub import is_repo_id
from vlreward.service.model.probe import PROBE_FILE, read_probe

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cached_repo(cache, repo_id: str, source, commit: str = COMMIT):
    """Lay ``source`` out as the hub cache does: models--owner--name/{refs/main, snapshots/<commit>/}."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(source, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return repo / "snapshots" / commit


@pytest.fixture
def offline(tmp_path, tiny_reward, skywork_dir):
    """An offline environment with two cached repos: one in Skywork's layout, one already a reward checkpoint."""
    cache = tmp_path / "hub"
    cached_repo(cache, "acme/Skywork-VL-Reward-tiny", skywork_dir)
    cached_repo(cache, "acme/reward-tiny", tiny_reward)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "VLREWARD_HOME": str(tmp_path / "home")}
    env.pop("HF_TOKEN", None)
    return env


def run(args, env):
    return subprocess.run([VLREWARD, *args], capture_output=True, text=True, timeout=300, env=env)


def test_repo_ids_are_told_from_paths(tmp_path, monkeypatch):
    assert is_repo_id("Skywork/Skywork-VL-Reward-7B") and is_repo_id("org/name.v2")
    assert not is_repo_id("just-a-name") and not is_repo_id("a/b/c") and not is_repo_id("/abs/path")
    (tmp_path / "owner").mkdir()
    (tmp_path / "owner" / "name").mkdir()
    monkeypatch.chdir(tmp_path)
    assert not is_repo_id("owner/name")  # an existing local folder wins


def test_a_skywork_repo_is_converted_once_into_the_home_and_scored(offline, tmp_path):
    samples = tmp_path / "in.jsonl"
    samples.write_text(json.dumps({"prompt": "Hello", "response": "Hi there."}) + "\n")
    first = run(["score", "--model", "acme/Skywork-VL-Reward-tiny", "--input", str(samples), "--output",
                 str(tmp_path / "a.jsonl")], offline)  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    converted = tmp_path / "home" / "models" / "hub" / "acme--Skywork-VL-Reward-tiny" / COMMIT
    probe = converted / PROBE_FILE
    assert read_probe(converted).dtype == "float32" and not (converted.parent / f"{COMMIT}.partial").exists()
    assert model_name(converted) == "Skywork-VL-Reward-tiny"
    stamped = probe.stat().st_mtime_ns
    second = run(["score", "--model", "acme/Skywork-VL-Reward-tiny", "--input", str(samples), "--output",
                  str(tmp_path / "b.jsonl")], offline)  # fmt: skip
    assert second.returncode == 0, second.stderr[-3000:]
    assert probe.stat().st_mtime_ns == stamped  # not converted again
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()


def test_convert_takes_a_repo_id_and_a_pinned_revision(offline, tmp_path):
    done = run(["convert", "acme/Skywork-VL-Reward-tiny", str(tmp_path / "out"), "--revision", COMMIT], offline)
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_probe(tmp_path / "out") is not None
    missing = run(["convert", "acme/Skywork-VL-Reward-tiny", str(tmp_path / "x"), "--revision", "f" * 40], offline)
    assert missing.returncode == 2 and "not in the Hugging Face cache" in missing.stderr


def test_a_repo_missing_from_the_cache_offline_is_one_clear_line(offline, tmp_path):
    done = run(["serve", "--model", "acme/not-downloaded", "--port", str(free_port())], offline)
    assert done.returncode == 2
    message = done.stderr.strip().splitlines()[-1]
    assert "acme/not-downloaded is not in the Hugging Face cache" in message and "HF_HUB_OFFLINE=1" in message


def test_a_reward_checkpoint_repo_is_served_from_the_cache(offline, tmp_path, processes):
    port = free_port()
    process = processes.start([VLREWARD, "serve", "--model", "acme/reward-tiny", "--port", str(port)], env=offline)
    try:
        wait_ready(f"http://127.0.0.1:{port}", process)
        info = httpx.get(f"http://127.0.0.1:{port}/info").json()
        assert info["model"] == "reward-tiny"  # served straight from the snapshot, named by its repository
        assert not (tmp_path / "home" / "models" / "hub").exists()
    finally:
        process.terminate()
        process.wait(timeout=60)


STAMPING_THEN_ENGINE = """
import weakref

from vllm.v1.engine.async_llm import AsyncLLM

from vlreward.service.backends import load_backend
from vlreward.service.backends import transformers as hf
from vlreward.service.cli import checkpoint_dir
from vlreward.service.settings import Settings

made, released = [], []
load, release = hf.load_reward_model, hf.release_device_memory


def tracked(*args, **kwargs):
    model, processor = load(*args, **kwargs)
    made.append(weakref.ref(model))
    return model, processor


def tracked_release(device):
    release(device)
    released.append(device)


class EngineBuilt(Exception):
    pass


def at_engine_build(*args, **kwargs):
    alive = sum(ref() is not None for ref in made)
    raise EngineBuilt(f"stamped {len(made)} alive {alive} device memory released on {released}")


hf.load_reward_model, hf.release_device_memory = tracked, tracked_release
AsyncLLM.from_engine_args = at_engine_build
settings = Settings(backend="vllm", model="acme/Skywork-VL-Reward-tiny")
try:
    load_backend(settings, checkpoint_dir(settings.model, settings))
except EngineBuilt as built:
    print(built)
"""


def test_serving_a_skywork_repo_on_vllm_frees_the_probe_model_before_the_engine_is_built(offline):
    """`serve --model owner/name --backend vllm` converts the repo and stamps its probe with a float32
    transformers model (~33 GB for a 7B); the engine that starts next wants most of the device's memory."""
    done = subprocess.run([sys.executable, "-c", STAMPING_THEN_ENGINE], capture_output=True, text=True, env=offline,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    # gone from Python, and its device's cached blocks handed back (on a GPU: torch.cuda.empty_cache)
    assert "stamped 1 alive 0 device memory released on ['cpu']" in done.stdout, done.stdout + done.stderr[-2000:]


def test_two_conversions_into_one_folder_at_once_both_succeed_and_leave_one_whole_model(offline, tmp_path):
    """Replicas' init containers converting into one shared volume: neither deletes the other's work."""
    destination = tmp_path / "volume" / "reward"
    command = ["convert", "acme/Skywork-VL-Reward-tiny", str(destination)]
    both = [subprocess.Popen([VLREWARD, *command], env=offline, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outcomes = [(process.wait(timeout=300), process.stderr.read()) for process in both]
    assert [code for code, _ in outcomes] == [0, 0], outcomes
    assert read_probe(destination) is not None
    assert sorted(p.name for p in destination.parent.iterdir()) == ["reward"]  # no temporary folder left
    stamped = (destination / PROBE_FILE).stat().st_mtime_ns
    again = run(command, offline)  # a later start finds the finished model and leaves it alone
    assert again.returncode == 0 and (destination / PROBE_FILE).stat().st_mtime_ns == stamped


def test_a_folder_that_is_not_a_converted_model_is_never_replaced(offline, tmp_path):
    destination = tmp_path / "reward"
    destination.mkdir()
    (destination / "weights-in-use.safetensors").write_text("x")
    done = run(["convert", "acme/Skywork-VL-Reward-tiny", str(destination)], offline)
    assert done.returncode == 2 and "is not a converted model" in done.stderr
    assert (destination / "weights-in-use.safetensors").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir() if "partial" in p.name) == []
