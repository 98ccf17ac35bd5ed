"""Settings: one pydantic-settings object, VLREWARD_* variables, keys from a file too."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from pathlib import Path

import pytest

from vlreward.service.settings import Settings, default, env_name, limit_names


def test_environment_variables_fill_the_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("VLREWARD_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("VLREWARD_ALLOW_URLS", "true")
    monkeypatch.setenv("VLREWARD_URL_ALLOWLIST", "Images.Example.com, cdn.example.org")
    monkeypatch.setenv("VLREWARD_VLLM_GPU_MEMORY_UTILIZATION", "0.5")
    monkeypatch.setenv("VLREWARD_HOME", str(tmp_path))
    settings = Settings()
    assert settings.max_batch_size == 7 and settings.allow_urls
    assert settings.url_hosts() == {"images.example.com", "cdn.example.org"}
    assert settings.vllm_gpu_memory_utilization == 0.5
    assert settings.default_model_dir() == tmp_path / "models" / "default"


def test_api_keys_come_from_the_variable_and_the_key_file(monkeypatch, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("file-key-1\n\n  file-key-2  \n")
    monkeypatch.setenv("VLREWARD_API_KEYS", "env-key, ,other")
    settings = Settings(api_key_file=keys)
    assert settings.api_key_set() == {"env-key", "other", "file-key-1", "file-key-2"}
    assert Settings(api_keys="").api_key_set() == set()  # an explicit value wins over the environment


# The environment variables users and deployments know; renaming a field must fail here first.
ENVIRONMENT = """
MODEL MODELS REVISION BASE JUDGE NORMALIZE BACKEND DTYPE DEVICE ATTN_IMPLEMENTATION CUDNN_ATTENTION PACK_BATCHES HOME HOST PORT API_KEYS API_KEY_FILE LOG_JSON
HEADER_TIMEOUT_S BODY_TIMEOUT_S MAX_HEADER_BYTES MAX_CONNECTIONS MAX_BATCH_TOKENS MAX_BATCH_SIZE CPU_LANES
MAX_WAIT_MS MAX_QUEUE REQUEST_TIMEOUT_S MAX_REQUEST_TIMEOUT_S DRAIN_TIMEOUT_S MAX_BODY_BYTES MAX_ITEMS MAX_RESPONSES MAX_TOKENS
MAX_IMAGES MAX_STEPS MAX_STEP_TOKENS JUDGE_MAX_NEW_TOKENS JUDGE_MAX_SAMPLES JUDGE_MAX_GENERATIONS MAX_IMAGE_PIXELS MAX_IMAGE_BYTES MAX_REQUEST_IMAGE_PIXELS MAX_TOTAL_IMAGE_PIXELS MIN_PIXELS MAX_PIXELS ALLOW_URLS URL_ALLOWLIST URL_ALLOW_PRIVATE
URL_TIMEOUT_S URL_MAX_REDIRECTS MEDIA_ROOT CAPTURE_RATE CAPTURE_DIR CAPTURE_RETENTION_HOURS CAPTURE_REDACT VLLM_MAX_MODEL_LEN VLLM_GPU_MEMORY_UTILIZATION
VLLM_TENSOR_PARALLEL_SIZE VLLM_MAX_NUM_SEQS VLLM_MAX_NUM_BATCHED_TOKENS VLLM_ENABLE_PREFIX_CACHING
VLLM_ENFORCE_EAGER VLLM_BLOCK_SIZE VLLM_STEP_SCORING VLLM_CPU_RESERVED_CORES
""".split()
LIMITS = """header_timeout_s body_timeout_s max_header_bytes max_connections max_batch_tokens max_batch_size
max_wait_ms max_queue request_timeout_s max_request_timeout_s max_body_bytes max_items max_responses max_tokens max_images max_steps max_step_tokens judge_max_new_tokens judge_max_samples judge_max_generations max_image_pixels
max_image_bytes max_request_image_pixels max_total_image_pixels""".split()


def _value_for(annotation) -> tuple[str, object]:
    """An environment string for a field's type and the value it must parse to."""
    if typing.get_origin(annotation) is typing.Literal:  # a choice: the last one (not the default)
        return typing.get_args(annotation)[-1], typing.get_args(annotation)[-1]
    kinds = [t for t in typing.get_args(annotation) if t is not type(None)] or [annotation]
    kind = kinds[0]
    return {
        bool: ("true", True),
        int: ("7", 7),
        float: ("0.25", 0.25),
        str: ("x-value", "x-value"),
        Path: ("/tmp/x-path", Path("/tmp/x-path")),
    }[kind]


def test_every_setting_reads_its_environment_variable_and_has_help(monkeypatch):
    assert [env_name(name) for name in Settings.model_fields] == [f"VLREWARD_{n}" for n in ENVIRONMENT]
    for name, field in Settings.model_fields.items():
        assert field.description, f"{name} has no help text"
        text, expected = _value_for(field.annotation)
        monkeypatch.setenv(env_name(name), text)
        if name == "max_request_timeout_s":  # the default deadline must fit within it
            monkeypatch.setenv(env_name("request_timeout_s"), text)
        if name == "capture_rate":  # capturing needs its folder
            monkeypatch.setenv(env_name("capture_dir"), "/tmp/x-capture")
        assert getattr(Settings(), name) == expected, name
        monkeypatch.delenv(env_name(name))
        monkeypatch.delenv(env_name("request_timeout_s"), raising=False)
        monkeypatch.delenv(env_name("capture_dir"), raising=False)


def test_every_setting_is_a_serve_flag_with_the_fields_help():
    import typer.main

    from vlreward.service.cli import app

    command = typer.main.get_command(app).commands["serve"]
    flags = {param.name: param for param in command.params}
    for name, field in Settings.model_fields.items():
        assert name in flags, f"no --{name.replace('_', '-')}"
        assert field.description in flags[name].help
        assert f"--{name.replace('_', '-')}" in flags[name].opts


def test_the_limits_are_the_marked_settings():
    assert limit_names() == LIMITS
    assert set(Settings().limits()) == set(LIMITS)


def test_the_sub_systems_take_their_defaults_from_the_settings():
    from vlreward.service.backends.transformers import TransformersBackend
    from vlreward.service.backends.vllm import EngineSettings, VLLMBackend
    from vlreward.service.batching import DynamicBatcher
    from vlreward.service.media import MediaPolicy
    from vlreward.service.prepare import Limits

    def defaults(function) -> dict:
        return {n: p.default for n, p in inspect.signature(function).parameters.items() if p.default is not p.empty}

    hf = defaults(TransformersBackend.__init__)
    for name in ("dtype", "device", "max_batch_size", "max_batch_tokens", "min_pixels", "max_pixels", "cpu_lanes"):
        assert hf[name] == default(name), name
    vllm = defaults(VLLMBackend.__init__)
    for name in ("dtype", "device", "max_images", "min_pixels", "max_pixels"):
        assert vllm[name] == default(name), name
    for engine_field in dataclasses.fields(EngineSettings):
        assert engine_field.default == default(f"vllm_{engine_field.name}"), engine_field.name
    batcher = defaults(DynamicBatcher.__init__)
    for name in ("max_batch_size", "max_wait_ms"):
        assert batcher[name] == default(name), name
    assert "max_batch_tokens" not in batcher  # the backend's, in force: the setting or its device's default
    policy = MediaPolicy()
    assert (policy.max_image_bytes, policy.max_image_pixels, policy.url_timeout_s, policy.max_redirects) == (
        default("max_image_bytes"),
        default("max_image_pixels"),
        default("url_timeout_s"),
        default("url_max_redirects"),
    )
    assert (Limits().max_tokens, Limits().max_images) == (default("max_tokens"), default("max_images"))


def test_the_drain_covers_the_longest_request_unless_set_and_the_default_deadline_fits_within_it():
    assert Settings().drain_s == Settings().max_request_timeout_s >= Settings().request_timeout_s
    assert Settings(max_request_timeout_s=300).drain_s == 300
    assert Settings(drain_timeout_s=10).drain_s == 10
    with pytest.raises(ValueError, match="request_timeout_s .* exceeds max_request_timeout_s"):
        Settings(request_timeout_s=200, max_request_timeout_s=100)


def test_the_transformers_backend_has_one_name_and_hf_is_still_accepted():
    from vlreward.service.backends import backend_class
    from vlreward.service.backends.transformers import TransformersBackend

    assert Settings().backend == "transformers" == TransformersBackend.name
    assert Settings(backend="hf").backend == "transformers"
    assert backend_class("hf") is backend_class("transformers") is TransformersBackend
