"""The model kinds: what a kind of reward model accepts, what its score means and what else it returns.

One definition, read by the checkpoint loader, both backends, ``/info``, ``/v1/models`` and the scoring
pipeline. A checkpoint declares its kind with one key of its ``config.json``, :data:`KIND_KEY` (absent:
``scalar``, so every checkpoint written before kinds existed keeps its meaning).

The response convention, the same for every kind:

- ``scores`` holds one number per item: the reward an RLHF caller uses (a scalar model's raw reward, a
  process model's aggregate of its step scores, a judge's rating). ``/get_reward`` and ``/classify``
  return it; ``/rank`` ranks by it.
- ``details`` (optional, aligned with the items) holds the kind's extra outputs, each named by
  :attr:`ModelKind.details` (step scores, head scores, ...). A kind with none leaves it out.
- A request field a model's kind does not accept is a 400 naming the field and the model
  (:func:`refuse_unaccepted`).

Torch-free: only JSON is read.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from vlreward.service.errors import ErrorKind, ServiceError

KIND_KEY = "vlreward_kind"
"""The ``config.json`` key that declares a checkpoint's kind."""

SAMPLE_FIELDS = frozenset({"id", "prompt", "response", "images", "image", "system", "messages"})
"""The fields of a Sample every kind accepts (the conversation being judged)."""


@dataclass(frozen=True)
class ModelKind:
    """One kind of reward model."""

    name: str
    score: str
    """What ``scores[i]`` means for this kind (shown by /info and /v1/models)."""
    item_fields: frozenset[str] = SAMPLE_FIELDS
    """The item fields (of /score items, /rank candidates) it accepts."""
    request_fields: frozenset[str] = frozenset()
    """Request fields beyond the common ones (model, timeout_s, on_error, truncate) that only this kind reads."""
    details: tuple[str, ...] = ()
    """The keys of ``details[i]`` it returns (empty: no ``details``)."""

    def describe(self) -> dict[str, object]:
        """The kind as /info and /v1/models show it."""
        return {"name": self.name, "score": self.score, "details": list(self.details)}


SCALAR = ModelKind(
    name="scalar",
    score="the reward head's raw output at the last token (higher is better; unbounded)",
)

KINDS: dict[str, ModelKind] = {kind.name: kind for kind in (SCALAR,)}
"""Every kind, by the name a checkpoint declares."""


class UnknownKind(ValueError):
    """A checkpoint declares a kind this version does not serve."""


def kind_named(name: str) -> ModelKind:
    """The kind called ``name``, or :class:`UnknownKind` naming the known ones."""
    try:
        return KINDS[name]
    except KeyError:
        raise UnknownKind(f"unknown model kind {name!r}; this version serves {', '.join(KINDS)}") from None


def checkpoint_kind(directory: str | Path) -> ModelKind:
    """The kind a checkpoint declares in its ``config.json`` (``scalar`` when it declares none)."""
    config = Path(directory) / "config.json"
    try:
        name = json.loads(config.read_text()).get(KIND_KEY, SCALAR.name)
    except (OSError, ValueError):
        return SCALAR  # no readable config: the loader reports that in its own words
    try:
        return kind_named(name)
    except UnknownKind as exc:
        raise UnknownKind(f"{directory}: {exc}") from None


def declare_kind(config: dict, kind: ModelKind) -> dict:
    """``config`` (a ``config.json`` mapping) declaring ``kind``."""
    return config | {KIND_KEY: kind.name}


def refuse_unaccepted(kind: ModelKind, model: str, item_fields: Iterable[tuple[str, str]] = (), request_fields=()):
    """A 400 for the first field the model's kind does not accept. ``item_fields``: (field, param) pairs
    of the fields items set (param: where it is, e.g. ``items[3].steps``); ``request_fields``: the
    kind-specific request fields the request set."""
    for name in request_fields:
        if name not in kind.request_fields:
            raise ServiceError(
                f"model {model!r} is a {kind.name} model; it does not accept `{name}`",
                kind=ErrorKind.INVALID_REQUEST,
                param=name,
            )
    for name, param in item_fields:
        if name not in kind.item_fields:
            raise ServiceError(
                f"model {model!r} is a {kind.name} model; its items do not accept `{name}`",
                kind=ErrorKind.INVALID_REQUEST,
                param=param,
            )
