"""`vlreward bootstrap`: tiny base -> synthetic data -> `tiny` two-stage recipe -> the embedded default model
(``--kind process``: step-labelled synthetic solutions -> the embedded default process model)."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from vlreward.training.data.synthetic import (
    HELDOUT_PER_CATEGORY,
    SYNTHETIC_SEED,
    TRAIN_PER_CATEGORY,
    build_synthetic,
)

KINDS = ("scalar", "process", "judge")
"""The kinds of default model bootstrap builds."""
STEP_TRAIN_PER_CATEGORY = {"hallucination": 2000, "reasoning": 2000}
"""Items per category of the process model's training split (each as three solutions: no error, a wrong
claim, a wrong conclusion)."""
STEP_HELDOUT_PER_CATEGORY = {"hallucination": 200, "reasoning": 200}


JUDGE_DECLARATION = "generic"
"""The declaration of the judges vlreward trains (its prompts and verdict tokens: service/judges/)."""

RECIPES = {"scalar": "tiny", "process": "tiny-process", "judge": "tiny-judge"}
"""Each kind's default recipe."""


def bootstrap(
    destination: Path,
    recipe: str | None = None,
    workdir: Path | None = None,
    seed: int = 0,
    num_threads: int | None = None,
    kind: str = "scalar",
    start_from: Path | None = None,
) -> dict:
    """Build, train and export the default model of ``kind`` into ``destination``; returns the held-out
    metrics. The process model and the judge start from the default scalar model of the same seed (built
    here first, in the work folder): its backbone has learnt to read the synthetic images (see the recipes).

    ``seed`` sets the base model's weights, the synthetic data and the recipe's seed together (0 is the
    embedded default model); ``num_threads`` overrides the recipe's torch threads; ``recipe`` defaults to
    the kind's (:data:`RECIPES`); ``start_from``: the scalar checkpoint a process model starts from
    instead of building one (tests reuse their session's default model).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}")
    recipe = recipe or RECIPES[kind]
    # Imported here: `vlreward` imports this module at every start (its builder of the default model),
    # and these load torch, transformers and accelerate (seconds) that --help and serve --model never need.
    from vlreward.service.judge import read_declaration
    from vlreward.service.kinds import ProcessHead
    from vlreward.training.base_model import build_base_model
    from vlreward.training.config import load_recipe
    from vlreward.training.data.synthetic import SYNTHETIC_RATINGS
    from vlreward.training.data.synthetic_steps import build_synthetic_steps
    from vlreward.training.export import export_judge, export_model
    from vlreward.training.judge import judge_model_from_base
    from vlreward.training.model import reward_model_from_base
    from vlreward.training.trainer import JudgeTrainer, PairwiseTrainer, StepTrainer

    started = time.monotonic()
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    work = Path(workdir or tempfile.mkdtemp(prefix=".bootstrap-", dir=destination.parent))
    try:
        process = ProcessHead() if kind == "process" else None
        judge = read_declaration(JUDGE_DECLARATION) if kind == "judge" else None
        if kind == "scalar":
            tqdm.write("[1/4] building the tiny base model")
            base = build_base_model(work / "base", size="tiny", seed=seed)
        elif start_from is not None:
            base = Path(start_from)
        else:
            tqdm.write("[1/4] building the default scalar model of this seed to start from")
            base = work / "scalar"
            bootstrap(base, workdir=work / "scalar-work", seed=seed, num_threads=num_threads)
        if process is None:
            tqdm.write("[2/4] generating synthetic preference data" + (" (rated)" if judge else ""))
            train_dir, heldout_dir = build_synthetic(
                work / "data", TRAIN_PER_CATEGORY, HELDOUT_PER_CATEGORY, seed=SYNTHETIC_SEED + seed,
                ratings=SYNTHETIC_RATINGS if judge else None,
            )  # fmt: skip
        else:
            tqdm.write("[2/4] generating synthetic step-labelled solutions")
            train_dir, heldout_dir = build_synthetic_steps(
                work / "data", STEP_TRAIN_PER_CATEGORY, STEP_HELDOUT_PER_CATEGORY, seed=SYNTHETIC_SEED + seed
            )
        tqdm.write(f"[3/4] training with the {recipe!r} recipe")
        config = load_recipe(recipe)
        config.seed = seed
        if num_threads is not None:
            config.num_threads = num_threads
        if judge is not None:
            model, processor = judge_model_from_base(base, judge)
            trainer = JudgeTrainer(
                config, model, processor, train_dir, work / "run", heldout_dir=heldout_dir, judge=judge
            )
        elif process is None:
            model, processor = reward_model_from_base(base, seed=config.seed)
            trainer = PairwiseTrainer(config, model, processor, train_dir, work / "run", heldout_dir=heldout_dir)
        else:
            model, processor = reward_model_from_base(base, seed=config.seed, head_bias=True)
            trainer = StepTrainer(
                config, model, processor, train_dir, work / "run", heldout_dir=heldout_dir, process=process
            )
        progress = trainer.train()
        metrics = trainer.evaluate()
        tqdm.write("[4/4] exporting")
        staging = work / "export"
        info = {"recipe": config.to_dict(), "heldout": metrics, "history": progress.history[-20:]}
        if judge is not None:
            export_judge(trainer.unwrapped, processor, staging, judge, base, info)
        else:
            export_model(trainer.unwrapped, processor, staging, info, process=process)
        if destination.exists():
            shutil.rmtree(destination)
        shutil.move(str(staging), destination)  # appears whole or not at all
        tqdm.write(
            f"default {'' if kind == 'scalar' else kind + ' '}model ready in {destination} after "
            f"{time.monotonic() - started:.0f} s: "
            f"{trainer.headline(metrics)} {json.dumps(metrics['categories'])}"
        )
        return metrics
    finally:
        if workdir is None:
            shutil.rmtree(work, ignore_errors=True)
