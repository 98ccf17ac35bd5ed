"""Training's commands of ``vlreward`` (joined to the command by :mod:`vlreward.cli` when the train extra is installed).

train, export, bootstrap, bootstrap-base, eval, pairs and ``data synthetic|convert|clean``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from vlreward.training.bootstrap import bootstrap as run_bootstrap

app = typer.Typer()


@app.command("bootstrap-base")
def bootstrap_base(
    out_dir: Annotated[Path, typer.Argument(help="Directory to write the base model into.")],
    size: Annotated[str, typer.Option(help="tiny (tests, default model) or bench (benchmarks).")] = "tiny",
    seed: Annotated[int, typer.Option(help="Seed for the tokenizer corpus and the weights.")] = 0,
) -> None:
    """Write a self-contained tiny Qwen2.5-VL base model (random weights, no download)."""
    from vlreward.training.base_model import SIZES, build_base_model

    if size not in SIZES:
        raise typer.BadParameter(f"size must be one of {', '.join(SIZES)}")
    build_base_model(out_dir, size=size, seed=seed)
    typer.echo(f"wrote {size} base model to {out_dir}", err=True)


@app.command()
def bootstrap(
    home: Annotated[
        Path | None, typer.Option(help="VLREWARD_HOME; the model goes to HOME/models/default (-process, -judge).")
    ] = None,
    recipe: Annotated[
        str | None,
        typer.Option(help="Recipe name or YAML file (default: tiny; tiny-process or tiny-judge for those kinds)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the base weights, the synthetic data and the recipe.")] = 0,
    threads: Annotated[int | None, typer.Option(help="torch threads (default: the recipe's).")] = None,
    kind: Annotated[
        str, typer.Option(help="scalar (the default model), process (the default process model) or judge.")
    ] = "scalar",
) -> None:
    """Build the tiny base, generate synthetic data, train the two-stage recipe, export the default model."""
    from vlreward.service.settings import Settings
    from vlreward.training.bootstrap import KINDS

    if kind not in KINDS:
        raise typer.BadParameter(f"kind must be one of {', '.join(KINDS)}")
    settings = Settings(**({"home": home} if home else {}))
    destination = settings.default_model_dir(kind)
    run_bootstrap(destination, recipe=recipe, seed=seed, num_threads=threads, kind=kind)


def _recipe_fields() -> str:
    from vlreward.training.config import field_help

    return "Recipe fields (each can be set with --set KEY=VALUE):\n\n" + "\n\n".join(field_help())


@app.command(epilog=_recipe_fields())
def train(
    data: Annotated[Path, typer.Option(help="Dataset folder (records.jsonl + images/).")],
    output: Annotated[Path, typer.Option(help="Run folder: checkpoints, history.jsonl.")],
    recipe: Annotated[str, typer.Option(help="paper, tiny, or a YAML file.")] = "tiny",
    base: Annotated[Path | None, typer.Option(help="Base model directory (overrides the recipe's).")] = None,
    heldout: Annotated[Path | None, typer.Option(help="Held-out dataset folder for evaluations.")] = None,
    resume: Annotated[Path | None, typer.Option(help="Checkpoint folder to resume from.")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="KEY=VALUE overriding a recipe field, stages too (stages.0.learning_rate=2e-4)."),
    ] = None,
    kind: Annotated[
        str,
        typer.Option(
            help="scalar (preference pairs), process (step-labelled solutions, the default step tag) or judge "
            "(preference pairs as the generic judge's questions; the base keeps its LM head)."
        ),
    ] = "scalar",
    heads: Annotated[
        str | None,
        typer.Option(
            help="A multi-head scalar model's heads, e.g. helpful,safe,correct (the first is the default): each pair "
            "trains the heads it labels (its `head`, its `attributes`)."
        ),
    ] = None,
    lora: Annotated[
        bool,
        typer.Option(
            help="Train a LoRA reward adapter of --base (a reward checkpoint): LoRA on its language model and its "
            "own head (peft); `vlreward export` writes the adapter, served beside its base."
        ),
    ] = False,
    lora_rank: Annotated[int, typer.Option(min=1, help="The adapter's rank r (lora_alpha = 2r).")] = 8,
) -> None:
    """Train a reward model (run under `accelerate launch` / `torchrun` for several processes)."""
    from vlreward.training.bootstrap import KINDS

    if kind not in KINDS:
        raise typer.BadParameter(f"kind must be one of {', '.join(KINDS)}")
    from vlreward.training.config import RecipeError, load_recipe

    try:
        config = load_recipe(recipe, set_ or [])
    except (RecipeError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    from vlreward.service.judge import read_declaration
    from vlreward.service.kinds import ProcessHead
    from vlreward.training.bootstrap import JUDGE_DECLARATION
    from vlreward.training.export import write_run_judge, write_run_process
    from vlreward.training.judge import has_critiques, judge_model_from_base
    from vlreward.training.model import reward_model_from_base
    from vlreward.training.trainer import JudgeTrainer, PairwiseTrainer, StepTrainer

    base_dir = base or Path(config.base_model)
    if str(base_dir) in ("tiny", "bench"):
        from vlreward.training.base_model import build_base_model

        base_dir = build_base_model(output / "base", size=str(base_dir))
    if kind == "judge":
        judge = read_declaration(JUDGE_DECLARATION)
        write_run_judge(output, judge)
        model, processor = judge_model_from_base(base_dir, judge, critiques=has_critiques(data))
        trainer = JudgeTrainer(config, model, processor, data, output, heldout_dir=heldout, judge=judge)
        trainer.train(resume_from=resume)
        (output / "base_model.txt").write_text(str(base_dir) + "\n")
        return
    if lora:
        if kind != "scalar" or heads is not None or base is None:
            raise typer.BadParameter("--lora trains an adapter of a one-head scalar reward checkpoint given as --base")
        from vlreward.training.lora import lora_model_from_base, write_run_lora

        write_run_lora(output, base, lora_rank, None)
        model, processor = lora_model_from_base(base, lora_rank)
        PairwiseTrainer(config, model, processor, data, output, heldout_dir=heldout).train(resume_from=resume)
        return
    if heads is not None:
        if kind != "scalar":
            raise typer.BadParameter("--heads trains a multi-head scalar model (--kind scalar)")
        from vlreward.service.kinds import HeadsError, parse_heads
        from vlreward.training.multihead import write_run_heads
        from vlreward.training.trainer import MultiHeadTrainer

        try:
            declared = parse_heads(heads)
        except HeadsError as exc:
            raise typer.BadParameter(str(exc)) from None
        write_run_heads(output, declared)
        model, processor = reward_model_from_base(base_dir, seed=config.seed, heads=len(declared.names))
        trainer = MultiHeadTrainer(config, model, processor, data, output, heldout_dir=heldout, heads=declared)
        trainer.train(resume_from=resume)
        (output / "base_model.txt").write_text(str(base_dir) + "\n")
        return
    model, processor = reward_model_from_base(base_dir, seed=config.seed)
    if kind == "process":
        write_run_process(output, ProcessHead())
        trainer = StepTrainer(config, model, processor, data, output, heldout_dir=heldout, process=ProcessHead())
    else:
        trainer = PairwiseTrainer(config, model, processor, data, output, heldout_dir=heldout)
    trainer.train(resume_from=resume)
    (output / "base_model.txt").write_text(str(base_dir) + "\n")


@app.command("merge-adapter")
def merge_adapter_command(
    base: Annotated[Path, typer.Option(help="The adapter's base reward checkpoint.")],
    adapter: Annotated[Path, typer.Option(help="A LoRA reward adapter folder.")],
    output: Annotated[Path, typer.Option(help="The merged reward checkpoint's folder.")],
) -> None:
    """Merge a LoRA reward adapter into its base: a plain reward checkpoint that scores the same (any backend)."""
    from vlreward.service.model.lora import AdapterError
    from vlreward.training.lora import merge_adapter

    try:
        merge_adapter(base, adapter, output)
    except AdapterError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {output}", err=True)


@app.command("stack-heads")
def stack_heads_command(
    head: Annotated[list[str], typer.Option(help="NAME=CHECKPOINT, once per head (the first is the default).")],
    output: Annotated[Path, typer.Option(help="The multi-head checkpoint's folder.")],
) -> None:
    """One multi-head checkpoint from one-head reward checkpoints that share their backbone exactly (heads
    trained on a frozen backbone): one forward pass then gives every head's score."""
    from vlreward.service.backends.transformers import stamp_reference_probe
    from vlreward.service.kinds import HeadsError
    from vlreward.service.model.checkpoint import CheckpointError
    from vlreward.training.multihead import stack_heads

    pairs = [item.partition("=") for item in head]
    if any(not name or not path for name, _, path in pairs):
        raise typer.BadParameter("--head takes NAME=CHECKPOINT")
    try:
        stack_heads({name: Path(path) for name, _, path in pairs}, output)
    except (CheckpointError, HeadsError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    probe = stamp_reference_probe(output)
    typer.echo(f"wrote {output} (heads {', '.join(name for name, _, _ in pairs)}; probe {probe.step_scores})")


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Option(help="A checkpoint folder of a training run.")],
    output: Annotated[Path, typer.Option(help="The reward checkpoint to write.")],
    base: Annotated[Path | None, typer.Option(help="Base model directory (default: the run's).")] = None,
) -> None:
    """Export a training checkpoint into the vlreward checkpoint contract, with its probe."""
    from vlreward.training.export import export_checkpoint
    from vlreward.training.lora import export_adapter, run_lora

    if run_lora(checkpoint.parent) is not None:  # a LoRA run: its adapter, beside its base
        probe = export_adapter(checkpoint, output)
        typer.echo(f"exported the adapter {checkpoint} -> {output} (probe score {probe.score:.6f})", err=True)
        return
    base_dir = base or Path((checkpoint.parent / "base_model.txt").read_text().strip())
    probe = export_checkpoint(base_dir, checkpoint, output)
    typer.echo(f"exported {checkpoint} -> {output} (probe score {probe.score:.6f})", err=True)


@app.command()
def calibrate(
    model: Annotated[Path, typer.Option(help="A scalar reward checkpoint; its reference statistics go there.")],
    data: Annotated[Path, typer.Option(help="A preference dataset folder, as `vlreward train --data` takes.")],
    output: Annotated[Path | None, typer.Option(help="Folder for calibration.json/.png (default: the model).")] = None,
    base: Annotated[Path | None, typer.Option(help="A LoRA adapter's base reward checkpoint.")] = None,
) -> None:
    """Store a model's reference statistics (for `normalize: zscore`) and pairwise temperature (for /compare)."""
    from vlreward.training.calibrate import calibrate as run

    try:
        results = run(model, data, output, base=base)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    for head, scale in results.get("heads", {"": results}).items():  # a multi-head model: every head's
        reference, calibration = scale["reference"], scale["calibration"]
        typer.echo(
            f"{head + ': ' if head else ''}reference {reference['version']}: mean {reference['mean']:.4f}, std "
            f"{reference['std']:.4f} over {reference['count']} responses; T {reference['temperature']:.4f}: ECE "
            f"{calibration['ece_before']:.4f} -> {calibration['ece_after']:.4f} on {calibration['pairs_measured']} "
            "held-out pairs",
            err=True,
        )


@app.command("eval")
def evaluate(
    benchmark: Annotated[
        str,
        typer.Option(
            help="vl-rewardbench, rewardbench, mm-rewardbench, synthetic; processbench, visualprocessbench or "
            "synthetic-bon (process models)."
        ),
    ],
    output: Annotated[Path, typer.Option(help="Folder for results.json, results.md, predictions.jsonl, PNG.")],
    data: Annotated[Path | None, typer.Option(help="Benchmark file or folder (not for synthetic).")] = None,
    model: Annotated[Path | None, typer.Option(help="Reward checkpoint directory (in-process scoring).")] = None,
    url: Annotated[str | None, typer.Option(help="A running vlreward server instead of --model.")] = None,
    api_key: Annotated[str | None, typer.Option(help="API key for --url.")] = None,
    backend: Annotated[str, typer.Option(help="transformers (or hf) or vllm (with --model).")] = "transformers",
    predictions: Annotated[Path | None, typer.Option(help="Recompute the tables from saved predictions.")] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate the first N pairs only.")] = None,
    seed: Annotated[int, typer.Option(help="synthetic: the held-out split of `vlreward bootstrap --seed N`.")] = 0,
    threshold_split: Annotated[
        str | None, typer.Option(help="processbench: choose the threshold on this split (default: 0.5).")
    ] = None,
    head: Annotated[
        str | None, typer.Option(help="A multi-head model's head to evaluate (default: its default).")
    ] = None,
) -> None:
    """Evaluate a reward model; prints the table and writes it as JSON, markdown and PNG. Resumable."""
    from vlreward.training.data.synthetic import SYNTHETIC_SEED
    from vlreward.training.evaluate import (
        evaluate_best_of_n,
        evaluate_synthetic,
        recompute,
        run_benchmark,
        run_step_benchmark,
    )
    from vlreward.training.step_benchmarks import STEP_BENCHMARKS

    if predictions is not None:
        recompute(benchmark, predictions, output, threshold_split=threshold_split)
    elif benchmark == "synthetic":
        from vlreward.service.backends import load_backend
        from vlreward.service.settings import Settings

        model_dir = model or Settings().default_model_dir()
        engine = _one_head(load_backend(Settings(backend=backend), model_dir), head)
        evaluate_synthetic(engine, model_dir, output, seed=SYNTHETIC_SEED + seed)
    elif benchmark == "synthetic-bon":
        from vlreward.service.backends import load_backend
        from vlreward.service.settings import Settings

        model_dir = model or Settings().default_model_dir("process")
        try:
            evaluate_best_of_n(load_backend(Settings(backend=backend), model_dir), model_dir, output)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    else:
        if data is None:
            raise typer.BadParameter("--data is required for this benchmark")
        if (model is None) == (url is None):
            raise typer.BadParameter("give exactly one of --model or --url")
        if benchmark in STEP_BENCHMARKS:
            score_steps, label, digest, step_tag = _scorer(model, url, api_key, backend, steps=True)
            run_step_benchmark(benchmark, data, output, score_steps, label, digest, step_tag, limit=limit,
                               threshold_split=threshold_split)  # fmt: skip
        else:
            score, label, digest, calibration = _scorer(model, url, api_key, backend, head=head)
            run_benchmark(benchmark, data, output, score, label, digest, limit=limit, calibration=calibration)
    typer.echo((output / "results.md").read_text())


def _one_head(engine: Any, head: str | None) -> Any:
    from vlreward.training.evaluate import one_head

    try:
        return one_head(engine, head)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _scorer(
    model: Path | None, url: str | None, api_key: str | None, backend: str, steps: bool = False,
    head: str | None = None,
):  # fmt: skip
    """(score a list of Sample dicts, model label, checkpoint hash, then the step tag or how its pair values
    calibrate) in-process or through a server; with ``steps`` a process model's step scores per sample and its
    step tag, else one score per sample (a multi-head model's ``head``'s) and ``calibration_of``'s keywords."""
    if url is not None:
        from vlreward.client import RewardClient

        client = RewardClient(url, api_key=api_key)
        info = client.info()
        if not steps and info.get("judge", {}).get("pairwise"):  # samples come as (A, B) twos: /compare them
            return _compare_twos(client), info["model"], info.get("checkpoint_hash"), {"probabilities": True}
        if not steps:
            heads = info.get("heads")
            reference = (heads["references"][head or heads["default"]]) if heads else info.get("reference")
            calibration = {"probabilities": False, "temperature": (reference or {}).get("temperature", 1.0)}
            score = lambda samples: client.score(samples, head=head).scores  # noqa: E731
            return score, info["model"], info.get("checkpoint_hash"), calibration
        if "process" not in info:
            raise typer.BadParameter(f"{url}: its default model is a {info['kind']['name']} model, not a process model")
        score_steps = lambda samples: [d["step_scores"] for d in client.score(samples).details]  # noqa: E731
        return score_steps, info["model"], info.get("checkpoint_hash"), info["process"]["step_tag"]
    from vlreward.service.backends import load_backend
    from vlreward.service.model.checkpoint import checkpoint_hash, model_name
    from vlreward.service.settings import Settings
    from vlreward.training.evaluate import in_process_scorer

    engine = load_backend(Settings(backend=backend), model)
    if steps and engine.process is None:
        raise typer.BadParameter(f"{model} is not a process model (its config.json declares no process head)")
    if steps:
        return in_process_scorer(engine, steps), model_name(model), checkpoint_hash(model), engine.step_tag
    from vlreward.training.evaluate import calibration_of

    engine = _one_head(engine, head)
    return in_process_scorer(engine), model_name(model), checkpoint_hash(model), calibration_of(engine, model)


def _compare_twos(client: Any):
    """Score samples given as the (A, B) twos of pairs through /compare: P(A better), P(B better) in turn."""
    from vlreward.adapters.conversation import against_reference

    def score(samples: list[dict]) -> list[float]:
        pairs = [against_reference(a, b.get("response") or b["messages"][-1]["content"])
                 for a, b in zip(samples[0::2], samples[1::2], strict=True)]  # fmt: skip
        return [value for result in client.compare(pairs).results for value in (result.prob_a, 1.0 - result.prob_a)]

    return score


data_app = typer.Typer(help="Preference data: synthetic generation, source conversion, cleaning.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("synthetic")
def data_synthetic(
    output: Annotated[Path, typer.Option(help="Folder; gets train/ and heldout/.")],
    seed: Annotated[int, typer.Option(help="Generator seed.")] = 0,
    per_category: Annotated[
        int | None, typer.Option(help="Train pairs per category (held-out: a quarter); default: the default model's.")
    ] = None,
    judge: Annotated[
        bool, typer.Option(help="Also rate each response (1-5) and write templated critiques, for judges.")
    ] = False,
    heads: Annotated[
        bool,
        typer.Option(
            help="Label pairs for the multi-head model `vlreward train --heads concise,grounded,correct` trains: "
            "hallucination pairs feed `grounded`, general and text pairs `concise` (preferences), reasoning pairs "
            "rate `correct` (attribute ratings)."
        ),
    ] = False,
) -> None:
    """Generate the synthetic preference set (the default model's data)."""
    from vlreward.training.data.synthetic import (
        HELDOUT_PER_CATEGORY,
        SYNTHETIC_RATINGS,
        TRAIN_PER_CATEGORY,
        build_synthetic,
    )

    train, heldout = TRAIN_PER_CATEGORY, HELDOUT_PER_CATEGORY
    if per_category is not None:
        train = dict.fromkeys(TRAIN_PER_CATEGORY, per_category)
        heldout = dict.fromkeys(HELDOUT_PER_CATEGORY, max(1, per_category // 4))
    ratings = SYNTHETIC_RATINGS if judge else None
    train_dir, heldout_dir = build_synthetic(
        output, train, heldout, seed=seed, ratings=ratings, critiques=judge, heads=heads
    )
    typer.echo(f"wrote {train_dir} and {heldout_dir}", err=True)


@data_app.command("convert")
def data_convert(
    source: Annotated[
        str,
        typer.Option(help="llava-critic, rlaif-v, skywork-80k; step-labelled: prm800k, math-shepherd, visualprm400k."),
    ],
    input: Annotated[Path, typer.Option("--input", help="JSONL, JSON or parquet file in the source's layout.")],
    output: Annotated[Path, typer.Option(help="Dataset folder to write (records.jsonl + images/).")],
    images: Annotated[Path | None, typer.Option(help="Folder the rows' relative image paths point into.")] = None,
) -> None:
    """Convert a public source's rows into preference records (step-labelled sources: step records, cleaned)."""
    from vlreward.training.data.schema import write_records
    from vlreward.training.data.sources import convert
    from vlreward.training.data.step_sources import STEP_SOURCES, clean_steps, convert_steps

    if source in STEP_SOURCES:
        from vlreward.service.kinds import DEFAULT_STEP_TAG

        records, cleaning = clean_steps(convert_steps(source, input, output, images_root=images), DEFAULT_STEP_TAG)
        typer.echo(f"cleaning: {cleaning.empty_step} with an empty step dropped, step tag removed from "
                   f"{cleaning.tag_removed}, {cleaning.duplicates} duplicates dropped", err=True)  # fmt: skip
    else:
        records = convert(source, input, output, images_root=images)
    write_records(records, output)
    typer.echo(f"{source}: {len(records)} records -> {output}", err=True)


@data_app.command("clean")
def data_clean(
    input: Annotated[Path, typer.Option("--input", help="Dataset folder.")],
    output: Annotated[Path, typer.Option(help="Dataset folder for the kept records (images stay in --input).")],
    near_threshold: Annotated[float, typer.Option(help="MinHash Jaccard threshold for near duplicates.")] = 0.85,
    surrogate_model: Annotated[Path | None, typer.Option(help="Reward model that scores every pair.")] = None,
    low_percentile: Annotated[float, typer.Option(help="Flag chosen scores at or below this percentile.")] = 10.0,
    margin_percentile: Annotated[float, typer.Option(help="Flag margins at or below this percentile.")] = 10.0,
    regenerate_url: Annotated[str | None, typer.Option(help="OpenAI-compatible endpoint for new chosen.")] = None,
    regenerate_model: Annotated[str, typer.Option(help="Model name at that endpoint.")] = "default",
    drop_disagreeing: Annotated[
        bool, typer.Option(help="Drop pairs the surrogate model scores against their label (chosen <= rejected).")
    ] = False,
    engine: Annotated[str, typer.Option(help="local, or ray: the surrogate scores on Ray Data.")] = "local",
    num_cpus: Annotated[int | None, typer.Option(min=1, help="ray: a local Ray's CPUs (default: all).")] = None,
    address: Annotated[str | None, typer.Option(help="ray: a cluster to join (default: a local Ray).")] = None,
    actors: Annotated[int, typer.Option(min=1, help="ray: scoring actors.")] = 1,
) -> None:
    """Drop ties, exact and near duplicates; optionally score every pair with a surrogate model, report its
    agreement with the labels, flag (and regenerate) weak pairs. Prints counts and writes summary.json and
    summary.png (counts kept and dropped by rule, a histogram of the surrogate's margins) to --output."""
    from vlreward.training.curation import label_agreement, write_summary
    from vlreward.training.data.cleaning import clean, regenerate_chosen, surrogate_flags, write_flags
    from vlreward.training.data.schema import read_records, write_records
    from vlreward.training.evaluate import score_records

    if engine not in ENGINES:
        raise typer.BadParameter(f"--engine {engine!r}: choose one of {', '.join(ENGINES)}")
    records = list(read_records(input))
    kept, reports = clean(records, input, near_threshold)
    counts: dict[str, Any] = {"pairs": len(records), "dropped": {r.step: r.removed for r in reports}}
    for report in reports:
        typer.echo(f"{report.step}: {report.count_in} -> {report.count_out} (removed {report.removed})")
    margins: list[float] = []
    if surrogate_model is not None:
        if engine == "ray":
            from vlreward.training.curation import pair_rows, pair_scores, score_rows

            scoring = _ray_scoring(surrogate_model, output / "surrogate", "transformers", num_cpus, address, actors)
            scores, _ = _interruptible(score_rows, pair_rows(kept, input.resolve()), scoring, input.resolve())
            both = pair_scores(kept, scores)
            counts["dropped"]["unscored"] = sum(pair is None for pair in both)
            kept = [record for record, pair in zip(kept, both, strict=True) if pair is not None]
            pair_values = [pair for pair in both if pair is not None]
        else:
            from vlreward.service.backends import create_backend

            backend = create_backend("transformers", str(surrogate_model), device="auto")
            pair_values = score_records(backend, kept, input)
        agreement = label_agreement(pair_values)
        counts["label_agreement"] = agreement
        typer.echo(f"surrogate: agrees with the label on {agreement:.1%} of {len(pair_values)} pairs")
        kept, flags = surrogate_flags(kept, pair_values, low_percentile, margin_percentile)
        margins = [record.margin for record in kept]
        if drop_disagreeing:
            before = len(kept)
            kept = [record for record in kept if record.margin > 0]
            counts["dropped"]["disagrees_with_label"] = before - len(kept)
        counts["flagged"] = len(flags)
        write_flags(flags, output / "regenerate.jsonl")
        typer.echo(f"surrogate: {len(flags)} of {len(kept)} pairs flagged -> {output / 'regenerate.jsonl'}")
        if regenerate_url is not None:
            flagged = {f.id for f in flags}
            fresh = {r.id: r for r in regenerate_chosen([r for r in kept if r.id in flagged], input, regenerate_url,
                                                         regenerate_model)}  # fmt: skip
            kept = [fresh.get(r.id, r) for r in kept]
            typer.echo(f"regenerated {len(fresh)} chosen responses via {regenerate_url}")
    counts["kept"] = len(kept)
    written = [r.model_copy(update={"images": [str((input / p).resolve()) for p in r.images]}) for r in kept]
    write_records(written, output)
    write_summary(output, "summary", counts, margins, f"{input.name}: surrogate margins (chosen - rejected)")


ENGINES = ("local", "ray")


def _ray_scoring(model: Path | None, output: Path, backend: str, num_cpus: int | None, address: str | None,
                 actors: int) -> Any:  # fmt: skip
    """The Ray engine's settings for a curation command (``--engine ray``), its work folder beside ``output``."""
    from vlreward.service.cli import require_extra

    if model is None:
        raise typer.BadParameter("--engine ray scores with --model (a checkpoint folder)")
    require_extra("ray", "--engine ray")
    from vlreward.offline.ray_engine import RayOptions
    from vlreward.training.curation import RayScoring

    work = output.with_name(output.name + ".ray")
    options = RayOptions(address=address, num_cpus=num_cpus, actors=actors)
    return RayScoring(model, work, {"backend": backend}, options)  # dtype and device: auto, as in process


def _interruptible(score: Any, *args: Any) -> Any:
    """Run a Ray scoring call; an interrupted run ends in one line (status 130) saying how to resume."""
    from vlreward.offline.ray_engine import RunInterrupted

    try:
        return score(*args)
    except RunInterrupted as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(130) from None


@app.command()
def pairs(
    input: Annotated[Path, typer.Option("--input", help="JSONL of /rank bodies (+ optional id).")],
    output: Annotated[Path, typer.Option(help="JSONL of preference pairs for DPO/MPO (top-k: of responses).")],
    model: Annotated[Path | None, typer.Option(help="Reward checkpoint (in-process).")] = None,
    url: Annotated[str | None, typer.Option(help="A running vlreward server instead of --model.")] = None,
    api_key: Annotated[str | None, typer.Option(help="API key for --url.")] = None,
    strategy: Annotated[str, typer.Option(help="best-worst, all-above-margin, or top-k.")] = "best-worst",
    margin: Annotated[float, typer.Option(help="Minimum score difference of a pair.")] = 0.0,
    k: Annotated[int, typer.Option(min=1, help="top-k: responses kept per prompt.")] = 1,
    engine: Annotated[str, typer.Option(help="local, or ray: score on Ray Data (resumable; the ray extra).")] = "local",
    num_cpus: Annotated[int | None, typer.Option(min=1, help="ray: a local Ray's CPUs (default: all).")] = None,
    address: Annotated[str | None, typer.Option(help="ray: a cluster to join (default: a local Ray).")] = None,
    actors: Annotated[int, typer.Option(min=1, help="ray: scoring actors.")] = 1,
) -> None:
    """Score sampled responses and write preference pairs (prompt, chosen, rejected, images, scores), or the
    top k responses per prompt; and a summary (<output>.summary.json, .png: counts, a score histogram)."""
    import json

    from vlreward.service.schemas import RankRequest
    from vlreward.training.curation import write_summary
    from vlreward.training.pairs import STRATEGIES, build_pairs, write_pairs

    if strategy not in STRATEGIES:
        raise typer.BadParameter(f"--strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    if engine not in ENGINES:
        raise typer.BadParameter(f"--engine {engine!r}: choose one of {', '.join(ENGINES)}")
    rows = [json.loads(line) for line in input.read_text().splitlines() if line.strip()]
    scored: list[float] = []
    if engine == "ray":
        from vlreward.training.curation import candidate_rows, ranker, score_rows

        if url is not None:
            raise typer.BadParameter("--engine ray scores with --model, not --url")
        scoring = _ray_scoring(model, output, "transformers", num_cpus, address, actors)
        scores, _ = _interruptible(score_rows, candidate_rows(rows), scoring, input.resolve().parent)
        rank = ranker(rows, scores)
        scored = list(scores.values())
    else:
        if (model is None) == (url is None):
            raise typer.BadParameter("give exactly one of --model or --url")
        score, _, _, _ = _scorer(model, url, api_key, "transformers")

        def rank(row: dict) -> list[float]:
            body = {k: v for k, v in row.items() if k != "id"}
            candidates = RankRequest.model_validate(body).candidates()
            values = score([c.model_dump(exclude_none=True) for c in candidates])
            scored.extend(values)
            return values

    counts: dict[str, int] = {}
    built = build_pairs(rows, rank, strategy, margin, k, counts)
    write_pairs(built, output)
    summary = write_summary(output.parent, output.stem + ".summary", counts | {"written": len(built)}, scored,
                            f"{input.name}: scores of {len(scored)} responses")  # fmt: skip
    what = "rows" if strategy == "top-k" else "pairs"
    typer.echo(f"{len(built)} {what} from {len(rows)} prompts -> {output} (summary: {summary})", err=True)
