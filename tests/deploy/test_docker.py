"""The images and the Compose stack with the real tools: hadolint, the Compose specification's schema,
and the images' install script run in a fresh folder (no Docker engine runs here)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vlreward.service.settings import default

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
BIN = Path(sys.executable).parent
COMPOSE_FILES = [DOCKER / "compose.yaml", DOCKER / "compose.gpu.yaml"]


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
    assert grace > default("drain_timeout_s")  # the drain finishes before Docker kills the process


@pytest.mark.slow
def test_the_images_install_script_installs_a_working_service_in_a_fresh_folder(tmp_path):
    """What `docker build -f docker/Dockerfile.cpu` runs, here (uv's cache makes it quick after `make dev`)."""
    env = {**os.environ, "VLREWARD_PREFIX": str(tmp_path / "opt"), "PYTHON": sys.executable}
    env.pop("VIRTUAL_ENV", None)
    done = subprocess.run([DOCKER / "install.sh", "serve", "vllm", "train"], env=env, capture_output=True,
                          text=True, timeout=1200)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    vlreward = tmp_path / "opt" / "venv" / "bin" / "vlreward"
    served = subprocess.run([vlreward, "serve", "--help"], capture_output=True, text=True, timeout=120)
    assert served.returncode == 0 and "--max-batch-size" in served.stdout
    imports = subprocess.run([tmp_path / "opt" / "venv" / "bin" / "python", "-c",
                              "import vlreward.service.http.app, vllm, accelerate; print('ok')"],
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert imports.stdout.strip().endswith("ok"), imports.stderr[-2000:]
