"""The full ``vlreward`` command: the service's commands plus training's."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

import service.cli
from service.cli import app
from training.default_model import build_default_model

service.cli.default_model_builder = build_default_model


@app.command("bootstrap-base")
def bootstrap_base(
    out_dir: Annotated[Path, typer.Argument(help="Directory to write the base model into.")],
    size: Annotated[str, typer.Option(help="tiny (tests, default model) or bench (benchmarks).")] = "tiny",
    seed: Annotated[int, typer.Option(help="Seed for the tokenizer corpus and the weights.")] = 0,
) -> None:
    """Write a self-contained tiny Qwen2.5-VL base model (random weights, no download)."""
    from training.base_model import SIZES, build_base_model

    if size not in SIZES:
        raise typer.BadParameter(f"size must be one of {', '.join(SIZES)}")
    build_base_model(out_dir, size=size, seed=seed)
    typer.echo(f"wrote {size} base model to {out_dir}", err=True)


__all__ = ["app"]
