"""The Backend protocol every scoring engine implements."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from service.model.formatting import FormattedSample


@runtime_checkable
class Backend(Protocol):
    """Scores formatted samples. ``processor`` owns the chat template and the image pixel bounds."""

    name: str
    processor: Any

    async def score(self, samples: list[FormattedSample]) -> list[float]:
        """Raw rewards, one per sample, in order."""
        ...

    def encode(self, sample: FormattedSample) -> Any:
        """The backend's input for one sample; has ``num_tokens`` and ``num_images`` (for limits)."""
        ...

    def encode_shared(self, samples: list[FormattedSample]) -> list[Any]:
        """Inputs of candidates that share prompt and images (a /rank request)."""
        ...

    async def run_batch(self, batch: list[Any]) -> list[float]:
        """Score encoded inputs; cancelling the call abandons them."""
        ...

    async def warm_up(self) -> float | None:
        """One real request before serving; verifies the checkpoint's probe (returns its score)."""
        ...

    def info(self) -> dict[str, Any]:
        """Static facts for /info: model, backend, dtype, device, pixel bounds."""
        ...

    def health(self) -> bool:
        """Whether the engine can still serve."""
        ...

    async def close(self) -> None:
        """Release threads, processes and memory."""
        ...
