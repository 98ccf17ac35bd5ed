"""Settings: one pydantic-settings object, VLREWARD_* variables, keys from a file too."""

from __future__ import annotations

from vlreward.service.settings import Settings


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
