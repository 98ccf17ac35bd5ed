"""Export a trained model into the checkpoint contract, with its start-up probe."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from vlreward.service.judge import JudgeDeclaration, from_mapping
from vlreward.service.kinds import Heads, ProcessHead
from vlreward.service.model.checkpoint import save_reward_model
from vlreward.service.model.probe import Probe
from vlreward.training.model import reward_model_from_base
from vlreward.training.multihead import run_heads

TRAINING_INFO_FILE = "vlreward_training.json"
RUN_PROCESS_FILE = "process_head.json"
"""In a training run's folder: the process head a process run trains (absent: a scalar run)."""


def write_run_process(run_dir: Path, process: ProcessHead) -> None:
    """Record that the run in ``run_dir`` trains a process model with this head (its export reads it)."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    (Path(run_dir) / RUN_PROCESS_FILE).write_text(json.dumps(process.declaration()) + "\n")


RUN_JUDGE_FILE = "judge.json"
"""In a training run's folder: the declaration of the judge a judge run trains."""


def write_run_judge(run_dir: Path, judge: JudgeDeclaration) -> None:
    """Record that the run in ``run_dir`` trains this judge (its export reads it)."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    (Path(run_dir) / RUN_JUDGE_FILE).write_text(json.dumps(judge.declaration()) + "\n")


def run_judge(run_dir: Path) -> JudgeDeclaration | None:
    """The judge the run in ``run_dir`` trained (None: not a judge run)."""
    path = Path(run_dir) / RUN_JUDGE_FILE
    return from_mapping(json.loads(path.read_text()), str(path)) if path.is_file() else None


def run_process(run_dir: Path) -> ProcessHead | None:
    """The process head the run in ``run_dir`` trained (None: a scalar run)."""
    path = Path(run_dir) / RUN_PROCESS_FILE
    return ProcessHead(**json.loads(path.read_text())) if path.is_file() else None


def export_model(
    model: Any, processor: Any, output_dir: Path, info: dict | None = None, process: ProcessHead | None = None,
    heads: Heads | None = None,
) -> Probe:  # fmt: skip
    """Save in the contract (``process``: as a process model read at that step tag; ``heads``: a multi-head
    model), then score the probe with the transformers backend and store it."""
    from vlreward.service.backends.transformers import stamp_reference_probe

    output_dir = Path(output_dir)
    was_training = model.training
    model.eval()
    save_reward_model(model, processor, output_dir, process=process, heads=heads)
    model.train(was_training)
    if info is not None:
        (output_dir / TRAINING_INFO_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n")
    return stamp_reference_probe(output_dir)


def export_judge(
    model: Any, processor: Any, output_dir: Path, judge: JudgeDeclaration, base_dir: Path, info: dict | None = None
) -> Probe:
    """Save a trained judge as a generative checkpoint declaring it (:func:`~vlreward.training.judge.save_judge_model`),
    then stamp its probe (the verdict tokens' logits) with the transformers backend."""
    from vlreward.service.backends.transformers import stamp_reference_probe
    from vlreward.training.judge import save_judge_model

    output_dir = Path(output_dir)
    save_judge_model(model, processor, output_dir, judge, base_dir)
    if info is not None:
        (output_dir / TRAINING_INFO_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n")
    return stamp_reference_probe(output_dir)


def export_checkpoint(base_dir: Path, checkpoint_dir: Path, output_dir: Path) -> Probe:
    """A trainer checkpoint (accelerate state) + its base model directory -> reward checkpoint (a process
    model or a judge when its run trained one)."""
    run_dir = Path(checkpoint_dir).parent
    judge, heads = run_judge(run_dir), run_heads(run_dir)
    state = load_file(Path(checkpoint_dir) / "model.safetensors")
    if judge is not None:
        from vlreward.training.judge import judge_model_from_base

        model, processor = judge_model_from_base(base_dir, judge, critiques="lm_head.weight" in state)
    else:
        outputs = 1 if heads is None else len(heads.names)
        model, processor = reward_model_from_base(base_dir, head_bias=False, heads=outputs)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{checkpoint_dir}: checkpoint does not match the base model "
            f"(missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]})"
        )
    info_path = Path(checkpoint_dir) / "trainer_state.json"
    info = {"checkpoint": str(checkpoint_dir), "base_model": str(base_dir)}
    if info_path.is_file():
        info["trainer_state"] = json.loads(info_path.read_text())
    if judge is not None:
        return export_judge(model, processor, output_dir, judge, Path(base_dir), info)
    return export_model(model, processor, output_dir, info, process=run_process(run_dir), heads=heads)
