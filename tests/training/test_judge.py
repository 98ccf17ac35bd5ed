"""Training a judge: the questions a pair becomes, the loss on the verdict token over its form's tokens,
and a trained judge's export as a generative checkpoint that reads as it was trained."""

from __future__ import annotations

import math

import pytest
import torch

from vlreward.service.judge import read_declaration
from vlreward.training.data.schema import PreferenceRecord, Turn
from vlreward.training.judge import POINTWISE, judge_examples, judge_loss, nearest_rating

GENERIC = read_declaration("generic")


def test_the_loss_is_cross_entropy_over_the_questions_own_verdict_tokens():
    ratings = len(GENERIC.ratings)  # 5 ratings, then the two answers
    logits = torch.zeros(2, 7)
    logits[0, 5] = math.log(3.0)  # pairwise row: p(first) = 3/4
    logits[1, 2] = math.log(4.0)  # pointwise row: p(rating 3) = 4/8 (the answers' logits do not count)
    logits[1, 6] = 100.0
    targets = torch.tensor([5, 2])
    pointwise = torch.tensor([False, True])
    loss, accuracy = judge_loss(logits, targets, pointwise, ratings)
    assert loss.item() == pytest.approx((-math.log(3 / 4) - math.log(4 / 8)) / 2, abs=1e-6)
    assert accuracy.item() == 1.0  # the one pairwise row is answered right


def test_a_rated_pair_is_asked_in_both_orders_and_rated_and_a_tie_only_rated(tiny_judge, tmp_path):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_judge)
    record = PreferenceRecord(id="r", source="test", category="general", conversation=[Turn(role="user", content="Hi?")],
                              chosen="Hello.", rejected="Go away.", scores={"chosen": 4.6, "rejected": 1.2})  # fmt: skip
    examples = judge_examples(record, tmp_path, processor, GENERIC)
    assert [(e.form, e.target) for e in examples] == [("pairwise", 5), ("pairwise", 6), (POINTWISE, 4), (POINTWISE, 0)]
    text = processor.tokenizer.decode(examples[0].encoded.input_ids)
    assert text.index("Hello.") < text.index("Go away.") and text.endswith("Better response: ")
    tie = record.model_copy(update={"tie": True})
    assert [e.form for e in judge_examples(tie, tmp_path, processor, GENERIC)] == [POINTWISE, POINTWISE]
    assert nearest_rating(GENERIC, 2.5) == 1 and nearest_rating(GENERIC, 9) == 4


def test_an_exported_judge_reads_as_the_trained_model_did(tiny_base, tmp_path):
    """The trained head's rows go back into the LM head they came from: the exported checkpoint, served,
    gives the trained model's verdict logits (one row for a digit that is a rating and an answer)."""
    from vlreward.service.backends.transformers import TransformersBackend
    from vlreward.training.judge import judge_model_from_base, save_judge_model

    model, processor = judge_model_from_base(tiny_base, GENERIC)
    assert model.score.weight.shape[0] == 5  # the digits 1-5; the answers 1 and 2 share their rows
    with torch.no_grad():
        model.score.weight.add_(torch.randn(model.score.weight.shape, generator=torch.Generator().manual_seed(0)))
    save_judge_model(model, processor, tmp_path / "judge", GENERIC, tiny_base)
    served = TransformersBackend(tmp_path / "judge", dtype="float32", device="cpu")
    question = served.format_request_sample({"prompt": "Hi?", "response": "Hello."})
    expected = model.score_batch([served.encode(question)])[0]
    assert served.score_sync([question])[0] == pytest.approx(expected, abs=1e-5)
