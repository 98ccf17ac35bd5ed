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

    def info(self) -> dict[str, Any]:
        """Static facts for /info: model, backend, dtype, device, pixel bounds."""
        ...

    def health(self) -> bool:
        """Whether the engine can still serve."""
        ...

    async def close(self) -> None:
        """Release threads, processes and memory."""
        ...
