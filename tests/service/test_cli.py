"""`vlreward serve` with no --model: the embedded default model is built on first start only."""

from __future__ import annotations

import shutil

import service.cli
from service.cli import resolve_model
from service.settings import Settings


def test_the_default_model_is_built_on_first_start_only(tiny_reward, tmp_path, monkeypatch):
    built = []

    def builder(path):
        built.append(path)
        shutil.copytree(tiny_reward, path)

    monkeypatch.setattr(service.cli, "default_model_builder", builder)
    settings = Settings(home=tmp_path)
    assert resolve_model(settings) == settings.default_model_dir()
    assert resolve_model(settings) == settings.default_model_dir()
    assert built == [settings.default_model_dir()]


def test_the_training_cli_installs_bootstrap_as_the_default_model_builder():
    import training.cli  # noqa: F401  (installs the builder)
    from training.bootstrap import bootstrap

    assert service.cli.default_model_builder is bootstrap


def test_an_explicit_model_is_served_as_given(tmp_path):
    assert resolve_model(Settings(model=tmp_path)) == tmp_path
