"""The judge declaration and how a judge's verdict logits become scores: the expected rating, P(first
better), the exactly antisymmetric debiased probability, and the refusals that name what is wrong."""

from __future__ import annotations

import math
import random

import pytest

from vlreward.service.judge import (
    JudgeDeclaration,
    JudgeError,
    built_in_names,
    debiased,
    declared_judge,
    from_mapping,
    orders_disagree,
    read_declaration,
    verdict_token_ids,
)

GENERIC = read_declaration("generic")


def test_the_expected_rating_weighs_each_rating_by_its_probability():
    logits = [0.0, math.log(3.0), -50.0, -50.0, -50.0, 0.0, 0.0]  # p(1) = 1/4, p(2) = 3/4
    assert GENERIC.rating(logits) == pytest.approx(1.75, abs=1e-12)
    assert GENERIC.rating([0.0] * 7) == pytest.approx(3.0, abs=1e-12)  # uniform: the scale's middle
    assert 1.0 <= GENERIC.rating([1e4, -1e4, 0, 0, 0, 0, 0]) <= 5.0  # no overflow at extreme logits


def test_pairwise_probability_is_the_first_answer_tokens_share():
    logits = [0.0] * 5 + [math.log(4.0), 0.0]  # p(first) : p(second) = 4 : 1
    assert GENERIC.prob_first(logits) == pytest.approx(0.8, abs=1e-12)


def test_debiased_probabilities_are_exactly_antisymmetric_and_average_the_orders():
    rng = random.Random(0)
    values = [rng.random() for _ in range(2000)] + [0.0, 1.0, 0.5, 1e-300, 1 - 1e-16]
    for x, y in zip(values, reversed(values), strict=True):
        p = debiased(x, y)
        assert debiased(y, x) == 1.0 - p  # exactly, not approximately
        assert p + debiased(y, x) == 1.0
        assert p == pytest.approx((x + 1.0 - y) / 2.0, abs=1e-15)
    assert debiased(0.7, 0.7) == 0.5  # the same preference for the first position in both orders: no signal


def test_orders_disagree_when_both_orders_pick_the_same_position():
    assert orders_disagree(0.9, 0.8)  # A first: first wins; B first: first wins -> position, not response
    assert not orders_disagree(0.9, 0.2)  # A wins both times
    assert not orders_disagree(0.5, 0.9)  # a tie in one order picks no position


@pytest.mark.parametrize("name", built_in_names())
def test_every_built_in_declaration_renders_and_its_tokens_are_single_tokens_of_qwens_tokenizer(name, tiny_judge):
    from transformers import AutoTokenizer

    declaration = read_declaration(name)
    assert declaration.source
    tokenizer = AutoTokenizer.from_pretrained(tiny_judge)  # our tiny tokenizer pre-tokenises as Qwen's does
    ids = verdict_token_ids(declaration, tokenizer)
    assert len(ids) == len(declaration.verdict_tokens()) and min(ids) >= 0
    if declaration.compares:
        text = declaration.render("pairwise", question="Q?", response_a="first", response_b="second", system="")
        assert text.index("first") < text.index("second")
    if declaration.rates:
        assert "the answer" in declaration.render("pointwise", question="Q?", response="the answer", system="")


def test_tokens_that_are_not_one_token_are_refused_by_name(tiny_judge):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_judge)
    ten_point = JudgeDeclaration(
        name="ten", source="test", pointwise="{{ question }} {{ response }}",
        ratings={str(i): i for i in range(1, 11)}, pair_tokens=("is", "B"), pairwise_answer="Answer: ",
        pairwise="{{ response_a }} {{ response_b }}",
    )  # fmt: skip
    with pytest.raises(JudgeError) as refused:
        verdict_token_ids(ten_point, tokenizer)
    message = str(refused.value)
    assert "'10' is 2 tokens" in message
    assert "'is' merges with the pairwise answer prefix 'Answer: '" in message  # " is" is one token
    assert "'9'" not in message


@pytest.mark.parametrize(
    ("mapping", "words"),
    [
        ({"name": "x", "source": "s"}, "neither a pointwise nor a pairwise"),
        ({"name": "x", "source": "s", "pointwise": "{{ response }}"}, "at least two rating tokens"),
        ({"name": "x", "source": "s", "pairwise": "{{ response_a }", "pair_tokens": ["1", "2"]}, "does not parse"),
        ({"name": "x", "source": "s", "pairwise": "p", "pair_tokens": ["1", "1"]}, "two different tokens"),
        ({"name": "x", "source": "s", "pairwise": "p", "temperature": 1}, "unknown judge declaration keys ['temperature']"),
        (["not", "a", "mapping"], "is a mapping"),
    ],
)  # fmt: skip
def test_a_bad_declaration_is_refused_saying_what_is_wrong(mapping, words):
    with pytest.raises(JudgeError, match="") as refused:
        from_mapping(mapping, "judge.yaml")
    assert words in str(refused.value)


def test_the_setting_names_a_built_in_declaration_or_a_file_and_the_config_declares_the_rest(tmp_path, tiny_judge):
    import yaml

    assert declared_judge(tiny_judge) == GENERIC  # what build_judge_checkpoint wrote into config.json
    assert declared_judge(tiny_judge, "unifiedreward-qwen").name == "unifiedreward-qwen"
    own = tmp_path / "mine.yaml"
    own.write_text(yaml.safe_dump(GENERIC.declaration() | {"name": "mine"}))
    assert declared_judge(tmp_path, str(own)).name == "mine"
    assert declared_judge(tmp_path) is None  # no config.json: not a judge
    with pytest.raises(JudgeError, match="name a built-in one"):
        declared_judge(tmp_path, "no-such-judge")


# -- generate mode: the parse rule and the vote ------------------------------------------------------------


def test_a_generated_verdict_is_the_last_match_of_the_declared_rule():
    from vlreward.service.judge import NO_VERDICT, TRUNCATED, UNKNOWN_VERDICT, Verdict

    judge = read_declaration("generic")
    assert judge.parse_verdict("pointwise", "Rating: 2 at first.\nRating: **4**.") == Verdict(4.0, "4", None)
    assert judge.parse_verdict("pairwise", "Better response: 2") == Verdict(0.0, "2", None)
    assert judge.parse_verdict("pointwise", "Rating: 9").failure == UNKNOWN_VERDICT
    assert judge.parse_verdict("pointwise", "I think it is fine.").failure == NO_VERDICT
    assert judge.parse_verdict("pointwise", "I think it", truncated=True).failure == TRUNCATED
    custom = from_mapping(judge.declaration() | {"pairwise_verdict": r"\[\[(\w)\]\]", "pair_tokens": ["A", "B"]}, "t")
    assert custom.parse_verdict("pairwise", "so [[B]]") == Verdict(0.0, "B", None)


def test_generate_mode_questions_open_with_the_generate_prefix_and_keep_the_rule():
    judge = from_mapping(read_declaration("generic").declaration() | {"generate_prefix": "<think>\n"}, "t")
    writer = judge.for_generation()
    assert writer.pointwise_answer == writer.pairwise_answer == "<think>\n"
    assert writer.verdict_pattern("pointwise").pattern == judge.verdict_pattern("pointwise").pattern


@pytest.mark.parametrize(
    ("change", "message"),
    [({"pointwise_verdict": "(unclosed"}, "does not compile"), ({"pairwise_verdict": "no group"}, "exactly one group"),
     ({"mode": "sample"}, "one of logits, generate"), ({"max_new_tokens": 0}, "at least 1")],
)  # fmt: skip
def test_a_bad_generate_declaration_is_refused(change, message):
    with pytest.raises(JudgeError, match=message):
        from_mapping(read_declaration("generic").declaration() | change, "t")


def test_the_vote_is_the_mean_rating_or_the_share_for_a_with_flipped_orders():
    from vlreward.service.judge import Verdict, vote

    ratings = [Verdict(5.0, "5", None), Verdict(None, None, "no_verdict"), Verdict(2.0, "2", None)]
    assert vote("pointwise", ratings) == 3.5
    first, second = Verdict(1.0, "1", None), Verdict(0.0, "2", None)
    # A first: "1" votes A; B first: "2" (the second response, A) votes A too.
    assert vote("pairwise", [first, second, second], [False, True, True]) == 1.0
    assert vote("pairwise", [first, first], [False, True]) == 0.5
    assert vote("pairwise", [Verdict(None, None, "truncated")]) is None
