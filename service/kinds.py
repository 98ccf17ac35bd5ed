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
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    score="the reward head's raw output at the last token (higher is better; unbounded); a multi-head model's "
    "head the request names (`head`, default: the checkpoint's default head)",
    request_fields=frozenset({"head"}),
    details=("heads",),
)

GENERATE_FIELDS = ("mode", "samples", "temperature", "max_new_tokens", "seed", "critique")
"""The request fields of a judge's generate mode (/score, /compare)."""

PROCESS = ModelKind(
    name="process",
    score="the aggregate (min, last, mean or product) of the step scores; each step score is the head's "
    "activation at the step's tag, e.g. P(step correct)",
    item_fields=SAMPLE_FIELDS | {"steps"},
    request_fields=frozenset({"aggregate", "response_as_step"}),
    details=("step_scores",),
)

JUDGE = ModelKind(
    name="judge",
    score="a generative judge read from logits: the expected rating under its rating tokens' probabilities "
    "(/score, /rank); /compare gives P(A better than B) from its two answer tokens. In generate mode (mode: "
    "generate) the mean of its parsed ratings, and on /compare the share of its votes for A",
    request_fields=frozenset(GENERATE_FIELDS),
    details=("verdicts", "parse_failures", "critiques"),
)

KINDS: dict[str, ModelKind] = {kind.name: kind for kind in (SCALAR, PROCESS, JUDGE)}
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


def declare_kind(
    config: dict, kind: ModelKind, process: ProcessHead | None = None, judge: Any = None, heads: Heads | None = None
) -> dict:
    """``config`` (a ``config.json`` mapping) declaring ``kind`` (a process model: with its head; a judge:
    with its :class:`~vlreward.service.judge.JudgeDeclaration`; a multi-head scalar model: its :class:`Heads`)."""
    if (kind is PROCESS) != (process is not None):
        raise ValueError("a process model declares its ProcessHead, and only a process model does")
    if (kind is JUDGE) != (judge is not None):
        raise ValueError("a judge declares its JudgeDeclaration, and only a judge does")
    if heads is not None and kind is not SCALAR:
        raise ValueError("only a scalar model has several heads")
    declared = {k: v for k, v in config.items() if k != HEADS_KEY} | {KIND_KEY: kind.name}
    if heads is not None:
        declared[HEADS_KEY] = heads.declaration()
    if process is not None:
        declared[PROCESS_KEY] = process.declaration()
    if judge is not None:
        declared[JUDGE_KEY] = judge.declaration()
    return declared


JUDGE_KEY = "vlreward_judge"
"""The ``config.json`` key of a judge's declaration (:mod:`vlreward.service.judge`)."""


# -- multi-head models ---------------------------------------------------------------------------------

HEADS_KEY = "vlreward_heads"
"""The ``config.json`` key of a multi-head scalar model's :class:`Heads`."""


class HeadsError(ValueError):
    """A multi-head declaration that cannot be served (the message says why)."""


@dataclass(frozen=True)
class Heads:
    """A scalar model with K named linear heads on one backbone: one forward pass gives every head's score
    (``details[i].heads``); ``scores`` holds the head a request names, else :attr:`default`. The head's
    output ``k`` is ``names[k]`` (the checkpoint's ``id2label`` says the same, for vLLM's /classify)."""

    names: tuple[str, ...]
    default: str

    def __post_init__(self) -> None:
        if len(self.names) < 2 or len(set(self.names)) != len(self.names):
            raise HeadsError(f"a multi-head model has at least two distinct head names; got {list(self.names)}")
        bad = [n for n in self.names if not n or not n.replace("_", "").replace("-", "").isalnum()]
        if bad:
            raise HeadsError(f"head name {bad[0]!r}: letters, digits, '_' and '-' only")
        if self.default not in self.names:
            raise HeadsError(f"the default head {self.default!r} is not one of {list(self.names)}")

    def declaration(self) -> dict[str, Any]:
        return {"names": list(self.names), "default": self.default}

    def index(self, name: str | None) -> int:
        """The output of head ``name`` (None: the default's)."""
        return self.names.index(name or self.default)

    def named(self, values: Sequence[float]) -> dict[str, float]:
        """One item's head outputs by name."""
        return dict(zip(self.names, values, strict=True))


def parse_heads(spec: str) -> Heads:
    """``helpful,safe,correct`` (the first is the default) as :class:`Heads`."""
    names = tuple(name.strip() for name in spec.split(",") if name.strip())
    return Heads(names, names[0] if names else "")


def checkpoint_heads(directory: str | Path) -> Heads | None:
    """The :class:`Heads` a multi-head checkpoint declares (None: one head, or another kind)."""
    try:
        declared = json.loads((Path(directory) / "config.json").read_text()).get(HEADS_KEY)
    except (OSError, ValueError):
        return None
    if not declared:
        return None
    return Heads(tuple(declared["names"]), declared["default"])


# -- process models ------------------------------------------------------------------------------------

PROCESS_KEY = "vlreward_process"
"""The ``config.json`` key of a process model's :class:`ProcessHead`."""

DEFAULT_STEP_TAG = "<|quad_end|>"
"""The step tag of the process models vlreward trains: a special token of the Qwen2.5-VL tokenizer that
normal text never contains (the grounding quads it closes are not in Qwen2.5-VL's output format)."""


def sigmoid(logit: float) -> float:
    """The logistic function, without overflow for large negative logits."""
    if logit >= 0:
        return 1.0 / (1.0 + math.exp(-logit))
    return math.exp(logit) / (1.0 + math.exp(logit))


ACTIVATIONS: dict[str, Callable[[float], float]] = {"sigmoid": sigmoid, "none": lambda logit: logit}
"""How a process head's logit at a step tag becomes its step score."""


def _product(scores: Sequence[float]) -> float:
    return math.prod(scores)


AGGREGATES: dict[str, Callable[[Sequence[float]], float]] = {
    "min": min,
    "last": lambda scores: scores[-1],
    "mean": lambda scores: math.fsum(scores) / len(scores),
    "product": _product,
}
"""How a solution's step scores become its one ``scores[i]``."""


@dataclass(frozen=True)
class ProcessHead:
    """What a process model's checkpoint declares: the tag every step ends with, the activation of the
    head's logit there, and the aggregate ``scores[i]`` uses unless a request asks for another."""

    step_tag: str = DEFAULT_STEP_TAG
    activation: str = "sigmoid"
    aggregate: str = "min"

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise UnknownKind(f"unknown step activation {self.activation!r}; one of {', '.join(ACTIVATIONS)}")
        if self.aggregate not in AGGREGATES:
            raise UnknownKind(f"unknown aggregate {self.aggregate!r}; one of {', '.join(AGGREGATES)}")

    def declaration(self) -> dict[str, Any]:
        return {"step_tag": self.step_tag, "activation": self.activation, "aggregate": self.aggregate}

    def step_scores(self, logits: Sequence[float]) -> list[float]:
        activate = ACTIVATIONS[self.activation]
        return [activate(logit) for logit in logits]

    def aggregate_of(self, step_scores: Sequence[float], aggregate: str | None = None) -> float:
        return AGGREGATES[aggregate or self.aggregate](step_scores)


def process_head(directory: str | Path) -> ProcessHead | None:
    """The :class:`ProcessHead` a process checkpoint declares (None for other kinds)."""
    if checkpoint_kind(directory) is not PROCESS:
        return None
    declared = json.loads((Path(directory) / "config.json").read_text()).get(PROCESS_KEY) or {}
    return ProcessHead(**declared)


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
