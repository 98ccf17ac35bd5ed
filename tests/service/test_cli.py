"""`vlreward serve` with no --model: the embedded default model is built on first start only."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import typer

from tests.helpers import VLREWARD
from vlreward.service import cli as service_cli
from vlreward.service.cli import resolve_model
from vlreward.service.settings import Settings


def test_the_default_model_is_built_on_first_start_only(tiny_reward, tmp_path, monkeypatch):
    built = []

    def builder(path):
        built.append(path)
        shutil.copytree(tiny_reward, path)

    monkeypatch.setattr(service_cli, "default_model_builder", builder)
    settings = Settings(home=tmp_path)
    assert resolve_model(settings) == settings.default_model_dir()
    assert resolve_model(settings) == settings.default_model_dir()
    assert built == [settings.default_model_dir()]


def test_the_assembled_command_installs_bootstrap_as_the_default_model_builder():
    import vlreward.cli  # noqa: F401  (assembles the command and installs the builder)
    from vlreward.training.bootstrap import bootstrap

    assert service_cli.default_model_builder is bootstrap


def test_without_a_builder_serve_names_the_extra_and_the_flag_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(service_cli, "default_model_builder", None)
    with pytest.raises(typer.Exit) as stopped:
        resolve_model(Settings(home=tmp_path))
    assert stopped.value.exit_code == 2
    message = capsys.readouterr().err
    assert message.count("\n") == 1
    assert "--model" in message and "vlreward[train]" in message


def test_an_explicit_model_is_served_as_given(tmp_path):
    assert resolve_model(Settings(model=tmp_path)) == tmp_path


def test_help_lists_the_service_and_training_commands():
    done = subprocess.run([VLREWARD, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for command in ("serve", "score", "convert", "train", "export", "bootstrap", "eval", "data", "pairs"):
        assert f" {command} " in done.stdout, command


def test_python_dash_m_vlreward_runs_the_same_command():
    done = subprocess.run([sys.executable, "-m", "vlreward", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert " serve " in done.stdout and " train " in done.stdout
