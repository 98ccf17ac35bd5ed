"""Which models a server serves: --model flags (NAME=PATH), the models file, per-model settings."""

from __future__ import annotations

import pytest

from vlreward.service.catalog import (
    CatalogError,
    ModelSpec,
    default_index,
    model_settings,
    model_specs,
    parse_model_flag,
    read_models_file,
)
from vlreward.service.settings import Settings


def test_a_model_flag_is_a_name_and_a_source_or_a_bare_source():
    assert parse_model_flag("helpful=/models/a") == ModelSpec(name="helpful", source="/models/a")
    assert parse_model_flag("safety=Skywork/RM") == ModelSpec(name="safety", source="Skywork/RM")
    assert parse_model_flag("/models/a") == ModelSpec(source="/models/a")
    assert parse_model_flag("Skywork/RM") == ModelSpec(source="Skywork/RM")
    assert parse_model_flag("/data/run=3/ckpt") == ModelSpec(source="/data/run=3/ckpt")  # not a name before '='


def test_without_flags_the_settings_model_is_the_one_model_and_none_the_embedded_default():
    assert model_specs(Settings(model="/m")) == [ModelSpec(source="/m")]
    assert model_specs(Settings(model="rm=/m")) == [ModelSpec(name="rm", source="/m")]
    assert model_specs(Settings()) == [ModelSpec()]
    assert model_specs(Settings(model="/ignored"), ["a=/x"]) == [ModelSpec(name="a", source="/x")]


def test_flags_and_the_models_file_add_up(tmp_path):
    (tmp_path / "models.yaml").write_text("b:\n  model: /y\n")
    specs = model_specs(Settings(model="a=/x", models=tmp_path / "models.yaml"))
    assert [(spec.name, spec.source) for spec in specs] == [("a", "/x"), ("b", "/y")]


def test_the_models_file_gives_names_sources_defaults_and_per_model_settings(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text(
        "helpful:\n  model: /m/a\n  backend: vllm\n  vllm_gpu_memory_utilization: 0.4\n"
        "safety:\n  model: /m/b\n  default: true\n  max_tokens: 4096\n"
    )
    specs = model_specs(Settings(models=path, max_queue=10))
    assert [spec.name for spec in specs] == ["helpful", "safety"] and default_index(specs) == 1
    helpful, safety = (model_settings(Settings(max_queue=10), spec) for spec in specs)
    assert (helpful.model, helpful.backend, helpful.vllm_gpu_memory_utilization) == ("/m/a", "vllm", 0.4)
    assert (safety.model, safety.backend, safety.max_tokens, safety.max_queue) == ("/m/b", "transformers", 4096, 10)


@pytest.mark.parametrize(
    ("flags", "text", "message"),
    [
        (["/a", "/b"], None, "each needs a name: --model NAME=/a"),
        (["a=/x", "a=/y"], None, "'a' is given twice"),
        ([], "a:\n  model: /x\n  max_queue: 3\n", "max_queue cannot be set per model"),
        ([], "a:\n  model: /x\n  default: true\nb:\n  model: /y\n  default: true\n", "more than one default"),
        ([], "- /x\n", "expected a mapping"),
        ([], "a:\n  model: /x\n  max_tokens: lots\n", "model 'a': max_tokens"),
        (["bad name=/x"], None, "each needs a name"),
    ],
)
def test_a_models_configuration_that_cannot_be_served_is_one_clear_line(tmp_path, flags, text, message):
    settings = Settings()
    if text is not None:
        (tmp_path / "models.yaml").write_text(text)
        settings = Settings(models=tmp_path / "models.yaml")
    with pytest.raises(CatalogError, match=message.replace("(", r"\(")):
        for spec in model_specs(settings, flags + (["b=/z"] if flags == ["bad name=/x"] else [])):
            model_settings(settings, spec)


def test_a_missing_models_file_is_one_line(tmp_path):
    with pytest.raises(CatalogError, match="cannot read the models file"):
        read_models_file(tmp_path / "absent.yaml")
