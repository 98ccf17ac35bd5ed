"""The images and the Compose stack with the real tools: hadolint, the Compose specification's schema,
and the images' install script run in a fresh folder (no Docker engine runs here)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vlreward.service.http.server import SHUTDOWN_S
from vlreward.service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
BIN = Path(sys.executable).parent
COMPOSE_FILES = [DOCKER / "compose.yaml", DOCKER / "compose.gpu.yaml", DOCKER / "compose.models.yaml"]


def hadolint(*files: Path) -> subprocess.CompletedProcess:
    config = ROOT / ".hadolint.yaml"
    return subprocess.run([BIN / "hadolint", "--config", config, *files], capture_output=True, text=True)


def test_both_dockerfiles_lint_clean_and_the_linter_does_find_problems(tmp_path):
    done = hadolint(DOCKER / "Dockerfile", DOCKER / "Dockerfile.cpu")
    assert done.returncode == 0, done.stdout + done.stderr
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN cd /tmp && pip install vlreward\nCMD vlreward serve\n")
    found = hadolint(bad)
    assert found.returncode != 0 and "DL3006" in found.stdout and "DL3025" in found.stdout  # untagged; shell CMD


def test_the_images_run_as_non_root_with_a_healthcheck_and_an_exec_entrypoint():
    for name in ("Dockerfile", "Dockerfile.cpu"):
        text = (DOCKER / name).read_text()
        assert re.search(r"^USER 10001$", text, re.M), name
        assert re.search(r"^HEALTHCHECK .*\n\s+CMD \[.*/health", text, re.M), name
        assert re.search(r'^ENTRYPOINT \["/opt/vlreward/venv/bin/vlreward", "serve"\]$', text, re.M), name
        assert "docker/install.sh" in text, name


def dockerfile_steps(name: str) -> list[tuple[str, str]]:
    """(instruction, arguments) of each step, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (DOCKER / name).read_text())
    steps = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            instruction, _, arguments = line.strip().partition(" ")
            steps.append((instruction.upper(), arguments))
    return steps


DEPENDENCY_FILES = {"pyproject.toml", "uv.lock", "Makefile", "docker/install.sh"}


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cpu"])
def test_the_images_install_dependencies_in_a_layer_before_the_source_is_copied(name):
    """A source edit must not reinstall torch and vLLM: the lock's dependencies are installed from the files
    the lock needs alone, and the whole source is copied only after that layer."""
    steps = dockerfile_steps(name)
    copies = [i for i, (instruction, _) in enumerate(steps) if instruction == "COPY"]
    whole = next(i for i in copies if steps[i][1].split()[0] == ".")
    dependencies = next(i for i, (instruction, args) in enumerate(steps) if "--dependencies-only" in args)
    assert steps[dependencies][0] == "RUN" and dependencies < whole
    copied_before = {src for i in copies if i < dependencies for src in steps[i][1].split()[:-1]}
    assert copied_before == DEPENDENCY_FILES, copied_before


def test_the_gpu_image_has_a_c_compiler_and_the_headers_of_the_python_it_runs():
    """Triton builds a C launcher at its first kernel on a GPU (Qwen2.5-VL's M-RoPE runs one even eager)."""
    steps = dockerfile_steps("Dockerfile")
    python = next(
        args.split("=")[1] for instruction, args in steps if instruction == "ARG" and "PYTHON_VERSION=" in args
    )
    installed = " ".join(args for instruction, args in steps if instruction == "RUN" and "apt-get install" in args)
    packages = {word.strip('"').replace("${PYTHON_VERSION}", python) for word in installed.split()}
    assert {"gcc", "libc6-dev", f"python{python}-dev", f"python{python}-venv", f"python{python}"} <= packages
    env = " ".join(args for instruction, args in steps if instruction == "ENV")
    assert "PYTHON=python${PYTHON_VERSION}" in env  # install.sh builds the venv with that Python


def test_the_compose_files_follow_the_compose_specification(tmp_path):
    check = [BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec"]
    done = subprocess.run([*check, *COMPOSE_FILES], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    wrong = tmp_path / "compose.yaml"
    wrong.write_text("services:\n  vlreward:\n    imagex: vlreward:cpu\n")
    refused = subprocess.run([*check, wrong], capture_output=True, text=True)
    assert refused.returncode != 0 and "imagex" in refused.stdout + refused.stderr


def test_compose_mounts_the_charts_rules_and_dashboard_where_prometheus_and_grafana_read_them():
    services = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DOCKER / source).exists(), volume
    prometheus = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    mounted = {v.split(":")[1] for v in services["prometheus"]["volumes"]}
    assert set(prometheus["rule_files"]) <= mounted
    provider = yaml.safe_load((DOCKER / "grafana/provisioning/dashboards/vlreward.yml").read_text())["providers"][0]
    assert any(v.split(":")[1].startswith(provider["options"]["path"]) for v in services["grafana"]["volumes"])
    grace = int(services["vlreward"]["stop_grace_period"].rstrip("s"))
    served = Settings(
        **{k.removeprefix("VLREWARD_").lower(): v for k, v in services["vlreward"]["environment"].items()}
    )
    assert grace > served.drain_s + SHUTDOWN_S  # the drain and the server's shutdown end before Docker kills it


@pytest.mark.slow
def test_the_images_install_script_installs_a_working_service_in_a_fresh_folder(tmp_path):
    """What `docker build -f docker/Dockerfile.cpu` runs, here (uv's cache makes it quick after `make dev`)."""
    env = {**os.environ, "VLREWARD_PREFIX": str(tmp_path / "opt"), "PYTHON": sys.executable}
    env.pop("VIRTUAL_ENV", None)
    layer = tmp_path / "dependency-layer"  # what the image's first COPY steps give it: the lock's files only
    for name in DEPENDENCY_FILES:
        (layer / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, layer / name)
    deps = subprocess.run([layer / "docker" / "install.sh", "--dependencies-only", "serve", "vllm", "train"], env=env,
                          capture_output=True, text=True, timeout=1200)  # fmt: skip
    assert deps.returncode == 0, deps.stdout[-2000:] + deps.stderr[-3000:]
    vlreward = tmp_path / "opt" / "venv" / "bin" / "vlreward"
    assert (tmp_path / "opt" / "venv" / "bin" / "vllm").exists() and not vlreward.exists()
    done = subprocess.run([DOCKER / "install.sh", "serve", "vllm", "train"], env=env, capture_output=True,
                          text=True, timeout=1200)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    served = subprocess.run([vlreward, "serve", "--help"], capture_output=True, text=True, timeout=120)
    assert served.returncode == 0 and "--max-batch-size" in served.stdout
    imports = subprocess.run([tmp_path / "opt" / "venv" / "bin" / "python", "-c",
                              "import vlreward.service.http.app, vllm, accelerate; print('ok')"],
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert imports.stdout.strip().endswith("ok"), imports.stderr[-2000:]


def test_the_compose_models_override_mounts_a_models_file_the_server_reads():
    from vlreward.service.catalog import model_settings, model_specs

    service = yaml.safe_load((DOCKER / "compose.models.yaml").read_text())["services"]["vlreward"]
    source, target = service["volumes"][0].split(":")[:2]
    assert service["environment"]["VLREWARD_MODELS"] == target
    settings = Settings(models=DOCKER / source)
    specs = model_specs(settings)
    assert [(spec.name, spec.source, model_settings(settings, spec).backend) for spec in specs] == [
        ("default", None, "transformers"),
        ("default-vllm", None, "vllm"),
    ]
