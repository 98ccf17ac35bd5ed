"""The KubeRay example (deploy/kuberay/score-rayjob.yaml): valid against KubeRay's RayJob CRD (vendored), its
entrypoint a `vlreward score --engine ray` command our CLI parses, its Ray the version the lock pins."""

from __future__ import annotations

import shlex
import tomllib
from pathlib import Path

import jsonschema
import pytest
import typer
import yaml

from tests.deploy.test_helm import validate_custom_resource

ROOT = Path(__file__).resolve().parents[2]
RAYJOB = ROOT / "deploy" / "kuberay" / "score-rayjob.yaml"


def rayjob() -> dict:
    return yaml.safe_load(RAYJOB.read_text())


def test_the_rayjob_follows_kuberays_crd_and_a_wrong_field_is_caught():
    validate_custom_resource(rayjob())
    wrong = rayjob()
    wrong["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replica"] = 2  # a typo the API server would drop
    with pytest.raises(jsonschema.ValidationError, match="replica"):
        validate_custom_resource(wrong)


def test_the_entrypoint_is_a_score_command_our_cli_parses_and_ray_is_the_locked_version():
    from vlreward.cli import app

    words = shlex.split(rayjob()["spec"]["entrypoint"])
    assert words[:2] == ["vlreward", "score"]
    command = typer.main.get_command(app)
    with command.make_context("vlreward", words[1:]) as context:  # parses every option, runs nothing
        score = command.get_command(context, "score")
        parsed = score.make_context("score", words[2:], parent=context).params
    assert (parsed["engine"], parsed["address"], parsed["actor_gpus"]) == ("ray", "auto", 1.0)
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    ray = next(p["version"] for p in lock["package"] if p["name"] == "ray")
    assert rayjob()["spec"]["rayClusterSpec"]["rayVersion"] == ray
    workers = rayjob()["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert parsed["actors"] == sum(group["replicas"] for group in workers)  # one scoring actor per GPU worker
