"""The process objective: binary cross-entropy where a step is labelled, the PRM metrics computed by hand,
and a short training run whose exported process model serves the scores the trainer measured."""

from __future__ import annotations

import pytest
import torch

from vlreward.service.kinds import ProcessHead
from vlreward.training.config import StageConfig, TrainConfig
from vlreward.training.data.schema import StepRecord, read_records
from vlreward.training.data.synthetic_steps import build_synthetic_steps
from vlreward.training.model import reward_model_from_base
from vlreward.training.steps import StepDataset, first_error, score_solutions, step_loss, step_metrics
from vlreward.training.trainer import StepTrainer


def record(labels, category="c") -> StepRecord:
    return StepRecord(id="r", source="s", category=category, conversation=[], steps=["x"] * len(labels), labels=labels)


def test_the_loss_is_binary_cross_entropy_over_the_labelled_steps_only():
    logits = torch.tensor([[2.0, -1.0, 5.0], [0.5, 0.0, 0.0]])
    labels = torch.tensor([[1.0, 0.0, float("nan")], [0.25, float("nan"), float("nan")]])
    loss, right = step_loss(logits, labels)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1.0, 0.0, 0.25])
    )
    assert torch.isclose(loss, expected) and right.item() == pytest.approx(2 / 3)


def test_ranks_with_different_numbers_of_labelled_steps_average_to_the_whole_batchs_loss():
    logits = torch.tensor([[2.0, -1.0, 5.0], [0.5, 0.0, 0.0], [-0.3, 1.5, -2.0]])
    labels = torch.tensor(
        [[1.0, 0.0, float("nan")], [0.25, float("nan"), float("nan")], [0.0, float("nan"), float("nan")]]
    )
    whole, whole_right = step_loss(logits, labels)
    total = (~torch.isnan(labels)).sum()  # 4: rank 0 holds 2 rows with 3 labelled steps, rank 1 one row with 1
    ranks = [step_loss(logits[part], labels[part], total, processes=2) for part in (slice(0, 2), slice(2, 3))]
    assert torch.isclose((ranks[0][0] + ranks[1][0]) / 2, whole)  # what DDP averages and the trainer logs
    assert torch.isclose((ranks[0][1] + ranks[1][1]) / 2, whole_right)
    plain_mean = (step_loss(logits[:2], labels[:2])[0] + step_loss(logits[2:], labels[2:])[0]) / 2
    assert not torch.isclose(plain_mean, whole)  # each rank's own mean would weigh its steps differently


def test_macro_f1_and_first_error_accuracy_by_hand():
    records = [record([1.0, 1.0, 0.0, None], "a"), record([1.0, 1.0], "a"), record([0.0, None], "b")]
    scores = [[0.9, 0.4, 0.2, 0.9], [0.8, 0.7], [0.6, 0.1]]
    # labelled steps (truth, predicted correct): (T,T) (T,F) (F,F) | (T,T) (T,T) | (F,T)
    # correct class: tp 3, fp 1, fn 1 -> F1 6/8; wrong class: tp 1, fp 1, fn 1 -> F1 2/4
    metrics = step_metrics(records, scores)
    assert metrics["macro_f1"] == pytest.approx((6 / 8 + 2 / 4) / 2)
    # first errors: predicted 1 vs labelled 2 (no), -1 vs -1 (yes), 1 vs 0 (no)
    assert metrics["first_error_accuracy"] == pytest.approx(1 / 3)
    assert metrics["categories"]["a"]["first_error_accuracy"] == pytest.approx(1 / 2)
    assert metrics["steps"] == 6 and metrics["n"] == 3
    assert first_error([0.9, 0.5, 0.49]) == 2 and first_error([0.5]) == -1


def test_a_short_run_trains_and_its_export_serves_the_step_scores_it_measured(tiny_base, tmp_path):
    from vlreward.service.backends.transformers import TransformersBackend
    from vlreward.training.export import export_model

    train, heldout = build_synthetic_steps(tmp_path / "data", {"hallucination": 16, "reasoning": 16},
                                           {"reasoning": 6}, seed=1)  # fmt: skip
    config = TrainConfig(name="test", batch_size=4, log_every=1, seed=1, num_threads=1,
                         stages=[StageConfig(name="s", learning_rate=1e-3, max_steps=6, epochs=10)])  # fmt: skip
    model, processor = reward_model_from_base(tiny_base, seed=1)
    trainer = StepTrainer(config, model, processor, train, tmp_path / "run", heldout_dir=heldout, show_progress=False)
    before = {k: v.clone() for k, v in trainer.unwrapped.state_dict().items() if k.startswith("score")}
    progress = trainer.train()
    losses = [entry["loss"] for entry in progress.history if "loss" in entry]
    assert len(losses) == 6 and all(loss == loss for loss in losses)  # logged every step, no NaN
    assert any(not torch.equal(before[k], v) for k, v in trainer.unwrapped.state_dict().items() if k in before)
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["macro_f1"] <= 1.0 and metrics["n"] == 6
    export_model(trainer.unwrapped, processor, tmp_path / "prm", process=ProcessHead())
    served = TransformersBackend(tmp_path / "prm", dtype="float32", device="cpu")
    assert served.check_probe() is not None and served.process == ProcessHead()
    records = list(read_records(heldout, StepRecord))
    expected = score_solutions(
        trainer.unwrapped, StepDataset(records, heldout, processor, ProcessHead()), ProcessHead()
    )
    got = score_solutions(served.model, StepDataset(records, heldout, served.processor, ProcessHead()), ProcessHead())
    assert max(abs(a - b) for x, y in zip(got, expected, strict=True) for a, b in zip(x, y, strict=True)) <= 1e-5
