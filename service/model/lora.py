"""LoRA reward adapters: several reward models as low-rank adapters (each with its own head) over one frozen base.

An adapter is a folder in peft's format, what ``vlreward train --lora`` writes (peft's ``save_pretrained``)
and vLLM's LoRA support loads:

- ``adapter_config.json``: ``peft_type: LORA``, ``r``, ``lora_alpha`` (``use_rslora``), ``target_modules``
  and ``modules_to_save: ["score"]`` (the adapter's own reward head);
- ``adapter_model.safetensors``: ``base_model.model.<module>.lora_A.weight`` [r, in] and ``.lora_B.weight``
  [out, r] per adapted linear layer of the base, and ``base_model.model.score.weight`` [1, hidden] (+ bias).

Served with its base, an adapter changes each adapted layer to W x + s B A x (s = lora_alpha / r, or
lora_alpha / sqrt(r) with rsLoRA) and reads its own head: the merged model's scores, computed without
merging. Several adapters share the base's weights and its forward passes: :class:`LoraSet` wraps each
adapted layer once, and every row of a batch names its adapter (:func:`rows_adapters`), so one batch can
mix them. DoRA and adapters of the vision tower's fused layers are refused at load.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
HEAD_MODULE = "score"
LANGUAGE_MODEL = "model.language_model."
"""The modules an adapter may adapt: the language model's (the vision tower's rows are patches, not samples)."""
NO_ADAPTER = -1
"""A row's slot when it runs on the base alone."""

_ACTIVE: ContextVar[int | torch.Tensor | None] = ContextVar("vlreward_lora_rows", default=None)
"""The adapter slot of every row of the batch the calling thread runs: one slot for all rows, or a tensor
of one per row (:data:`NO_ADAPTER`: the base); None: no adapter."""


class AdapterError(ValueError):
    """An adapter that cannot be served on this base (the message says what and where)."""


def is_adapter(directory: str | Path) -> bool:
    """Whether ``directory`` holds a LoRA adapter (peft's ``adapter_config.json``)."""
    return (Path(directory) / ADAPTER_CONFIG).is_file()


@dataclass
class LoraAdapter:
    """One adapter's weights, read from its folder."""

    name: str
    scale: float
    """s in W x + s B A x."""
    layers: dict[str, tuple[torch.Tensor, torch.Tensor]]
    """Module name in the reward model -> (A [r, in], B [out, r])."""
    head_weight: torch.Tensor
    """[1, hidden], float32."""
    head_bias: torch.Tensor | None = None


def read_adapter(directory: str | Path, name: str | None = None) -> LoraAdapter:
    """An adapter folder's weights (refused, naming what, when it is not a LoRA reward adapter)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    config = json.loads((directory / ADAPTER_CONFIG).read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"{directory}: peft_type {config.get('peft_type')!r}; a reward adapter is LORA")
    if config.get("use_dora"):
        raise AdapterError(f"{directory}: DoRA adapters are not served")
    if HEAD_MODULE not in (config.get("modules_to_save") or []):
        raise AdapterError(f"{directory}: a reward adapter carries its head (modules_to_save: [{HEAD_MODULE!r}])")
    rank, alpha = int(config["r"]), float(config.get("lora_alpha", config["r"]))
    scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    tensors = load_file(directory / ADAPTER_WEIGHTS)
    layers: dict[str, list] = {}
    head: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        module = key.removeprefix(PEFT_PREFIX)
        if module.startswith(HEAD_MODULE + "."):
            head[module.removeprefix(HEAD_MODULE + ".").removeprefix("modules_to_save.default.")] = tensor
            continue
        for part, slot in ((".lora_A.weight", 0), (".lora_B.weight", 1)):
            if module.endswith(part):
                layers.setdefault(module.removesuffix(part), [None, None])[slot] = tensor
                break
        else:
            raise AdapterError(f"{directory}: tensor {key!r} is neither a LoRA weight nor the head")
    incomplete = [module for module, (a, b) in layers.items() if a is None or b is None]
    if incomplete or "weight" not in head:
        raise AdapterError(f"{directory}: incomplete adapter ({incomplete[:1] or 'no head weight'})")
    return LoraAdapter(
        name=name or directory.name,
        scale=scale,
        layers={m: (a.float(), b.float()) for m, (a, b) in layers.items()},
        head_weight=head["weight"].float(),
        head_bias=None if "bias" not in head else head["bias"].float(),
    )


@contextlib.contextmanager
def rows_adapters(slots: int | torch.Tensor | None) -> Iterator[None]:
    """Within the block, on this thread, the batch's rows run with these adapter slots (see :data:`_ACTIVE`)."""
    token = _ACTIVE.set(slots)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def row_slots(slots: list[int]) -> int | torch.Tensor | None:
    """The slots of a batch's rows as :func:`rows_adapters` takes them: one int when every row has the same,
    None when no row has an adapter."""
    if all(slot == NO_ADAPTER for slot in slots):
        return None
    if len(set(slots)) == 1:
        return slots[0]
    return torch.tensor(slots, dtype=torch.long)


class LoraLinear(nn.Module):
    """A base linear layer plus the low-rank updates of the adapters that adapt it, applied to the rows that
    name them (the base's weights stay as they are)."""

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.base = base
        self.updates: dict[int, tuple[torch.Tensor, torch.Tensor, float]] = {}
        """Adapter slot -> (A, B, s) in the base weight's dtype and device."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        slots = _ACTIVE.get()
        if slots is None or not self.updates:
            return out
        if isinstance(slots, int):
            update = self.updates.get(slots)
            return out if update is None else out + _delta(x, *update)
        out = out.clone()
        for slot, update in self.updates.items():
            rows = (slots == slot).nonzero().squeeze(-1).to(x.device)
            if len(rows):
                out[rows] += _delta(x[rows], *update)
        return out


def _delta(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    return (x @ a.T) @ b.T * scale


class LoraSet:
    """The adapters served on one reward model: slot k is the k-th added. Adapted layers are wrapped once
    (:class:`LoraLinear`); each adapter's head is read for the rows that name it (:meth:`heads`)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.adapters: list[LoraAdapter] = []
        self.wrapped: dict[str, LoraLinear] = {}

    def add(self, adapter: LoraAdapter) -> int:
        """Load ``adapter`` onto the model; its slot. Refuses a layer the base lacks or a shape that differs."""
        modules = dict(self.model.named_modules())
        outputs, hidden = self.model.score.weight.shape
        if outputs != 1 or getattr(self.model, "head_index", None) is not None:
            raise AdapterError(f"adapter {adapter.name!r}: adapters are served on a one-head scalar or process base")
        if adapter.head_weight.shape != (1, hidden):
            raise AdapterError(f"adapter {adapter.name!r}: its head is {tuple(adapter.head_weight.shape)}, "
                               f"the base's hidden size is {hidden} (one output)")  # fmt: skip
        for name, (a, b) in adapter.layers.items():
            if not name.startswith(LANGUAGE_MODEL):  # rows are a batch's only in the language model
                raise AdapterError(f"adapter {adapter.name!r} adapts {name!r}; reward adapters adapt the language "
                                   f"model's linear layers ({LANGUAGE_MODEL}*)")  # fmt: skip
            layer = self.wrapped.get(name) or modules.get(name)
            base = layer.base if isinstance(layer, LoraLinear) else layer
            if not isinstance(base, nn.Linear):
                raise AdapterError(f"adapter {adapter.name!r}: the base has no linear layer {name!r}")
            if a.shape[1] != base.in_features or b.shape[0] != base.out_features or a.shape[0] != b.shape[1]:
                raise AdapterError(f"adapter {adapter.name!r}: {name} is A {tuple(a.shape)}, B {tuple(b.shape)}; "
                                   f"the layer is {base.out_features}x{base.in_features}")  # fmt: skip
        slot = len(self.adapters)
        for name, (a, b) in adapter.layers.items():
            if name not in self.wrapped:
                parent, _, child = name.rpartition(".")
                self.wrapped[name] = LoraLinear(modules[name])
                setattr(self.model.get_submodule(parent), child, self.wrapped[name])
            weight = self.wrapped[name].base.weight
            self.wrapped[name].updates[slot] = (
                a.to(weight.device, weight.dtype),
                b.to(weight.device, weight.dtype),
                adapter.scale,
            )
        self.adapters.append(adapter)
        return slot

    def heads(self, out: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """The base head's outputs ``out`` [rows, 1] with the rows that name an adapter read by its head."""
        slots = _ACTIVE.get()
        if slots is None:
            return out
        per_row = slots if isinstance(slots, torch.Tensor) else torch.full((len(hidden),), slots)
        out = out.clone()
        for slot in per_row.unique().tolist():
            if slot == NO_ADAPTER:
                continue
            rows = (per_row == slot).nonzero().squeeze(-1).to(hidden.device)
            adapter = self.adapters[slot]
            value = hidden[rows].float() @ adapter.head_weight.to(hidden.device).T
            if adapter.head_bias is not None:
                value = value + adapter.head_bias.to(hidden.device)
            out[rows] = value.to(out.dtype)
        return out


def lora_set(model: Any) -> LoraSet:
    """The model's :class:`LoraSet` (made on first use)."""
    if getattr(model, "lora", None) is None:
        model.lora = LoraSet(model)
    return model.lora
