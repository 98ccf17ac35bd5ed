"""All service settings: one pydantic-settings model, the single source of every knob.

Each field is a name, a type, a default and a help text; from it come the environment variable
(``VLREWARD_<NAME>``), the ``vlreward serve --<name>`` flag (generated in :mod:`vlreward.service.cli`),
the limits ``/info`` reports (fields marked with :data:`LIMIT`) and the defaults of the sub-systems
(media policy, per-sample limits, batching, backends, the vLLM engine), which read them with
:func:`default`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from vlreward.service.reference import Normalize

ENV_PREFIX = "VLREWARD_"
BACKENDS = ("transformers", "vllm")
"""The scoring backends, by the name users give them (``--backend``, /info, metrics)."""
BACKEND_ALIASES = {"hf": "transformers"}
"""Other names accepted for a backend (``hf``: the transformers backend's earlier name)."""


def backend_name(name: str) -> str:
    """A backend's one name, for any name it is accepted by."""
    return BACKEND_ALIASES.get(name, name)


LIMIT = {"limit": True}
"""``json_schema_extra`` of the settings ``/info`` lists under ``limits``."""


class Settings(BaseSettings):
    """Every knob of the service. Each field reads ``VLREWARD_<NAME>`` from the environment."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", protected_namespaces=())

    # Model and engine
    model: str | None = Field(
        None,
        description="Reward checkpoint directory or Hugging Face repo id (owner/name), optionally named: NAME=PATH "
        "(`vlreward serve` takes the flag several times, one per model); default: the embedded model.",
    )
    models: Path | None = Field(
        None,
        description="YAML file of the models to serve: name -> model and its own settings (docs/serving.md).",
    )
    revision: str | None = Field(None, description="Branch, tag or commit when --model is a Hugging Face repo id.")
    base: str | None = Field(
        None,
        description="A LoRA adapter (`model` is its folder, docs/serving.md): the served model whose backbone it "
        "adapts; the adapter shares its weights and engine (models file).",
    )
    judge: str | None = Field(
        None,
        description="Serve a generative checkpoint as a judge with this declaration: a built-in one (generic, "
        'unifiedreward-qwen, llava-critic-r1) or a YAML file (docs/serving.md, "Generative judges"); default: '
        "what the checkpoint's config.json declares.",
    )
    normalize: Normalize = Field(
        "none",
        description="How /score and /rank return a request's scores when it does not say: none (raw) or zscore "
        "((s - mean) / std with the checkpoint's reference statistics, `vlreward calibrate`).",
    )
    backend: str = Field("transformers", description="Scoring backend: transformers (hf also accepted) or vllm.")
    dtype: str = Field("auto", description="auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16 or float16.")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    attn_implementation: str = Field(
        "sdpa", description="Attention kernels of the transformers backend: sdpa or flash_attention_2 (if installed)."
    )
    cudnn_attention: bool = Field(
        False,
        description="Let torch use cuDNN's fused attention on CUDA (transformers backend). Off: cuDNN builds an "
        "execution plan for each new input shape, and shared-prefix suffixes and mixed batches bring new shapes "
        "on most calls (the measurement: docs/performance.md).",
    )
    pack_batches: bool = Field(
        False,
        description="Transformers backend: run a batch's samples end to end in one row instead of padded to the "
        "longest (no work on padding; attention stays within each sample). Off by default: the batcher's "
        "length-sorted batches carry little padding, and the GPU path is not yet measured (the measurement: "
        "docs/performance.md).",
    )
    home: Path = Field(Path("~/.cache/vlreward").expanduser(), description="Where the embedded model is kept.")

    # HTTP
    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8000, description="Port to bind.")
    api_keys: str = Field("", description="Comma-separated API keys; empty means no auth (prefer the file).")
    api_key_file: Path | None = Field(None, description="File with one API key per line.")
    log_json: bool = Field(False, description="One JSON log line per request.")
    header_timeout_s: float = Field(
        10.0,
        description="A connection's request line and headers must arrive within this (408 after it; slow clients).",
        json_schema_extra=LIMIT,
    )
    body_timeout_s: float = Field(
        60.0, description="A request's body must arrive within this after its headers (408 after it).",
        json_schema_extra=LIMIT,
    )  # fmt: skip
    max_header_bytes: int = Field(
        64 * 1024, description="Request line and headers, in bytes (431 above).", json_schema_extra=LIMIT
    )
    max_connections: int = Field(
        1024, description="Open connections; a request beyond them gets 429 and its connection closes.",
        json_schema_extra=LIMIT,
    )  # fmt: skip

    # Batching and admission
    max_batch_tokens: int | None = Field(
        None, description="Padded tokens per forward pass (transformers backend; unset: 16384 on a GPU; on the CPU "
        "as many as keep a batch's MLP activations within 3 MiB, 256 to 2048: 512 for the bench model).",
        json_schema_extra=LIMIT,
    )  # fmt: skip
    max_batch_size: int = Field(32, description="Samples per forward pass.", json_schema_extra=LIMIT)
    cpu_lanes: int | None = Field(
        None, description="Transformers backend on the CPU: batches run at once, each on its share of the cores "
        "(one that finds the machine idle with nothing else queued gets every core). Unset: 2 where torch has "
        "2 or more threads, else 1.", ge=1,
    )  # fmt: skip
    max_wait_ms: float = Field(
        5.0,
        description="How long a batch waits to fill before it runs, while other requests to the model are "
        "still being prepared (a lone request does not wait).",
        json_schema_extra=LIMIT,
    )
    max_queue: int = Field(
        2048, description="Samples waiting at most; beyond it requests get 429.", json_schema_extra=LIMIT
    )
    request_timeout_s: float = Field(
        60.0, gt=0, description="Default per-request deadline (504 after it).", json_schema_extra=LIMIT
    )
    max_request_timeout_s: float = Field(
        120.0,
        gt=0,
        description="Longest deadline a request may ask for with timeout_s (422 beyond it): the longest a request "
        "runs, which the drain after SIGTERM covers.",
        json_schema_extra=LIMIT,
    )
    drain_timeout_s: float | None = Field(
        None,
        gt=0,
        description="After SIGTERM, how long in-flight requests may take (unset: max_request_timeout_s, so every "
        "accepted request can finish).",
    )

    # Limits
    max_body_bytes: int = Field(64 * 1024 * 1024, description="Largest request body.", json_schema_extra=LIMIT)
    max_items: int = Field(256, description="Items per /score and queries per /get_reward.", json_schema_extra=LIMIT)
    max_responses: int = Field(64, description="Responses per /rank.", json_schema_extra=LIMIT)
    max_tokens: int = Field(8192, description="Tokens per sample, image tokens included.", json_schema_extra=LIMIT)
    max_images: int = Field(8, description="Images per sample (vLLM: per prompt).", json_schema_extra=LIMIT)
    max_steps: int = Field(64, description="Steps per item (process models).", json_schema_extra=LIMIT)
    max_step_tokens: int = Field(1024, description="Tokens per step (process models).", json_schema_extra=LIMIT)
    judge_max_new_tokens: int = Field(
        1024, ge=1, description="New tokens per answer in a judge's generate mode.", json_schema_extra=LIMIT
    )
    judge_max_samples: int = Field(
        16, ge=1, description="Answers per question in a judge's generate mode.", json_schema_extra=LIMIT
    )
    judge_max_generations: int = Field(
        256,
        ge=1,
        description="Answers one generate-mode request asks for: items (or pairs x orders) x samples.",
        json_schema_extra=LIMIT,
    )
    max_image_pixels: int = Field(
        40_000_000, description="width*height of an image, checked before decoding.", json_schema_extra=LIMIT
    )
    max_image_bytes: int = Field(20 * 1024 * 1024, description="Encoded size of one image.", json_schema_extra=LIMIT)
    max_request_image_pixels: int = Field(
        250_000_000,
        description="Decoded pixels of all images of one request (3 bytes each; 413 above).",
        json_schema_extra=LIMIT,
    )
    max_total_image_pixels: int = Field(
        1_000_000_000,
        description="Decoded pixels of the images of all requests in flight (429 while full).",
        json_schema_extra=LIMIT,
    )
    min_pixels: int | None = Field(None, description="Override the checkpoint's minimum pixels per image.")
    max_pixels: int | None = Field(None, description="Override the checkpoint's maximum pixels per image.")

    # Media sources
    allow_urls: bool = Field(False, description="Fetch http(s) image URLs.")
    url_allowlist: str = Field("", description="Comma-separated host names URLs may point to (empty: any).")
    url_allow_private: bool = Field(False, description="Allow private/loopback addresses (tests only).")
    url_timeout_s: float = Field(10.0, description="Timeout for one image download, redirects included.")
    url_max_redirects: int = Field(3, description="Redirects one image download may follow.")
    media_root: Path | None = Field(None, description="Folder file references may point into; unset disables them.")

    # Traffic capture (off by default): a sample of /score and /rank requests and their scores, to rescore
    # offline with another model (`vlreward score --engine ray`); docs/security.md says what it stores.
    capture_rate: float = Field(
        0.0, ge=0.0, le=1.0, description="Share of /score and /rank requests captured (0: off)."
    )
    capture_dir: Path | None = Field(None, description="Folder captured requests are written to (needed when on).")
    capture_retention_hours: float = Field(
        168.0, gt=0, description="Captured hours older than this are deleted (at each new hour's first capture)."
    )
    capture_redact: str | None = Field(
        None, description="module:function called on each captured row (a dict) before it is written; it returns "
        "the row to write, changed or not, or None to drop it.",
    )  # fmt: skip

    # vLLM engine (backend "vllm"). Unset values get the device's defaults (GPU_ENGINE_DEFAULTS and
    # CPU_ENGINE_DEFAULTS in vlreward.service.backends.vllm, each with its reason); /info shows them.
    vllm_max_model_len: int | None = Field(None, description="Longest sequence (unset: the device's default).")
    vllm_gpu_memory_utilization: float | None = Field(
        None, description="Share of GPU memory (on CPU: of host memory) for weights + KV cache (unset: by device)."
    )
    vllm_tensor_parallel_size: int = Field(1, description="GPUs per replica.")
    vllm_max_num_seqs: int | None = Field(None, description="Sequences per engine step (unset: by device).")
    vllm_max_num_batched_tokens: int | None = Field(None, description="Tokens per engine step (unset: by device).")
    vllm_enable_prefix_caching: bool = Field(True, description="Reuse KV of shared prefixes (/rank, system prompts).")
    vllm_enforce_eager: bool | None = Field(None, description="Skip CUDA graphs (unset: on for CPU, off for GPU).")
    vllm_block_size: int | None = Field(
        None, description="Tokens per KV-cache block (unset: vLLM's default; 32 for a process model's per-step "
        "scoring on the CPU).",
    )  # fmt: skip
    vllm_step_scoring: Literal["per_step", "step_pooling"] = Field(
        "per_step",
        description="Process models: one classify request per step, ending at its tag, sharing the earlier steps "
        "through the prefix cache (per_step), or one token_classify request per item with vLLM's step pooling, "
        "which turns prefix caching and chunked prefill off for the engine (step_pooling).",
    )  # fmt: skip
    vllm_cpu_reserved_cores: int | None = Field(
        None, description="CPU build: cores kept from the engine's worker for its scheduler and the HTTP server "
        "(unset: none on hosts of up to 4 cores for a model of 4M language-model parameters or more, else vLLM's "
        "own choice, one).",
    )  # fmt: skip

    @model_validator(mode="after")
    def _capture_has_a_folder(self) -> Settings:
        if self.capture_rate > 0 and self.capture_dir is None:
            raise ValueError("capture_rate is above 0: set capture_dir, the folder captured requests go to")
        return self

    @model_validator(mode="after")
    def _default_deadline_within_the_longest(self) -> Settings:
        if self.request_timeout_s > self.max_request_timeout_s:
            raise ValueError(
                f"request_timeout_s ({self.request_timeout_s:g}) exceeds max_request_timeout_s "
                f"({self.max_request_timeout_s:g})"
            )
        return self

    @property
    def drain_s(self) -> float:
        """How long the drain after SIGTERM waits for in-flight requests."""
        return self.max_request_timeout_s if self.drain_timeout_s is None else self.drain_timeout_s

    @field_validator("backend", mode="before")
    @classmethod
    def _one_name_per_backend(cls, value: Any) -> Any:
        """``hf`` is the transformers backend (its earlier name); every other part sees one name."""
        return backend_name(value) if isinstance(value, str) else value

    @field_validator("model", mode="before")
    @classmethod
    def _model_path_as_text(cls, value: Any) -> Any:
        """A directory may be given as a Path (it is kept as text, like a repo id)."""
        return str(value) if isinstance(value, Path) else value

    def api_key_set(self) -> frozenset[str]:
        """The accepted API keys from ``api_keys`` and ``api_key_file``."""
        keys = {k.strip() for k in self.api_keys.split(",") if k.strip()}
        if self.api_key_file is not None:
            keys |= {line.strip() for line in self.api_key_file.read_text().splitlines() if line.strip()}
        return frozenset(keys)

    def url_hosts(self) -> frozenset[str]:
        return frozenset(h.strip().lower() for h in self.url_allowlist.split(",") if h.strip())

    def default_model_dir(self, kind: str = "scalar") -> Path:
        """Where the embedded default model of ``kind`` lives (the process model: ``default-process``)."""
        return self.home.expanduser() / "models" / ("default" if kind == "scalar" else f"default-{kind}")

    def limits(self) -> dict[str, Any]:
        """The settings ``/info`` reports as limits (fields marked :data:`LIMIT`), by name."""
        return {name: getattr(self, name) for name in limit_names()}


def default(name: str) -> Any:
    """A setting's default, for the sub-systems' own signatures (one declaration, here)."""
    return Settings.model_fields[name].get_default(call_default_factory=True)


def limit_names() -> list[str]:
    """Names of the settings marked :data:`LIMIT`, in declaration order."""
    return [name for name, field in Settings.model_fields.items() if field.json_schema_extra == LIMIT]


def env_name(name: str) -> str:
    """The environment variable of a setting."""
    return ENV_PREFIX + name.upper()
