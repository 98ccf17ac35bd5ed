"""The trainer: frozen vision encoder, resumable, exports what it trained, the paper recipe's code path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vlreward.service.backends.transformers import TransformersBackend
from vlreward.training.collator import PairDataset
from vlreward.training.config import StageConfig, TrainConfig, load_recipe
from vlreward.training.data.schema import read_records
from vlreward.training.export import export_checkpoint, export_model
from vlreward.training.model import (
    VISION_ENCODER_PREFIXES,
    freeze_vision_encoder,
    parameter_report,
    reward_model_from_base,
)
from vlreward.training.trainer import PairwiseTrainer, pairwise_loss


def tiny_config(**overrides) -> TrainConfig:
    config = TrainConfig(
        name="test",
        batch_size=4,
        log_every=1,
        seed=3,
        num_threads=1,
        stages=[
            StageConfig(name="stage1", learning_rate=1e-3, max_steps=4, epochs=10),
            StageConfig(name="stage2", learning_rate=5e-4, max_steps=4, epochs=10, include_text=True),
        ],
    )
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def test_pairwise_loss_is_the_papers_equation():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.0])
    expected = (-torch.log(torch.sigmoid(torch.tensor(1.0))) + torch.log(torch.tensor(2.0))) / 2
    assert torch.isclose(pairwise_loss(chosen, rejected), expected)


def test_one_step_changes_merger_language_model_and_head_but_not_the_vision_encoder(
    tiny_base, small_synthetic, tmp_path
):
    model, processor = reward_model_from_base(tiny_base)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = tiny_config(stages=[StageConfig(name="s", learning_rate=1e-3, max_steps=1)])
    trainer = PairwiseTrainer(config, model, processor, small_synthetic[0], tmp_path, show_progress=False)
    trainer.train()
    after = trainer.unwrapped.state_dict()
    for name, value in after.items():
        same = torch.equal(before[name], value)
        if name.startswith(VISION_ENCODER_PREFIXES):
            assert same, f"{name} changed"
    changed = {part: False for part in ("model.visual.merger.", "model.language_model.", "score.")}
    for name, value in after.items():
        for prefix in changed:
            if name.startswith(prefix) and not torch.equal(before[name], value):
                changed[prefix] = True
    assert all(changed.values()), changed


def test_parameter_report_counts_frozen_and_trainable_parts(tiny_base):
    model, _ = reward_model_from_base(tiny_base)
    freeze_vision_encoder(model)
    report = parameter_report(model)
    assert report["vision encoder"]["trainable"] == 0 and report["vision encoder"]["total"] > 0
    for part in ("merger", "language model", "head"):
        assert report[part]["trainable"] == report[part]["total"] > 0
    assert report["head"]["total"] == 128


def _losses(history: list[dict]) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in history if "loss" in h}


def test_resuming_from_a_mid_run_checkpoint_continues_the_same_loss_curve(tiny_base, small_synthetic, tmp_path):
    train_dir, _ = small_synthetic
    model, processor = reward_model_from_base(tiny_base)
    full = PairwiseTrainer(
        tiny_config(save_every=3), model, processor, train_dir, tmp_path / "full", show_progress=False
    )
    reference = _losses(full.train().history)

    model, processor = reward_model_from_base(tiny_base)
    resumed = PairwiseTrainer(tiny_config(), model, processor, train_dir, tmp_path / "resumed", show_progress=False)
    continued = _losses(resumed.train(resume_from=tmp_path / "full" / "checkpoint-3").history)
    assert sorted(reference) == list(range(1, 9)) and sorted(continued) == list(range(1, 9))
    for step in range(4, 9):  # steps after the checkpoint, across the stage boundary
        assert abs(reference[step] - continued[step]) <= 1e-5, (step, reference[step], continued[step])
    final = {k: v for k, v in full.unwrapped.state_dict().items()}
    for name, value in resumed.unwrapped.state_dict().items():
        assert torch.allclose(final[name], value, atol=1e-6), name


def test_exported_model_scores_like_the_trainers_forward(tiny_base, small_synthetic, tmp_path):
    train_dir, heldout_dir = small_synthetic
    model, processor = reward_model_from_base(tiny_base)
    trainer = PairwiseTrainer(tiny_config(), model, processor, train_dir, tmp_path / "run", show_progress=False)
    trainer.train()
    probe = export_model(trainer.unwrapped, processor, tmp_path / "exported")
    backend = TransformersBackend(tmp_path / "exported", device="cpu")
    assert backend.check_probe() is not None and probe.score == read_probe_score(tmp_path / "exported")
    records = list(read_records(heldout_dir))
    pairs = PairDataset(records, heldout_dir, processor)
    trainer.unwrapped.eval()
    for index in range(len(records)):
        chosen, rejected = pairs[index]
        in_trainer = trainer.unwrapped.score_batch([chosen, rejected])
        served = backend.model.score_batch([chosen, rejected])
        assert all(abs(a - b) <= 1e-5 for a, b in zip(in_trainer, served, strict=True))
    # A trainer checkpoint exports to the same model.
    export_checkpoint(tiny_base, tmp_path / "run" / "checkpoint-final", tmp_path / "from-checkpoint")
    again = TransformersBackend(tmp_path / "from-checkpoint", device="cpu")
    assert abs(again.check_probe() - probe.score) <= 1e-6


def read_probe_score(directory: Path) -> float:
    return json.loads((directory / "vlreward_probe.json").read_text())["score"]


def test_paper_recipe_runs_its_code_path_at_tiny_size(tiny_base, small_synthetic, tmp_path):
    config = load_recipe("paper")
    assert [s.learning_rate for s in config.stages] == [1e-5, 1e-6]
    assert config.batch_size == 1 and all(s.epochs == 2 for s in config.stages)
    assert [s.include_text for s in config.stages] == [False, True]
    assert config.bf16 and config.gradient_checkpointing
    for stage in config.stages:
        stage.max_steps, stage.warmup_steps = 2, 1
    config.eval_pairs, config.log_every = 4, 1
    model, processor = reward_model_from_base(tiny_base)
    trainer = PairwiseTrainer(
        config, model, processor, small_synthetic[0], tmp_path, small_synthetic[1], show_progress=False
    )
    progress = trainer.train()
    assert progress.global_step == 4
    assert [h["stage"] for h in progress.history if "loss" in h] == ["stage1", "stage1", "stage2", "stage2"]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in progress.history if "loss" in h)


def test_unknown_recipe_is_refused():
    with pytest.raises(FileNotFoundError, match="paper"):
        load_recipe("nope")


def test_the_recipes_adam_betas_reach_the_optimiser(tiny_base, small_synthetic, tmp_path):
    recipe = load_recipe("tiny")
    assert recipe.adam_betas == (0.9, 0.95)  # the default model's stabiliser (see tiny.yaml)
    assert TrainConfig.from_dict(recipe.to_dict()).adam_betas == (0.9, 0.95)
    model, processor = reward_model_from_base(tiny_base)
    config = tiny_config(adam_betas=(0.8, 0.9), stages=[StageConfig(name="s", learning_rate=1e-3, max_steps=1)])
    trainer = PairwiseTrainer(config, model, processor, small_synthetic[0], tmp_path, show_progress=False)
    trainer.train()
    (optimiser,) = trainer.accelerator._optimizers  # the last stage's, as prepared by accelerate
    assert all(group["betas"] == (0.8, 0.9) for group in optimiser.param_groups)
