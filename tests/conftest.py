"""Shared fixtures: a tiny base model and a tiny reward checkpoint, built once per test session."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from packaging.version import Version

from tests.helpers import (
    VLREWARD,
    build_judge_checkpoint,
    build_multihead_checkpoint,
    build_process_checkpoint,
    build_reward_checkpoint,
)
from tests.processes import Processes
from tests.processes import pytest_sessionfinish as pytest_sessionfinish  # fails a run that leaves processes

PROMETHEUS_SCRIPT = Path(__file__).parent / "tools" / "prometheus.sh"


@pytest.fixture
def processes():
    """Start processes with ``processes.start([...])``; each is stopped with its children when the test ends."""
    started = Processes()
    try:
        yield started
    finally:
        started.stop_all()


@dataclass(frozen=True)
class PrometheusTools:
    promtool: str
    prometheus: str


@pytest.fixture(scope="session")
def prometheus_tools() -> PrometheusTools:
    """promtool and prometheus at the version tests/tools/prometheus.sh provides (`make test` puts them on PATH)."""
    minimum = re.search(r"^MIN_VERSION=([\d.]+)", PROMETHEUS_SCRIPT.read_text(), re.M).group(1)
    found = {name: shutil.which(name) for name in ("promtool", "prometheus")}
    missing = [name for name, path in found.items() if path is None]
    assert not missing, f"{' and '.join(missing)} not on PATH: run the tests with `make test` (it provides them)"
    for path in found.values():
        done = subprocess.run([path, "--version"], capture_output=True, text=True)
        number = re.search(r"version (\d+(?:\.\d+)*)", done.stdout + done.stderr)
        assert number and Version(number.group(1)) >= Version(minimum), (
            f"{path}: {done.stdout[:80]!r}, need >= {minimum}"
        )
    return PrometheusTools(found["promtool"], found["prometheus"])


@dataclass(frozen=True)
class DefaultHome:
    """A VLREWARD_HOME whose default model `vlreward bootstrap` built, and how long that took."""

    home: Path
    seconds: float
    log: str

    @property
    def model(self) -> Path:
        return self.home / "models" / "default"


@pytest.fixture(scope="session")
def default_home(tmp_path_factory: pytest.TempPathFactory) -> DefaultHome:
    """`vlreward bootstrap` exactly as a user runs it, once per session (the slowest fixture: minutes)."""
    home = tmp_path_factory.mktemp("home")
    started = time.monotonic()
    done = subprocess.run([VLREWARD, "bootstrap", "--home", str(home)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return DefaultHome(home, time.monotonic() - started, done.stdout + done.stderr)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vlreward.training.base_model import build_base_model

    return build_base_model(tmp_path_factory.mktemp("models") / "tiny-base", size="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_reward(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A reward checkpoint with a random head and a non-zero bias (0.25)."""
    return build_reward_checkpoint(tiny_base, tmp_path_factory.mktemp("models") / "tiny-reward", bias=0.25)


@pytest.fixture(scope="session")
def other_reward(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second reward checkpoint on the same base: another head (seed 2) and bias (-0.5), so its scores
    differ from ``tiny_reward``'s (a server with both must route each request to the model it names)."""
    return build_reward_checkpoint(tiny_base, tmp_path_factory.mktemp("models") / "other-reward", bias=-0.5, seed=2)


@pytest.fixture(scope="session")
def tiny_multihead(tiny_base: Path, tiny_reward: Path, other_reward: Path, tmp_path_factory) -> Path:
    """A multi-head checkpoint: head `helpful` is tiny_reward's head, `safety` other_reward's (the default: the first)."""
    out = tmp_path_factory.mktemp("models") / "tiny-multihead"
    return build_multihead_checkpoint({"helpful": tiny_reward, "safety": other_reward}, out)


@pytest.fixture(scope="session")
def lora_adapters(tiny_reward: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Two LoRA adapters of tiny_reward, `helpful` and `safety` (seeded random updates of its attention and MLP,
    their own heads) with their probes and reference statistics: name -> (adapter folder, the adapter merged into
    the base)."""
    from vlreward.service.reference import statistics_of, write_reference
    from vlreward.training.lora import merge_adapter, random_adapter, stamp_adapter_probe

    root = tmp_path_factory.mktemp("lora")
    made = {}
    for seed, name in enumerate(("helpful", "safety"), start=1):
        adapter = random_adapter(tiny_reward, root / name, seed=seed)
        made[name] = (adapter, merge_adapter(tiny_reward, adapter, root / f"{name}-merged"))
    stamp_adapter_probe(tiny_reward, *(adapter for adapter, _ in made.values()))
    for (adapter, _), scores in zip(made.values(), ([-1.0, 0.5, 2.0], [3.0, 4.5]), strict=True):
        write_reference(adapter, statistics_of(scores, adapter.name))  # so the two can be an ensemble
    return made


@pytest.fixture(scope="session")
def tiny_process(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A process reward checkpoint (random head read at every step tag) on the tiny base."""
    return build_process_checkpoint(tiny_base, tmp_path_factory.mktemp("models") / "tiny-process")


@pytest.fixture(scope="session")
def tiny_judge(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generative judge on the tiny base laid out like the published ones (untied random LM head, older
    tensor names), its config.json declaring the generic judge, as `vlreward train --kind judge` writes."""
    return build_judge_checkpoint(tiny_base, tmp_path_factory.mktemp("models") / "tiny-judge")


@pytest.fixture(scope="session")
def published_judge(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same layout with its config.json as published: nothing of ours (served with the `judge` setting)."""
    return build_judge_checkpoint(tiny_base, tmp_path_factory.mktemp("models") / "published-judge", judge=None)


CRITIQUE_RECIPE = """
name: critique-judge
base_model: tiny
batch_size: 4
seed: 0
log_every: 50
eval_pairs: 40
num_threads: 2
stages:
  - name: judge
    learning_rate: 1.0e-3
    epochs: 4
    max_steps: 150
    include_text: true
    warmup_steps: 10
"""


@pytest.fixture(scope="session")
def critique_judge(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny judge trained here on synthetic pairs with templated critiques (`vlreward data synthetic --judge`,
    `vlreward train --kind judge`, `vlreward export`, as a user runs them; ~1 minute): in generate mode it
    writes a short critique, then its verdict."""
    root = tmp_path_factory.mktemp("critique-judge")
    (root / "recipe.yaml").write_text(CRITIQUE_RECIPE)
    commands = [
        ["data", "synthetic", "--output", str(root / "data"), "--per-category", "40", "--judge"],
        ["train", "--kind", "judge", "--recipe", str(root / "recipe.yaml"), "--data", str(root / "data" / "train"),
         "--heldout", str(root / "data" / "heldout"), "--output", str(root / "run")],
        ["export", "--checkpoint", str(root / "run" / "checkpoint-final"), "--output", str(root / "judge")],
    ]  # fmt: skip
    for command in commands:
        done = subprocess.run([VLREWARD, *command], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    return root / "judge"


@pytest.fixture(scope="session")
def critique_backend(critique_judge: Path):
    from vlreward.service.backends.transformers import TransformersBackend

    return TransformersBackend(critique_judge, dtype="float32", device="cpu")


@pytest.fixture(scope="session")
def judge_backend(tiny_judge: Path):
    from vlreward.service.backends.transformers import TransformersBackend

    return TransformersBackend(tiny_judge, dtype="float32", device="cpu")


@pytest.fixture(scope="session")
def hf_backend(tiny_reward: Path):
    from vlreward.service.backends.transformers import TransformersBackend

    torch.manual_seed(0)
    return TransformersBackend(tiny_reward, dtype="float32", device="cpu")


@pytest.fixture(scope="session")
def bench_reward(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A reward checkpoint of the bench size (8 layers, 26M parameters; seconds to build)."""
    from vlreward.training.base_model import build_base_model

    models = tmp_path_factory.mktemp("models")
    return build_reward_checkpoint(build_base_model(models / "bench-base", size="bench"), models / "bench-reward")


@dataclass(frozen=True)
class VLLMServe:
    """vLLM's own OpenAI server on the tiny reward checkpoint (the baseline we are measured against)."""

    url: str
    model: Path


@pytest.fixture(scope="session")
def vllm_serve(tiny_reward: Path):
    """`vllm serve` (its CPU build) with the classify adapter and raw scores, started once per session;
    shared by the protocol tests and the performance suite's smoke test."""
    from loadtest.servers import start_vllm_serve

    server = start_vllm_serve(tiny_reward)
    try:
        yield VLLMServe(server.url, tiny_reward)
    finally:
        server.stop()
