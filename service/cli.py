"""The serving half of the ``vlreward`` command: score, convert (serve arrives with the HTTP service)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="vlreward: train, evaluate and serve multimodal reward models.", no_args_is_help=True)


@app.command()
def score(
    model: Annotated[Path, typer.Option(help="Reward checkpoint directory.")],
    input: Annotated[Path, typer.Option("--input", help="JSONL, one Sample per line.")],
    output: Annotated[Path, typer.Option(help="JSONL written with one {'score'} per input line.")],
    backend: Annotated[str, typer.Option(help="Scoring backend: hf.")] = "hf",
    batch_size: Annotated[int, typer.Option(min=1, help="Samples per forward pass.")] = 16,
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16.")] = "float32",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
) -> None:
    """Score a JSONL file of samples offline (images as data URIs or paths relative to the file)."""
    from service.backends import create_backend
    from service.offline import score_file

    engine = create_backend(backend, str(model), dtype=dtype, device=device, max_batch_size=batch_size)
    count = score_file(engine, input, output, batch_size=batch_size)
    typer.echo(f"wrote {count} scores to {output}", err=True)


@app.command()
def convert(
    source: Annotated[Path, typer.Argument(help="Published checkpoint directory.")],
    destination: Annotated[Path, typer.Argument(help="New reward checkpoint directory.")],
    from_: Annotated[str, typer.Option("--from", help="Source layout: skywork.")] = "skywork",
    probe_device: Annotated[str, typer.Option(help="Device used to compute the start-up probe.")] = "auto",
) -> None:
    """Convert a published reward model into the vlreward checkpoint contract, with a probe."""
    from service.backends.transformers import TransformersBackend
    from service.model.convert import SOURCES, convert_skywork

    if from_ not in SOURCES:
        raise typer.BadParameter(f"unknown source layout {from_!r}; choose one of {', '.join(SOURCES)}")
    convert_skywork(source, destination)
    probe = TransformersBackend(destination, device=probe_device).stamp_probe()
    typer.echo(f"converted {source} -> {destination} (probe score {probe.score:.6f})", err=True)
