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
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
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
    mode: str = "logits"
    """How requests that do not say are answered: ``logits`` (the verdict token read in one forward pass) or
    ``generate`` (the judge writes a critique, then its verdict, which is parsed)."""
    generate_prefix: str = ""
    """Generate mode: text the judge's answer is opened with (e.g. ``<think>\\n`` for an R1-style judge)."""
    max_new_tokens: int = 256
    """Generate mode: new tokens when the request does not say (within the server's limit)."""
    pointwise_verdict: str | None = None
    """Generate mode: the regular expression whose first group is the rating token, the last match in the
    text counting (None: the pointwise answer prefix, then the token: ``Rating:\\s*(\\S+)``)."""
    pairwise_verdict: str | None = None
    """Generate mode: the same for the answer token (None: from the pairwise answer prefix)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "ratings", dict(self.ratings))
        object.__setattr__(self, "pair_tokens", tuple(self.pair_tokens))
        if self.mode not in MODES:
            raise JudgeError(f"judge {self.name!r}: mode is {self.mode!r}; one of {', '.join(MODES)}")
        if self.max_new_tokens < 1:
            raise JudgeError(f"judge {self.name!r}: max_new_tokens must be at least 1")
        for form in ("pointwise", "pairwise"):
            try:
                pattern = self.verdict_pattern(form)
            except re.error as exc:
                raise JudgeError(f"judge {self.name!r}: the {form} verdict pattern does not compile: {exc}") from None
            if pattern.groups != 1:
                raise JudgeError(f"judge {self.name!r}: the {form} verdict pattern needs exactly one group")
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
            "mode": self.mode,
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

    # -- generate mode ------------------------------------------------------------------------------

    def verdict_pattern(self, form: str) -> re.Pattern[str]:
        """The rule a generated answer's verdict is parsed by (see ``pointwise_verdict``)."""
        declared = self.pointwise_verdict if form == "pointwise" else self.pairwise_verdict
        if declared is None:
            declared = re.escape(self.answer_prefix(form).strip()) + r"\s*(\S+)"
        return _compiled_pattern(declared)

    def for_generation(self) -> JudgeDeclaration:
        """The declaration whose questions open the answer for generate mode (with ``generate_prefix``
        instead of the verdict's answer prefix); parse verdicts with ``self``."""
        return replace(
            self,
            pointwise_answer=self.generate_prefix,
            pairwise_answer=self.generate_prefix,
            pointwise_verdict=self.verdict_pattern("pointwise").pattern,
            pairwise_verdict=self.verdict_pattern("pairwise").pattern,
        )

    def parse_verdict(self, form: str, text: str, truncated: bool = False) -> Verdict:
        """A generated answer's verdict: the last match of the form's pattern, its group one of the form's
        verdict tokens (surrounding brackets, quotes, asterisks and final punctuation ignored). Pointwise:
        the rating's value; pairwise: 1.0 when the first response is better, 0.0 when the second."""
        matches = list(self.verdict_pattern(form).finditer(text))
        if not matches:
            return Verdict(None, None, TRUNCATED if truncated else NO_VERDICT)
        token = matches[-1].group(1).strip().strip(VERDICT_DECORATION)
        if form == "pointwise":
            if token in self.ratings:
                return Verdict(float(self.ratings[token]), token, None)
        elif token in self.pair_tokens:
            return Verdict(1.0 if token == self.pair_tokens[0] else 0.0, token, None)
        return Verdict(None, token, UNKNOWN_VERDICT)


MODES = ("logits", "generate")
"""How a judge answers: its verdict token's distribution read in one pass, or a generated critique + verdict."""

NO_VERDICT, UNKNOWN_VERDICT, TRUNCATED = "no_verdict", "unknown_verdict", "truncated"
PARSE_FAILURES = (NO_VERDICT, UNKNOWN_VERDICT, TRUNCATED)
"""Why a generated answer gave no verdict: the pattern never matched; it matched a token that is not one of
the form's; it never matched and the answer stopped at its token limit."""
VERDICT_DECORATION = "[](){}*\"'`.,;:!"


@dataclass(frozen=True)
class Verdict:
    """One generated answer's parsed verdict (``value`` None: ``failure`` says why)."""

    value: float | None
    token: str | None
    failure: str | None


def vote(form: str, verdicts: Sequence[Verdict], flipped: Sequence[bool] = ()) -> float | None:
    """The score of an item's parsed verdicts (None when none parsed). Pointwise: their mean rating.
    Pairwise: the share of votes for A (a majority for A is > 0.5; ``flipped[k]``: verdict k was asked
    with B first, so its 1.0 is a vote for B)."""
    flips = list(flipped) or [False] * len(verdicts)
    pairs = zip(verdicts, flips, strict=True)
    values = [v.value if not flip else 1.0 - v.value for v, flip in pairs if v.value is not None]
    if not values:
        return None
    return math.fsum(values) / len(values)


@functools.lru_cache(maxsize=64)
def _compiled_pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


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


# -- generate mode: what a backend is asked and answers ----------------------------------------------------


@dataclass(frozen=True)
class GenerationParams:
    """How a judge's answers are generated: ``samples`` answers per question, each at most
    ``max_new_tokens``; ``temperature`` 0 is greedy; with ``seed`` the answers are reproducible."""

    samples: int = 1
    temperature: float = 0.0
    max_new_tokens: int = 256
    seed: int | None = None

    def per_question(self, answers: list) -> list[list]:
        """Answers listed question by question (``samples`` each) as one list per question."""
        return [answers[start : start + self.samples] for start in range(0, len(answers), self.samples)]

    def sample_seed(self, question: int, sample: int) -> int | None:
        """The seed of one answer (None: unseeded), distinct for every question and sample of a request."""
        if self.seed is None:
            return None
        return (self.seed * 1_000_003 + question * 1_009 + sample) % 2**31


@dataclass(frozen=True)
class Generation:
    """One generated answer: its text, whether it stopped at ``max_new_tokens``, and its token count."""

    text: str
    truncated: bool
    tokens: int
