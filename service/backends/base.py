"""The protocols every scoring engine implements: :class:`Backend`, and :class:`EncodedInput`, what the
schedulers need of one sample. Plain protocols, importing neither torch nor any engine (a test checks)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from vlreward.service.judge import Generation, GenerationParams, JudgeDeclaration
    from vlreward.service.kinds import Heads, ProcessHead
    from vlreward.service.model.formatting import FormattedSample


class EncodedInput(Protocol):
    """A backend's input for one sample, with what limits and scheduling need to know of it."""

    @property
    def num_tokens(self) -> int:
        """Tokens, image tokens included."""
        ...

    @property
    def num_images(self) -> int: ...

    prefix_key: bytes | None
    """Equal for inputs that share a costly prefix exactly (prompt and images): the batcher runs such
    inputs from different requests as one group. None: nothing to share, or the engine shares itself."""


@runtime_checkable
class Backend(Protocol):
    """Scores formatted samples: everything the service, offline scoring and training call on an engine."""

    name: str
    """``hf`` or ``vllm``."""
    model_dir: Path
    dtype: str
    device: str
    processor: Any
    """Owns the chat template and the image pixel bounds."""
    process: ProcessHead | None
    """A process model's head (step tag, activation, default aggregate); None: a scalar model."""
    heads: Heads | None
    """A multi-head scalar model's heads (its scores are then one list of head outputs per sample); None: one."""
    step_tag: str | None
    """A process model's step tag (its scores are then one list of step logits per sample); None: scalar."""
    judge: JudgeDeclaration | None
    """A judge's declaration (its scores are then one list of verdict-token logits per sample); None: not a judge."""
    max_tokens: int | None
    """The engine's context length when it has one (the service's token limit cannot exceed it)."""
    continuous_batching: bool
    """The engine batches across requests itself: the service hands it each request as it comes
    instead of forming batches (admission still applies)."""
    max_batch_tokens: int | None
    """Padded tokens per batch the service forms for it (None where the engine batches itself)."""
    lanes: int
    """Batches the service may run through it at once (see :class:`~vlreward.service.batching.CoreLanes`)."""
    cores: int | None
    """Threads those batches share (their runners then take ``threads=``); None: the engine's own."""
    lone_threads: int | None
    """Threads of a batch that finds the machine idle with nothing else to run; None: every one of ``cores``."""

    def encode(self, sample: FormattedSample) -> EncodedInput:
        """The backend's input for one sample (its token count is then known)."""
        ...

    def encode_shared(self, samples: list[FormattedSample]) -> list[EncodedInput]:
        """Inputs of candidates that share prompt and images (a /rank request), images preprocessed once."""
        ...

    async def run_batch(self, batch: list[EncodedInput]) -> list[float]:
        """Score encoded inputs; cancelling the call abandons them. (A process model gives each input its
        list of step logits instead of one float, here and in every scoring method below.)"""
        ...

    async def run_shared_prefix(self, batch: list[EncodedInput]) -> list[float]:
        """Score candidates that share their prompt and images, computing the shared part once."""
        ...

    async def score(self, samples: list[FormattedSample]) -> list[float]:
        """Raw rewards, one per sample, in order."""
        ...

    async def generate(self, questions: list[EncodedInput], params: GenerationParams) -> list[list[Generation]]:
        """A judge's generate mode: ``params.samples`` answers to each encoded question, in order; cancelling
        the call stops them."""
        ...

    def score_sync(self, samples: list[FormattedSample]) -> list[float]:
        """The same, blocking (offline scoring, evaluation, training's tools)."""
        ...

    async def warm_up(self) -> float | None:
        """One real request before serving; verifies the checkpoint's probe (returns its score)."""
        ...

    def info(self) -> dict[str, Any]:
        """Static facts for /info: model, backend, dtype, device, pixel bounds, checkpoint hash."""
        ...

    def health(self) -> bool:
        """Whether the engine can still serve."""
        ...

    def engine_metrics(self) -> bytes:
        """The engine's own Prometheus metrics (text format) for /metrics; empty when it has none."""
        ...

    async def close(self) -> None:
        """Release threads, processes and memory."""
        ...
