"""Generative judges read from logits: what a judge checkpoint declares and how its verdict becomes a score.

A judge is a Qwen2.5-VL generative checkpoint (LM head kept) asked, through a prompt template, to rate a
response (pointwise) or to say which of two responses is better (pairwise). It is read in one forward
pass, at the token after the prompt: no sampling.

- Pointwise score = the expected rating under the next-token distribution restricted to the rating tokens.
- Pairwise P(first better) = p(first) / (p(first) + p(second)) over the two answer tokens.
- Debiased P(A > B) = (P(A first) + 1 - P(B first)) / 2, computed so that swapping A and B gives exactly
  1 - P (:func:`debiased`).

Only the rows of the LM head for the verdict tokens are ever computed (:meth:`JudgeDeclaration.verdict_tokens`:
the ratings in order, then the first and second answer tokens): the head of a served judge has that many
outputs. The declaration lives in the checkpoint's ``config.json`` (:data:`~vlreward.service.kinds.JUDGE_KEY`)
or, for a published judge whose files say nothing of ours, is named by the per-model ``judge`` setting (a
built-in declaration of ``service/judges/`` or a YAML file).

Torch-free: JSON, YAML and arithmetic.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vlreward.service.kinds import JUDGE_KEY, sigmoid

BUILT_IN = Path(__file__).with_name("judges")
"""The declarations shipped with vlreward (one YAML file each, named by its stem)."""

TEMPLATE_VARIABLES = {
    "pointwise": ("question", "response", "system"),
    "pairwise": ("question", "response_a", "response_b", "system"),
}
"""What each template is rendered with (``system``: the judged conversation's system text, or empty)."""


class JudgeError(ValueError):
    """A judge declaration that cannot be served; the message names what is wrong."""


@dataclass(frozen=True)
class JudgeDeclaration:
    """A judge's prompts and verdict tokens."""

    name: str
    source: str
    """Where the prompts come from (the published code or model card they were read in)."""
    pointwise: str | None = None
    """Jinja template of the pointwise question (None: the judge only compares)."""
    pairwise: str | None = None
    """Jinja template of the pairwise question (None: the judge only rates)."""
    ratings: Mapping[str, float] = field(default_factory=dict)
    """Rating token -> its value, each a single token of the tokenizer (pointwise)."""
    pair_tokens: tuple[str, str] = ("A", "B")
    """The answer tokens meaning "the first response is better" and "the second is" (pairwise)."""
    system: str | None = None
    """The judge's own system message (None: the chat template's default)."""
    pointwise_answer: str = ""
    """Text the judge's answer starts with, before the rating token (e.g. ``Rating: ``)."""
    pairwise_answer: str = ""
    """Text the judge's answer starts with, before the answer token."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "ratings", dict(self.ratings))
        object.__setattr__(self, "pair_tokens", tuple(self.pair_tokens))
        if self.pointwise is None and self.pairwise is None:
            raise JudgeError(f"judge {self.name!r} declares neither a pointwise nor a pairwise template")
        if (self.pointwise is not None) != (len(self.ratings) >= 2):
            raise JudgeError(f"judge {self.name!r}: a pointwise template and at least two rating tokens go together")
        if len(self.pair_tokens) != 2 or self.pair_tokens[0] == self.pair_tokens[1]:
            raise JudgeError(f"judge {self.name!r}: pair_tokens must be two different tokens")
        for form in ("pointwise", "pairwise"):
            template = getattr(self, form)
            if template is not None:
                try:
                    compiled(template)
                except Exception as exc:  # jinja2's TemplateSyntaxError and its kin
                    raise JudgeError(f"judge {self.name!r}: the {form} template does not parse: {exc}") from None

    @property
    def rates(self) -> bool:
        return self.pointwise is not None

    @property
    def compares(self) -> bool:
        return self.pairwise is not None

    def verdict_tokens(self) -> list[str]:
        """The tokens whose logits the judge's head computes, in its output order: ratings, then the pair's."""
        return [*self.ratings, *self.pair_tokens]

    def declaration(self) -> dict[str, Any]:
        """The declaration as ``config.json`` stores it."""
        return asdict(self) | {"pair_tokens": list(self.pair_tokens)}

    def describe(self) -> dict[str, Any]:
        """What /info shows."""
        return {
            "name": self.name,
            "source": self.source,
            "pointwise": self.rates,
            "pairwise": self.compares,
            "ratings": {token: value for token, value in self.ratings.items()},
            "pair_tokens": list(self.pair_tokens),
        }

    # -- reading the head's outputs -------------------------------------------------------------------

    def rating(self, logits: Sequence[float]) -> float:
        """The expected rating under the softmax of the rating tokens' logits."""
        n = len(self.ratings)
        return expected_value(logits[:n], list(self.ratings.values()))

    def prob_first(self, logits: Sequence[float]) -> float:
        """P(the first response is better) = p(first) / (p(first) + p(second))."""
        n = len(self.ratings)
        return sigmoid(logits[n] - logits[n + 1])

    def prob_a(self, questions: Sequence[Sequence[float]]) -> float:
        """P(A better) of a pair from its questions' verdict logits: A first alone, or A first then B first
        (debiased: :func:`debiased`)."""
        first = [self.prob_first(logits) for logits in questions]
        return first[0] if len(first) == 1 else debiased(*first)

    # -- prompts ------------------------------------------------------------------------------------

    def render(self, form: str, **values: str) -> str:
        """The ``form`` template (pointwise or pairwise) rendered with its variables."""
        template = getattr(self, form)
        if template is None:
            raise JudgeError(f"judge {self.name!r} has no {form} template")
        missing = set(TEMPLATE_VARIABLES[form]) - set(values)
        if missing:
            raise ValueError(f"{form} template values missing: {sorted(missing)}")
        return compiled(template).render(**values)

    def answer_prefix(self, form: str) -> str:
        return self.pointwise_answer if form == "pointwise" else self.pairwise_answer


@functools.lru_cache(maxsize=64)
def compiled(template: str) -> Any:
    """A template compiled once (every question of a judge renders the same one or two). Templates come
    with checkpoints: compiled in jinja2's immutable sandbox, as chat templates are."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    return ImmutableSandboxedEnvironment(keep_trailing_newline=True).from_string(template)


def expected_value(logits: Sequence[float], values: Sequence[float]) -> float:
    """Σ value_k softmax(logits)_k, computed stably."""
    top = max(logits)
    weights = [math.exp(logit - top) for logit in logits]
    return math.fsum(w * v for w, v in zip(weights, values, strict=True)) / math.fsum(weights)


DEBIAS_GRID = 2**52
"""Debiased probabilities are multiples of 1/2^52: there both P and 1 - P are exact doubles."""


def debiased(first_ab: float, first_ba: float) -> float:
    """P(A > B) from both orders: (P(A first) + 1 - P(B first)) / 2, where ``first_ab`` is P(first better)
    asked as (A, B) and ``first_ba`` asked as (B, A). Exactly antisymmetric: ``debiased(y, x) == 1 -
    debiased(x, y)`` (the difference x - y is, and rounding it to the grid half-to-even is symmetric)."""
    half_difference = round((first_ab - first_ba) * (DEBIAS_GRID / 2))
    return 0.5 + half_difference / DEBIAS_GRID


def orders_disagree(first_ab: float, first_ba: float) -> bool:
    """Whether asking in the two orders picks different responses (position bias: both orders chose the
    same position, not the same response)."""
    return (first_ab > 0.5) == (first_ba > 0.5) and first_ab != 0.5 and first_ba != 0.5


# -- where declarations come from -------------------------------------------------------------------------


def built_in_names() -> list[str]:
    return sorted(path.stem for path in BUILT_IN.glob("*.yaml"))


def read_declaration(source: str | Path) -> JudgeDeclaration:
    """A built-in declaration by name, or one from a YAML (or JSON) file."""
    import yaml

    path = BUILT_IN / f"{source}.yaml" if str(source) in built_in_names() else Path(source).expanduser()
    if not path.is_file():
        raise JudgeError(
            f"no judge declaration {str(source)!r}: name a built-in one ({', '.join(built_in_names())}) or a YAML file"
        )
    return from_mapping(yaml.safe_load(path.read_text()), str(path))


def from_mapping(data: Any, where: str) -> JudgeDeclaration:
    """A declaration from its mapping (a file's or ``config.json``'s), refusing unknown keys by name."""
    if not isinstance(data, dict):
        raise JudgeError(f"{where}: a judge declaration is a mapping")
    known = set(JudgeDeclaration.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise JudgeError(f"{where}: unknown judge declaration keys {unknown}; known: {sorted(known)}")
    try:
        return JudgeDeclaration(**data)
    except TypeError as exc:
        raise JudgeError(f"{where}: {exc}") from None


def declared_judge(directory: str | Path, setting: str | None = None) -> JudgeDeclaration | None:
    """A checkpoint's judge declaration: the ``judge`` setting's (a built-in name or a file) when given,
    else its ``config.json``'s; None for a checkpoint that is not a judge."""
    if setting:
        return read_declaration(setting)
    try:
        config = json.loads((Path(directory) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    declared = config.get(JUDGE_KEY)
    return None if declared is None else from_mapping(declared, f"{directory}/config.json")


def verdict_token_ids(declaration: JudgeDeclaration, tokenizer: Any) -> list[int]:
    """The token id of each verdict token, in the head's order. Refuses tokens that are not one token of
    the tokenizer, and tokens that would not stay one token after their form's answer prefix, naming them."""
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    forms = [("pointwise", list(declaration.ratings)), ("pairwise", list(declaration.pair_tokens))]
    ids: list[int] = []
    problems: list[str] = []
    for form, tokens in forms:
        prefix = declaration.answer_prefix(form) if getattr(declaration, form) is not None else ""
        prefix_ids = encode(prefix) if prefix else []
        for token in tokens:
            alone = encode(token)
            if len(alone) != 1:
                problems.append(f"{token!r} is {len(alone)} tokens")
            elif prefix and encode(prefix + token) != [*prefix_ids, alone[0]]:
                problems.append(f"{token!r} merges with the {form} answer prefix {prefix!r}")
            ids.append(alone[0] if alone else -1)
    if problems:
        raise JudgeError(
            f"judge {declaration.name!r}: each verdict token must stay one token of this tokenizer: "
            + "; ".join(problems)
            + " (a 1-10 scale, for one, needs another form: '10' is two tokens here)"
        )
    return ids
