"""The default process model's tables on the process benchmarks' formats (docs/evaluation.md):

    python -m loadtest.prm_tables [--model DIR] [--output training/results]

- its held-out synthetic step set (``vlreward bootstrap --kind process``'s, seed 0) written in
  VisualProcessBench's published format and scored by ``vlreward eval --benchmark visualprocessbench``'s
  code: steps up to the first error labelled 1 / -1, the steps after it neutral (0), as the benchmark
  marks steps it does not judge;
- the synthetic best-of-N set (``vlreward eval --benchmark synthetic-bon``).
ProcessBench is text-only, and our synthetic claims are about images: a ProcessBench-format table of them
would measure a model that cannot see, so none is made.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import typer

app = typer.Typer(add_completion=False)


def visualprocessbench_rows(records: list) -> list[dict]:
    """Step records as VisualProcessBench rows (their image paths stay relative to their folder)."""
    correctness = {None: 0, True: 1, False: -1}
    return [
        {"id": record.id, "image": record.images, "question": record.conversation[-1].content, "answer": "",
         "response": {"steps": record.steps,
                      "process_correctness": [correctness[None if label is None else label >= 0.5]
                                              for label in record.labels]},
         "policy_model": "synthetic", "data_source": record.category}
        for record in records
    ]  # fmt: skip


@app.command()
def main(
    model: Path | None = typer.Option(None, help="A process model (default: the embedded default process model)."),
    output: Path = typer.Option(Path("training/results"), help="Gets default-process-{visualprocessbench,bon}/."),
    seed: int = typer.Option(0, help="The held-out split of `vlreward bootstrap --kind process --seed N`."),
) -> None:
    from vlreward.service.backends.transformers import TransformersBackend
    from vlreward.service.model.checkpoint import checkpoint_hash, model_name
    from vlreward.service.settings import Settings
    from vlreward.training.bootstrap import STEP_HELDOUT_PER_CATEGORY
    from vlreward.training.data.synthetic import SYNTHETIC_SEED
    from vlreward.training.data.synthetic_steps import generate_steps
    from vlreward.training.evaluate import evaluate_best_of_n, in_process_scorer, run_step_benchmark

    model = model or Settings().default_model_dir("process")
    backend = TransformersBackend(model, dtype="float32", device="cpu")
    with tempfile.TemporaryDirectory(prefix="vlreward-prm-tables-") as folder:
        root = Path(folder)
        records, _ = generate_steps(root, STEP_HELDOUT_PER_CATEGORY, SYNTHETIC_SEED + seed, "heldout")
        data = root / "test.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in visualprocessbench_rows(records)))

        target = output / "default-process-visualprocessbench"
        (target / "predictions.jsonl").unlink(missing_ok=True)  # a fresh run, not a resumed one
        score_steps = in_process_scorer(backend, steps=True)
        results = run_step_benchmark("visualprocessbench", data, target, score_steps, model_name(model),
                                     checkpoint_hash(model), backend.step_tag)  # fmt: skip
    print(json.dumps({k: results[k] for k in ("overall", "categories", "steps", "neutral_steps")}))
    bon = evaluate_best_of_n(backend, model, output / "default-process-bon")
    print(json.dumps({k: bon[k] for k in ("categories", "best_aggregates")}))


if __name__ == "__main__":
    app()
