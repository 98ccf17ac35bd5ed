"""The transformers backend: padded batches of the reward model, run in a worker thread."""

from __future__ import annotations

import asyncio
import functools
import itertools
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import torch

from vlreward.service.backends.facts import SMALL_MODEL_PARAMETERS, backend_facts, language_model_parameters
from vlreward.service.batching import batch_tokens, lanes_for, plan_batches
from vlreward.service.errors import EngineBroken, OutOfMemory
from vlreward.service.judge import Generation, GenerationParams, declared_judge
from vlreward.service.kinds import checkpoint_heads, process_head
from vlreward.service.model.checkpoint import checkpoint_tensor_names, load_lm_head, load_reward_model, step_tag_id
from vlreward.service.model.cpu_kernels import linear_kernels_of
from vlreward.service.model.devices import choose_attention_kernels, release_device_memory, torch_placement
from vlreward.service.model.encoding import (
    EncodedSample,
    collate,
    encode,
    encode_shared,
    images_digest,
    opening_ids,
    set_pixel_bounds,
    with_prefix_key,
)
from vlreward.service.model.formatting import FormattedSample
from vlreward.service.model.generation import JudgeGenerator
from vlreward.service.model.lora import AdapterError, lora_set, read_adapter
from vlreward.service.model.probe import Probe, probe_sample, write_probe
from vlreward.service.prepare import prepare_request_sample
from vlreward.service.settings import Settings, default
from vlreward.service.steps import step_ends
from vlreward.service.warmup import check_probe, probe_warm_up

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

OTHER_THREADS_CPU_THREADS = 1
"""Torch threads of every thread but the backend's team thread (lanes, preparation, the event loop). libgomp
gives every OpenMP team short spin-waits (100 spins, then a futex sleep per parallel region) once the process
holds more OpenMP threads than cores, which a second multi-threaded team anywhere in the process does: the
bench model's lone pass took 102-112 ms instead of 80 (docs/performance.md, "Small models: the request
path"). So the work on several cores runs on one thread, and a thread started later begins with one."""
TEAM_THREAD_NAME = "vlreward-hf-team"


@functools.cache
def process_team() -> ThreadPoolExecutor:
    """The process's team thread: the one thread that runs a model on more than one core (every CPU
    backend's load, lone batches and blocking callers' batches; see OTHER_THREADS_CPU_THREADS)."""
    return ThreadPoolExecutor(1, thread_name_prefix=TEAM_THREAD_NAME)


def on_team_thread() -> bool:
    """Whether the calling thread is :func:`process_team`'s."""
    return threading.current_thread().name.startswith(TEAM_THREAD_NAME)


@functools.cache
def process_cpu_threads() -> int:
    """The CPU threads the process's backends share: torch's count when the first one was built (the
    chart's OMP_NUM_THREADS, a ``torch.set_num_threads`` before it, else torch's default). Read once: the
    threads started after a backend ran begin with OTHER_THREADS_CPU_THREADS."""
    return torch.get_num_threads()


def _with_engine_errors(work: Callable, *args: Any) -> Any:
    """``work(*args)`` with torch's failures as the schedulers need them: out of memory (CUDA, or the CPU
    allocator) is :class:`OutOfMemory` (a smaller batch may fit); an accelerator error is
    :class:`EngineBroken` (it poisons the CUDA context: every later call fails too)."""
    try:
        return work(*args)
    except torch.OutOfMemoryError as exc:
        raise OutOfMemory(str(exc)) from exc
    except torch.AcceleratorError as exc:
        raise EngineBroken(f"{type(exc).__name__}: {exc}") from exc
    except RuntimeError as exc:
        if "can't allocate memory" in str(exc):  # the CPU allocator's out-of-memory error
            raise OutOfMemory(str(exc)) from exc
        raise


class TransformersBackend:
    """Qwen2.5-VL reward model in transformers; batches sorted by length and cut by a token budget."""

    name = "transformers"
    max_tokens = None
    continuous_batching = False

    def __init__(
        self,
        model_dir: str | Path,
        dtype: str = default("dtype"),
        device: str = default("device"),
        max_batch_size: int = default("max_batch_size"),
        max_batch_tokens: int | None = default("max_batch_tokens"),
        padding_side: Literal["left", "right"] = "right",
        min_pixels: int | None = default("min_pixels"),
        max_pixels: int | None = default("max_pixels"),
        attn_implementation: str = default("attn_implementation"),
        cudnn_attention: bool = default("cudnn_attention"),
        pack_batches: bool = default("pack_batches"),
        cpu_lanes: int | None = default("cpu_lanes"),
        judge: str | None = default("judge"),
    ):
        placement = torch_placement(device, dtype)
        choose_attention_kernels(placement, cudnn_attention)
        self.model_dir = Path(model_dir)
        self.dtype = placement.dtype
        self.device = placement.device
        self.max_batch_size = max_batch_size
        self.padding_side = padding_side
        self.judge = declared_judge(self.model_dir, judge)
        """A judge's declaration (prompts, verdict tokens); None for other kinds."""
        self.cores = process_cpu_threads() if placement.device_type == "cpu" else None
        """The CPU threads the batches share (None on a GPU: one batch at a time)."""
        self._team = None if self.cores is None else process_team()
        """Where the model runs on more than one core (None on a GPU)."""
        self.model, self.processor = self.on_team(
            load_reward_model, self.model_dir, TORCH_DTYPES[self.dtype], self.device, attn_implementation, self.judge
        )
        self.model.pack_batches = pack_batches
        self.process = process_head(self.model_dir)
        self.heads = checkpoint_heads(self.model_dir)
        """A multi-head model's heads (its scores are then one list of head outputs per sample); None: one head."""
        """A process model's head (step tag, activation, aggregate); None for a scalar model."""
        self.step_tag = None if self.process is None else self.process.step_tag
        self._tag_id = None if self.process is None else step_tag_id(self.processor.tokenizer, self.step_tag)
        self.on_team(self.model.cache_opening, opening_ids(self.processor))  # the system turn most samples start with
        self.generator: JudgeGenerator | None = None
        """A judge's generate mode: the backbone with the checkpoint's whole LM head (None for other kinds)."""
        if self.judge is not None:
            lm_head = self.on_team(load_lm_head, self.model, self.model_dir, checkpoint_tensor_names(self.model_dir))
            self.generator = JudgeGenerator(self.model, lm_head, self.processor.tokenizer, max_batch_size)
        mlp_bytes = self.model.config.text_config.intermediate_size * self.model.dtype.itemsize
        self.max_batch_tokens = batch_tokens(max_batch_tokens, placement.device_type, mlp_bytes)
        """Padded tokens per forward pass: the setting, else the device's default for this model."""
        set_pixel_bounds(self.processor, min_pixels, max_pixels)
        self._facts = backend_facts(self.name, self.model_dir, self.dtype, self.device, self.processor)
        self.lanes = lanes_for(cpu_lanes, self.cores)
        self.lone_threads = self.choose_lone_threads(language_model_parameters(self.model.config.text_config))
        """Threads of a batch that finds the CPU idle (None: every core)."""
        # One worker per lane: the model never runs on the event loop.
        self._executor = ThreadPoolExecutor(max_workers=self.lanes, thread_name_prefix="vlreward-hf")
        self._sync_lanes: ThreadPoolExecutor | None = None
        """The lanes of blocking callers (offline scoring, evaluation), started on first use."""
        self._closed = False

    @classmethod
    def from_settings(
        cls, model_dir: Path, settings: Settings, adapters: Sequence[str | Path] = ()
    ) -> TransformersBackend:
        """``adapters`` need no preparation here: :meth:`add_adapter` loads each."""
        return cls(
            model_dir,
            dtype=settings.dtype,
            device=settings.device,
            max_batch_size=settings.max_batch_size,
            max_batch_tokens=settings.max_batch_tokens,
            min_pixels=settings.min_pixels,
            max_pixels=settings.max_pixels,
            attn_implementation=settings.attn_implementation,
            cudnn_attention=settings.cudnn_attention,
            pack_batches=settings.pack_batches,
            cpu_lanes=settings.cpu_lanes,
            judge=settings.judge,
        )

    def encode(self, sample: FormattedSample) -> EncodedSample:
        """Tokenise and preprocess one sample (its token count and prefix key are then known)."""
        return self._reading_steps(with_prefix_key(encode(sample, self.processor), images_digest(sample.images)))

    def encode_shared(self, samples: list[FormattedSample]) -> list[EncodedSample]:
        """Encode candidates that share their images, preprocessing and hashing the images once."""
        images = images_digest(samples[0].images) if samples else None
        return [self._reading_steps(with_prefix_key(e, images)) for e in encode_shared(samples, self.processor)]

    def _reading_steps(self, encoded: EncodedSample) -> EncodedSample:
        """A process model reads its head at every step tag."""
        if self._tag_id is not None:
            encoded.read_at = step_ends(encoded.input_ids.tolist(), self._tag_id, self.step_tag)
        return encoded

    def add_adapter(self, adapter_dir: Path, name: str) -> int:
        """Serve a LoRA adapter on this model (:mod:`~vlreward.service.model.lora`): its slot, which the
        samples scored with it carry (:meth:`for_adapter`)."""
        if self.judge is not None or self.heads is not None:
            raise AdapterError(f"{self.model_dir}: LoRA adapters are served on a one-head scalar or process model")
        return lora_set(self.model).add(read_adapter(adapter_dir, name))

    @staticmethod
    def for_adapter(encoded: EncodedSample, slot: int) -> EncodedSample:
        """``encoded`` scored with the adapter in ``slot`` (a shared prefix is shared with its own rows only)."""
        encoded.adapter = slot
        if encoded.prefix_key is not None:
            encoded.prefix_key += b"|adapter:%d" % slot
        return encoded

    def plan_batches(self, lengths: list[int]) -> list[list[int]]:
        """Group sample indices into batches: sorted by length, each within size and token budget."""
        return plan_batches(lengths, self.max_batch_size, self.max_batch_tokens)

    def score_encoded_sync(self, encoded: list[EncodedSample]) -> list[float]:
        """Score encoded samples in planned batches, on the CPU's lanes when there are several batches
        (as the service runs them); results in input order."""
        plan = self.plan_batches([e.num_tokens for e in encoded])
        batches = [[encoded[i] for i in batch] for batch in plan]
        if self.lanes == 1 or len(batches) == 1:
            values = [self.on_team(self.model.score_batch, batch, self.padding_side) for batch in batches]
        else:
            if self._sync_lanes is None:  # its own threads: this may itself run on a model thread (warm-up)
                self._sync_lanes = ThreadPoolExecutor(self.lanes, thread_name_prefix="vlreward-hf-sync")
            run = functools.partial(self._on_threads, self.cores // self.lanes, self.model.score_batch)
            values = list(self._sync_lanes.map(run, batches, itertools.repeat(self.padding_side)))
        scores: list[float] = [0.0] * len(encoded)
        for batch, batch_values in zip(plan, values, strict=True):
            for index, value in zip(batch, batch_values, strict=True):
                scores[index] = value
        return scores

    def score_sync(self, samples: list[FormattedSample]) -> list[float]:
        """Blocking scoring of formatted samples (offline tools; the service uses :meth:`score`)."""
        return self.score_encoded_sync([self.encode(s) for s in samples])

    async def _on_model_thread(self, work: Callable, *args: Any, threads: int | None = None) -> Any:
        """``work(*args)`` on a model thread, never on the event loop, with torch's failures mapped; on the
        CPU on ``threads`` threads (default: every core): the team thread when that is more than one."""
        several = self.cores is not None and (threads or self.cores) > 1
        executor = self._team if several else self._executor
        return await asyncio.get_running_loop().run_in_executor(executor, self._on_threads, threads, work, *args)

    def on_team(self, work: Callable, *args: Any) -> Any:
        """Blocking ``work(*args)`` on every core: on the team thread, unless the calling thread is the one
        the process's OpenMP team belongs to anyway (a GPU; the team thread itself; a script's main thread
        outside an event loop, which ran torch on every core before: the model card's loop, an offline run)."""
        if self._team is None or self._is_team_thread():
            return work(*args)
        return self._team.submit(self._on_threads, None, work, *args, map_errors=False).result()

    @staticmethod
    def _is_team_thread() -> bool:
        if on_team_thread():
            return True
        if threading.current_thread() is not threading.main_thread():
            return False
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return True
        return False

    def _on_threads(self, threads: int | None, work: Callable, *args: Any, map_errors: bool = True) -> Any:
        run = functools.partial(_with_engine_errors, work) if map_errors else work
        if self.cores is None:
            return run(*args)
        # Sets the calling thread's own OpenMP and MKL teams, and the count threads started later begin
        # with: that one is OTHER_THREADS_CPU_THREADS afterwards. torch sets a thread up on its first call
        # (applying the process-wide count): done first, so that it cannot undo this thread's own.
        torch.get_num_threads()
        torch.set_num_threads(threads or self.cores)
        try:
            return run(*args)
        finally:
            torch.set_num_threads(OTHER_THREADS_CPU_THREADS)

    async def score(self, samples: list[FormattedSample]) -> list[float]:
        return await self._on_model_thread(self.score_sync, samples)

    async def run_batch(self, batch: list[EncodedSample], threads: int | None = None) -> list[float]:
        """One forward pass over an already-formed batch (the service's batcher forms them)."""
        return await self._on_model_thread(self.model.score_batch, batch, self.padding_side, threads=threads)

    async def generate(self, questions: list[EncodedSample], params: GenerationParams) -> list[list[Generation]]:
        """A judge's answers to encoded questions (``params.samples`` each), batched on a model thread.
        Cancelling the call stops the generation at its next token."""
        stop = threading.Event()
        try:
            return await self._on_model_thread(self.generator.generate, questions, params, stop)
        except asyncio.CancelledError:
            stop.set()
            raise

    def format_request_sample(self, sample: dict) -> FormattedSample:
        """One sample in the HTTP JSON shape (inline images only), formatted for this model."""
        return prepare_request_sample(sample, self.processor, step_tag=self.step_tag, judge=self.judge)

    def score_request_sample(self, sample: dict) -> float:
        """Score one sample given in the HTTP JSON shape (inline images only)."""
        return self.score_sync([self.format_request_sample(sample)])[0]

    @torch.inference_mode()
    def probe_score_and_scale(self, sample: dict) -> tuple[float | list[float], float]:
        """A sample's score (a process model's: its step logits; a judge's: its verdict tokens' logits) and
        its scale, |head weight| * |final hidden state| at the last scored token (the largest row's, for a
        judge; see the probe module)."""
        encoded = self.encode(self.format_request_sample(sample))
        batch = collate([encoded], self.model.config.text_config.pad_token_id)
        read_at = None if encoded.read_at is None else torch.tensor([encoded.read_at], device=self.model.device)
        hidden = self.model.hidden_states(**{k: v.to(self.model.device) for k, v in batch.items()}, read_at=read_at)
        scores = self.model.reward(hidden)[0]
        last = hidden[0] if read_at is None else hidden[0, -1]
        scale = float(self.model.score.weight.norm(dim=-1).max() * last.float().norm())
        return (float(scores) if scores.dim() == 0 else scores.float().tolist()), scale

    async def run_shared_prefix(self, batch: list[EncodedSample], threads: int | None = None) -> list[float]:
        """Candidates of one /rank request: the shared prompt + images run once (see loadtest/rank_prefix.py)."""
        return await self._on_model_thread(self.score_shared_sync, batch, threads=threads)

    def score_shared_sync(self, batch: list[EncodedSample]) -> list[float]:
        """Blocking :meth:`run_shared_prefix`, chunked within the batch limits."""
        return self.model.score_shared_prefix(batch, self.max_batch_size, self.max_batch_tokens)

    @property
    def shared_prefix_runs(self) -> int:
        """How many times a shared prefix was computed once for several samples (vlreward_shared_prefix_runs)."""
        return self.model.shared_prefix_runs

    def check_probe(self) -> float | None:
        """Score the checkpoint's probe; raise ProbeMismatch when off. None when there is no probe."""
        return check_probe(self)

    async def warm_up(self) -> float | None:
        """One real forward pass before serving; verifies the checkpoint's probe when it has one."""
        return await probe_warm_up(self)

    def choose_lone_threads(self, parameters: int) -> int | None:
        """Threads for a batch that finds the CPU idle: every core (None), unless the model is small (under
        :data:`~vlreward.service.backends.facts.SMALL_MODEL_PARAMETERS` language-model parameters), whose
        pass gains little from a second thread: then one lane's threads, and the spare cores serve HTTP and
        prepare the next request (tiny model: 4.2-4.9 ms on one thread against 5.5-6.3 ms on two; bench
        model, 24M: 76 ms on two against 108 ms on one). A rule on the model, not a timing, so that every
        start runs the same thread counts."""
        if self.cores is None or self.lanes == 1 or parameters >= SMALL_MODEL_PARAMETERS:
            return None
        return self.cores // self.lanes

    def stamp_probe(self) -> Probe:
        """Score the standard probe sample with this backend and store it in the checkpoint."""
        sample = probe_sample(steps=self.process is not None)
        score, scale = self.probe_score_and_scale(sample)
        steps = score if isinstance(score, list) else None
        last = score if steps is None else steps[-1]
        probe = Probe(sample=sample, score=last, dtype=self.dtype, device=self.device, scale=scale, step_scores=steps)
        write_probe(self.model_dir, probe)
        return probe

    def info(self) -> dict[str, Any]:
        lone = None if self.cores is None else self.lone_threads or self.cores
        cpu = {"cpu_lanes": self.lanes, "cpu_threads": self.cores, "cpu_lone_batch_threads": lone,
               "cpu_linear_kernels": None if self.cores is None else self._linear_kernels()}  # fmt: skip
        return self._facts | cpu | {"pack_batches": self.model.pack_batches}

    def _linear_kernels(self) -> str:
        """What the backbone's large linears run on here: oneDNN's only in float32 where some layer switched
        (a host the rule in ``cpu_kernels`` picks, a layer large enough)."""
        return linear_kernels_of(self.model) if self.dtype == "float32" else "torch"

    def health(self) -> bool:
        return not self._closed

    def engine_metrics(self) -> bytes:
        return b""  # the service's own metrics describe this backend's batches

    async def close(self) -> None:
        self._stop_lanes()

    def _stop_lanes(self) -> None:
        self._closed = True
        self._executor.shutdown(wait=True)
        if self._team is not None and not on_team_thread():
            self._team.submit(lambda: None).result()  # the shared team thread: its work so far is done
        if self._sync_lanes is not None:
            self._sync_lanes.shutdown(wait=True)

    def release(self) -> None:
        """Stop the lanes and free the model now, its device memory included (the backend is done)."""
        self._stop_lanes()
        self.model = None
        release_device_memory(self.device)


def stamp_reference_probe(model_dir: str | Path, device: str = "cpu") -> Probe:
    """Write a checkpoint's probe, computed in float32 (the reference every precision is checked against).
    The float32 model is freed before this returns (a 7B one holds ~33 GB; a vLLM engine started next
    needs that memory)."""
    backend = TransformersBackend(model_dir, dtype="float32", device=device)
    try:
        return backend.stamp_probe()
    finally:
        backend.release()
