"""A LoRA adapter served as a model of its own on its base model's backend.

The adapter shares the base's weights, threads and engine: its samples are the base's inputs tagged with
the adapter (the transformers backend applies its low-rank updates and head to their rows; see
:mod:`vlreward.service.model.lora`). It has its own name, metrics, probe and reference statistics (files
in the adapter's folder).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlreward.service.backends.base import Backend, EncodedInput
from vlreward.service.model.formatting import FormattedSample
from vlreward.service.model.lora import AdapterError
from vlreward.service.warmup import check_probe, probe_warm_up


class AdapterBackend:
    """The :class:`~vlreward.service.backends.base.Backend` of one adapter over a loaded base backend."""

    judge = None
    heads = None
    shared_prefix_runs = 0
    """Its shared prefixes count under its base (one counter per engine, not summed twice)."""

    def __init__(self, base: Backend, adapter_dir: str | Path, name: str):
        if not hasattr(base, "add_adapter"):
            raise AdapterError(f"the {base.name} backend does not serve LoRA adapters")
        self.base = base
        self.process = base.process
        """An adapter of a process model is a process model: its head is read at the base's step tags."""
        self.step_tag = base.step_tag
        self.model_dir = Path(adapter_dir)
        self.adapter = name
        self.slot = base.add_adapter(self.model_dir, name)

    def __getattr__(self, attribute: str) -> Any:  # the base's engine facts: name, dtype, lanes, limits, ...
        return getattr(self.base, attribute)

    def encode(self, sample: FormattedSample) -> EncodedInput:
        return self.base.for_adapter(self.base.encode(sample), self.slot)

    def encode_shared(self, samples: list[FormattedSample]) -> list[EncodedInput]:
        return [self.base.for_adapter(e, self.slot) for e in self.base.encode_shared(samples)]

    async def run_batch(self, batch: list[EncodedInput], **kwargs: Any) -> list[float]:
        return await self.base.run_batch(batch, **kwargs)

    async def run_shared_prefix(self, batch: list[EncodedInput], **kwargs: Any) -> list[float]:
        return await self.base.run_shared_prefix(batch, **kwargs)

    async def score(self, samples: list[FormattedSample]) -> list[float]:
        return await self.base.run_batch([self.encode(s) for s in samples])

    def score_sync(self, samples: list[FormattedSample]) -> list[float]:
        return self.base.score_encoded_sync([self.encode(s) for s in samples])

    async def warm_up(self) -> float | None:
        """The adapter's probe (its folder's) through the base, verified."""
        return await probe_warm_up(self)

    def check_probe(self) -> float | None:
        """The adapter's probe scored with :meth:`score_sync` and verified (None without one)."""
        return check_probe(self)

    def info(self) -> dict[str, Any]:
        return self.base.info() | {"adapter": {"path": str(self.model_dir), "base": str(self.base.model_dir)}}

    def engine_metrics(self) -> bytes:
        return b""  # the base's engine reports its own

    async def close(self) -> None:
        """Nothing of its own: the base owns the engine."""
