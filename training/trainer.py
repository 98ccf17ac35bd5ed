"""Two-stage pairwise reward-model training on accelerate (one process, DDP, FSDP or DeepSpeed alike).

Reads top to bottom: build the model (vision encoder frozen), build the data, compute the loss
``-log σ(s⁺ − s⁻)`` with chosen and rejected in one forward, log, evaluate, checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm
from transformers import get_scheduler

from vlreward.service.judge import JudgeDeclaration
from vlreward.service.kinds import Heads, ProcessHead
from vlreward.training.collator import PairCollator, PairDataset
from vlreward.training.config import StageConfig, TrainConfig
from vlreward.training.data.schema import PreferenceRecord, StepRecord, read_records
from vlreward.training.judge import JudgeCollator, JudgeDataset, answer_loss, heldout_preferences, judge_loss
from vlreward.training.model import freeze_vision_encoder, parameter_groups, parameter_report
from vlreward.training.multihead import HeadCollator, LabelledPairs, head_accuracy, multihead_loss
from vlreward.training.pair_metrics import pairwise_accuracy, score_pairs
from vlreward.training.steps import StepCollator, StepDataset, score_solutions, step_loss, step_metrics

STATE_FILE = "trainer_state.json"


@contextlib.contextmanager
def evaluating(model: Any) -> Iterator[Any]:
    """The model in eval mode inside the block, then back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def pairwise_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry loss of the paper: mean of -log sigmoid(s_chosen - s_rejected)."""
    return -F.logsigmoid(chosen - rejected).mean()


@dataclass
class Progress:
    """Where training is; saved with every checkpoint so a resumed run continues the same curve."""

    stage: int = 0
    epoch: int = 0
    batch: int = 0
    """Batches of the current epoch already done."""
    global_step: int = 0
    history: list[dict] = field(default_factory=list)


class PairwiseTrainer:
    """Trains a reward model on preference pairs (the pairwise loss) through the stages of a recipe. Not TRL's
    RewardTrainer: this one trains the vlreward checkpoint contract's model with its own collator and stages."""

    def __init__(
        self,
        config: TrainConfig,
        model: Any,
        processor: Any,
        train_dir: Path,
        output_dir: Path,
        heldout_dir: Path | None = None,
        accelerator: Accelerator | None = None,
        show_progress: bool = True,
    ):
        self.config = config
        self.processor = processor
        self.train_dir = Path(train_dir)
        self.output_dir = Path(output_dir)
        self.heldout_dir = heldout_dir
        self.show_progress = show_progress
        self.accelerator = accelerator or Accelerator(
            cpu=not torch.cuda.is_available(),  # torchrun on CPUs: gloo data parallel, not N lone runs
            mixed_precision="bf16" if config.bf16 else "no",
            gradient_accumulation_steps=config.gradient_accumulation_steps,
        )
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        set_seed(config.seed)

        # Model: the paper's recipe freezes the vision encoder and trains merger, language model, head.
        freeze_vision_encoder(model)
        model.vision_in_every_step = self.accelerator.num_processes > 1
        if config.gradient_checkpointing:
            model.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        self.model = self.accelerator.prepare(model)
        self.report = parameter_report(self.unwrapped)
        mode = self.accelerator.distributed_type.value
        self.log(f"distributed: {mode}, {self.accelerator.num_processes} process(es)")
        if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and mode == "MULTI_CPU":
            # accelerate (1.15) enables FSDP only for MULTI_GPU/NPU/XPU/...; on CPUs the run is plain DDP.
            self.log("warning: FSDP needs accelerators in accelerate; on CPUs this run is data parallel (DDP)")
        self.log(
            "trainable parameters: "
            + ", ".join(f"{part} {c['trainable']:,}/{c['total']:,}" for part, c in self.report.items())
        )

        self._build_data(processor, heldout_dir)

    def _build_data(self, processor: Any, heldout_dir: Path | None) -> None:
        """Every pair encoded once with the service's own formatting and encoding."""
        records = list(read_records(self.train_dir))
        self.train_data = PairDataset(records, self.train_dir, processor)
        self.collator = PairCollator(self.unwrapped.config.text_config.pad_token_id)
        self.heldout: tuple[list[PreferenceRecord], list] | None = None
        if heldout_dir is not None:
            held = [r for r in read_records(Path(heldout_dir))][: self.config.eval_pairs]
            dataset = PairDataset(held, Path(heldout_dir), processor)
            self.heldout = (held, [dataset[i] for i in range(len(held))])

    def batch_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's loss and accuracy (here: pairs ranked right)."""
        n = int(batch.pop("num_pairs"))
        scores = self.model(**batch)
        return pairwise_loss(scores[:n], scores[n:]), (scores[:n] > scores[n:]).float().mean()

    @property
    def unwrapped(self) -> Any:
        return self.accelerator.unwrap_model(self.model)

    def log(self, message: str) -> None:
        if self.accelerator.is_main_process and self.show_progress:
            tqdm.write(message)

    # -- the loop ---------------------------------------------------------------------------------------

    def _epoch_indices(self, stage_index: int, epoch: int, indices: list[int]) -> list[int]:
        generator = torch.Generator().manual_seed(self.config.seed * 1000 + stage_index * 100 + epoch)
        return [indices[i] for i in torch.randperm(len(indices), generator=generator).tolist()]

    def _stage_plan(self, stage: StageConfig) -> tuple[list[int], int, int]:
        """(record indices of the stage, batches per epoch, total optimiser steps)."""
        # Stage 1 trains on pairs with images; stages with include_text add the text-only pairs.
        indices = [i for i, r in enumerate(self.train_data.records) if r.images or stage.include_text]
        per_step = self.config.batch_size * self.accelerator.num_processes
        batches = math.ceil(len(indices) / per_step)
        steps = math.ceil(batches * stage.epochs / self.config.gradient_accumulation_steps)
        if stage.max_steps is not None:
            steps = min(steps, stage.max_steps)
        return indices, batches, steps

    def train(self, resume_from: Path | None = None) -> Progress:
        progress = Progress()
        if resume_from is not None:
            progress = Progress(**json.loads((Path(resume_from) / STATE_FILE).read_text()))
        for stage_index, stage in enumerate(self.config.stages):
            if stage_index < progress.stage:
                continue
            self._train_stage(stage_index, stage, progress, resume_from if stage_index == progress.stage else None)
            progress.stage, progress.epoch, progress.batch = stage_index + 1, 0, 0
            if self.heldout is not None:
                metrics = self.evaluate()
                progress.history.append({"step": progress.global_step, "stage": stage.name, "eval": metrics})
                self.log(f"[{stage.name}] {self.headline(metrics)}")
            resume_from = None
        self.save_checkpoint(progress, self.output_dir / "checkpoint-final")
        return progress

    def _train_stage(self, stage_index: int, stage: StageConfig, progress: Progress, resume: Path | None) -> None:
        config, accelerator = self.config, self.accelerator
        indices, batches_per_epoch, total_steps = self._stage_plan(stage)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        groups = parameter_groups(self.unwrapped, stage.learning_rate, config.lr_multipliers)
        optimizer = torch.optim.AdamW(
            groups, lr=stage.learning_rate, betas=config.adam_betas, weight_decay=config.weight_decay
        )
        scheduler = get_scheduler(
            stage.schedule, optimizer, num_warmup_steps=stage.warmup_steps, num_training_steps=max(1, total_steps)
        )
        # A stage's checkpoint holds its own optimiser and scheduler only (accelerate keeps a list).
        accelerator._optimizers.clear()
        accelerator._schedulers.clear()
        optimizer, scheduler = accelerator.prepare(optimizer, scheduler)
        if resume is not None:
            accelerator.load_state(str(resume))
        stage_start_step = progress.global_step - (
            (progress.epoch * batches_per_epoch + progress.batch) // config.gradient_accumulation_steps
        )
        bar = tqdm(
            total=total_steps,
            initial=progress.global_step - stage_start_step,
            desc=stage.name,
            disable=not (accelerator.is_main_process and self.show_progress),
            unit="step",
        )
        window: list[tuple[float, float]] = []
        started = time.monotonic()
        epochs = math.ceil(stage.epochs)
        for epoch in range(progress.epoch, epochs):
            order = self._epoch_indices(stage_index, epoch, indices)
            loader = accelerator.prepare(
                DataLoader(
                    Subset(self.train_data, order),
                    batch_size=config.batch_size,
                    shuffle=False,
                    collate_fn=self.collator,
                )
            )
            skip = progress.batch if epoch == progress.epoch else 0
            if skip:
                loader = accelerator.skip_first_batches(loader, skip)
            for batch_number, batch in enumerate(loader, start=skip):
                if progress.global_step - stage_start_step >= total_steps:
                    break
                with accelerator.accumulate(self.model):
                    loss, correct = self.batch_loss(batch)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and config.max_grad_norm:
                        accelerator.clip_grad_norm_(trainable, config.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                progress.epoch, progress.batch = epoch, batch_number + 1
                # Averaged over all processes, so one- and multi-process runs log the same curve.
                pair_stats = accelerator.reduce(torch.stack([loss.detach(), correct]), reduction="mean")
                window.append((pair_stats[0].item(), pair_stats[1].item()))
                if not accelerator.sync_gradients:
                    continue
                progress.global_step += 1
                bar.update(1)
                if progress.global_step % config.log_every == 0:
                    entry = {
                        "step": progress.global_step,
                        "stage": stage.name,
                        "loss": sum(v[0] for v in window) / len(window),
                        "accuracy": sum(v[1] for v in window) / len(window),
                        "lr": scheduler.get_last_lr()[0],
                        "seconds": round(time.monotonic() - started, 2),
                    }
                    progress.history.append(entry)
                    bar.set_postfix(loss=f"{entry['loss']:.4f}", acc=f"{entry['accuracy']:.2f}")
                    window = []
                if config.eval_every and progress.global_step % config.eval_every == 0 and self.heldout:
                    progress.history.append({"step": progress.global_step, "eval": self.evaluate()})
                if config.save_every and progress.global_step % config.save_every == 0:
                    self.save_checkpoint(progress, self.output_dir / f"checkpoint-{progress.global_step}")
            if progress.global_step - stage_start_step >= total_steps:
                break
        bar.close()

    @staticmethod
    def headline(metrics: dict[str, Any]) -> str:
        """The held-out figures a log line shows."""
        return f"held-out accuracy {metrics['overall']:.3f} {metrics['categories']}"

    def evaluate(self) -> dict[str, Any]:
        """Held-out accuracy per category and mean margin (the model in eval mode, then back)."""
        records, pairs = self.heldout
        with evaluating(self.unwrapped) as model:
            scores = score_pairs(model.score_batch, pairs, lambda pair: pair)
        return pairwise_accuracy([r.category for r in records], scores)

    def save_checkpoint(self, progress: Progress, directory: Path) -> None:
        """Model, optimiser, scheduler and RNG states (accelerate) plus where training stands."""
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(directory))
        if self.accelerator.is_main_process:
            (directory / STATE_FILE).write_text(json.dumps(progress.__dict__, indent=1) + "\n")
            with (self.output_dir / "history.jsonl").open("w") as handle:
                for entry in progress.history:
                    handle.write(json.dumps(entry) + "\n")


class StepTrainer(PairwiseTrainer):
    """Trains a process reward model on step-labelled solutions through the same stages, distributed
    paths and checkpoints: the head is read at every step tag and trained with binary cross-entropy where
    a step is labelled (:mod:`vlreward.training.steps`)."""

    def __init__(self, *args: Any, process: ProcessHead | None = None, **kwargs: Any):
        self.process = process or ProcessHead()
        super().__init__(*args, **kwargs)

    def _build_data(self, processor: Any, heldout_dir: Path | None) -> None:
        records = list(read_records(self.train_dir, StepRecord))
        self.train_data = StepDataset(records, self.train_dir, processor, self.process)
        self.collator = StepCollator(self.unwrapped.config.text_config.pad_token_id)
        self.heldout = None
        if heldout_dir is not None:
            held = list(read_records(Path(heldout_dir), StepRecord))[: self.config.eval_pairs]
            self.heldout = (held, StepDataset(held, Path(heldout_dir), processor, self.process))

    def batch_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Binary cross-entropy over the labelled steps, and the share of them on the right side of 0.5."""
        labels = batch.pop("labels").to(self.accelerator.device)
        total = self.accelerator.reduce((~torch.isnan(labels)).sum(), reduction="sum")  # over every process
        return step_loss(self.model(**batch), labels, total, self.accelerator.num_processes)

    @staticmethod
    def headline(metrics: dict[str, Any]) -> str:
        return (
            f"held-out step macro-F1 {metrics['macro_f1']:.3f}, first-error accuracy "
            f"{metrics['first_error_accuracy']:.3f}"
        )

    def evaluate(self) -> dict[str, Any]:
        """Held-out step-level macro-F1 and first-error accuracy, overall and per category."""
        records, dataset = self.heldout
        with evaluating(self.unwrapped) as model:
            scores = score_solutions(model, dataset, self.process)
        return step_metrics(records, scores)


class JudgeTrainer(PairwiseTrainer):
    """Trains a generative judge on preference pairs through the same stages, distributed paths and
    checkpoints: each pair asked in both orders (and rated, where the data rates), cross-entropy on the
    verdict token only (:mod:`vlreward.training.judge`)."""

    def __init__(self, *args: Any, judge: JudgeDeclaration, **kwargs: Any):
        self.judge = judge
        super().__init__(*args, **kwargs)

    def _build_data(self, processor: Any, heldout_dir: Path | None) -> None:
        records = list(read_records(self.train_dir))
        self.train_data = JudgeDataset(records, self.train_dir, processor, self.judge)
        self.collator = JudgeCollator(self.unwrapped.config.text_config.pad_token_id)
        self.heldout = None
        if heldout_dir is not None:
            held = [r for r in read_records(Path(heldout_dir)) if not r.tie][: self.config.eval_pairs]
            self.heldout = (held, JudgeDataset(held, Path(heldout_dir), processor, self.judge))

    def batch_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy on the verdict token, and the share of pairwise questions answered right; where the
        data has critiques, plus the cross-entropy of the answers to write (critique + verdict)."""
        targets, pointwise = batch.pop("targets"), batch.pop("pointwise")
        answers, labels = batch.pop("answers", None), batch.pop("answer_labels", None)
        logits = self.model(**batch)
        loss, accuracy = judge_loss(
            logits, targets.to(logits.device), pointwise.to(logits.device), len(self.judge.ratings)
        )
        if answers is not None:
            if self.accelerator.num_processes > 1:
                raise RuntimeError("training a judge on critiques runs in one process (no torchrun) for now")
            device = logits.device
            answers = {k: v.to(device) for k, v in answers.items()}
            loss = loss + answer_loss(self.unwrapped, answers, labels.to(device))
        return loss, accuracy

    @staticmethod
    def headline(metrics: dict[str, Any]) -> str:
        return f"held-out pairwise accuracy (logits, debiased) {metrics['overall']:.3f} {metrics['categories']}"

    def evaluate(self) -> dict[str, Any]:
        """Held-out pairwise accuracy per category: P(chosen > rejected) read from logits in both orders."""
        records, dataset = self.heldout
        with evaluating(self.unwrapped) as model:
            scores = heldout_preferences(model, dataset)
        return pairwise_accuracy([r.category for r in records], scores)


class MultiHeadTrainer(PairwiseTrainer):
    """Trains a multi-head reward model on preference pairs through the same stages, distributed paths and
    checkpoints: each pair trains the heads it has labels for (:mod:`vlreward.training.multihead`)."""

    def __init__(self, *args: Any, heads: Heads, **kwargs: Any):
        self.heads = heads
        super().__init__(*args, **kwargs)

    def _build_data(self, processor: Any, heldout_dir: Path | None) -> None:
        super()._build_data(processor, heldout_dir)
        self.train_data = LabelledPairs(self.train_data, self.heads)
        self.collator = HeadCollator(self.unwrapped.config.text_config.pad_token_id)

    def batch_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """One loss per head where the pair has its label (:func:`~vlreward.training.multihead.multihead_loss`)."""
        pair_heads, ratings = batch.pop("pair_heads"), batch.pop("ratings")
        batch.pop("num_pairs")
        scores = self.model(**batch)
        return multihead_loss(scores, pair_heads.to(scores.device), ratings.to(scores.device))

    @staticmethod
    def headline(metrics: dict[str, Any]) -> str:
        heads = ", ".join(f"{name} {row['accuracy']:.3f} (n={row['n']})" for name, row in metrics["heads"].items())
        return f"held-out accuracy per head: {heads}"

    def evaluate(self) -> dict[str, Any]:
        """Each head's held-out accuracy on the pairs labelled for it (the model in eval mode, then back)."""
        records, pairs = self.heldout
        with evaluating(self.unwrapped) as model:
            scores = score_pairs(model.score_batch, pairs, lambda pair: pair)
        return head_accuracy(self.heads, records, scores)
