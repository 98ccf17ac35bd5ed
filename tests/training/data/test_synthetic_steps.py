"""Synthetic step-labelled solutions: labels as PRM800K and ProcessBench give them, errors at known and
varying steps, splits that share no item, and records that format as a process model reads them."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from vlreward.training.data.schema import StepRecord, read_records
from vlreward.training.data.synthetic_steps import CONCLUSION, build_synthetic_steps, solution


def test_a_solution_is_labelled_up_to_its_first_error_and_not_after():
    rng = random.Random(0)
    correct = solution(rng, "The circle is red.", "The circle is blue.", "none")
    assert correct.first_error == -1 and set(correct.labels) == {1.0}
    assert correct.steps[-2:] == ["The circle is red.", CONCLUSION.format(claim="The circle is red.")]
    claim = solution(rng, "The circle is red.", "The circle is blue.", "claim")
    assert claim.steps[claim.first_error] == "The circle is blue."
    assert claim.labels[: claim.first_error] == [1.0] * claim.first_error
    assert claim.labels[claim.first_error] == 0.0 and claim.labels[claim.first_error + 1 :] == [None]
    conclusion = solution(rng, "The circle is red.", "The circle is blue.", "conclusion")
    assert conclusion.steps[conclusion.first_error] == CONCLUSION.format(claim="The circle is blue.")
    assert conclusion.labels[-2:] == [1.0, 0.0] and conclusion.first_error == len(conclusion.steps) - 1


def test_the_built_splits_vary_the_first_error_share_no_item_and_format_as_steps(tmp_path, tiny_process):
    from vlreward.service.backends.transformers import TransformersBackend
    from vlreward.service.media import MediaPolicy
    from vlreward.service.prepare import prepare_sample

    train, heldout = build_synthetic_steps(tmp_path, {"hallucination": 9, "reasoning": 9}, {"reasoning": 6}, seed=3)
    train_records = list(read_records(train, StepRecord))
    heldout_records = list(read_records(heldout, StepRecord))
    assert len(train_records) == 3 * 18 and len(heldout_records) == 6  # training: every error place per item
    assert Counter(r.meta["error"] for r in train_records) == {"none": 18, "claim": 18, "conclusion": 18}
    assert Counter(r.meta["error"] for r in heldout_records) == {"none": 2, "claim": 2, "conclusion": 2}
    assert len({r.images[0] for r in train_records}) == 18  # the three solutions of an item share its image
    assert len({r.first_error for r in train_records if r.first_error >= 0}) >= 3  # the error moves
    for record in train_records:
        assert record.first_error == (-1 if record.meta["error"] == "none" else record.labels.index(0.0))
    drawn = lambda folder, records: {(folder / r.images[0]).read_bytes() for r in records}  # noqa: E731
    assert not drawn(train, train_records) & drawn(heldout, heldout_records)  # no item in both splits
    backend = TransformersBackend(tiny_process)
    record = train_records[0]
    formatted = prepare_sample(record.sample(root=train), backend.processor, MediaPolicy(media_root=train),
                               step_tag=backend.step_tag)  # fmt: skip
    assert formatted.text.count(backend.step_tag) == len(record.steps) and len(formatted.images) == 1
    assert len(backend.score_sync([formatted])[0]) == len(record.steps)


def test_a_record_needs_a_label_per_step_and_labels_in_0_1():
    with pytest.raises(ValueError, match="2 labels for 3 steps"):
        StepRecord(id="a", source="s", category="c", conversation=[], steps=["x", "y", "z"], labels=[1.0, 0.0])
    with pytest.raises(ValueError, match="0..1"):
        StepRecord(id="a", source="s", category="c", conversation=[], steps=["x"], labels=[2.0])
    soft = StepRecord(id="a", source="s", category="c", conversation=[], steps=["x", "y"], labels=[0.8, 0.3])
    assert soft.first_error == 1
