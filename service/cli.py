"""The service's commands of ``vlreward``: serve, score and convert (assembled by :mod:`vlreward.cli`).

This module imports only typer and the settings, so ``vlreward --help`` works without any extra; each
command says in one line which extra it needs when that extra is missing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from vlreward import extras
from vlreward.service.settings import Settings

app = typer.Typer()


def fail(message: str) -> typer.Exit:
    """Print one line to stderr; the caller raises the returned exit (status 2, no traceback)."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def require_serve_extra(command: str) -> None:
    """Stop with one line when the serve extra (torch, transformers, FastAPI, ...) is not installed."""
    if not extras.installed("serve"):
        missing = ", ".join(extras.missing("serve"))
        raise fail(f"`vlreward {command}` needs the serve extra (missing: {missing}): {extras.install_hint('serve')}")


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
    require_serve_extra("score")
    from vlreward.service.backends import backend_options, create_backend
    from vlreward.service.offline import score_file

    settings = Settings(backend=backend, dtype=dtype, device=device, max_batch_size=batch_size)
    engine = create_backend(backend, str(model), **backend_options(settings))
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
    require_serve_extra("convert")
    from vlreward.service.backends.transformers import TransformersBackend
    from vlreward.service.model.convert import SOURCES, convert_skywork

    if from_ not in SOURCES:
        raise typer.BadParameter(f"unknown source layout {from_!r}; choose one of {', '.join(SOURCES)}")
    convert_skywork(source, destination)
    probe = TransformersBackend(destination, device=probe_device).stamp_probe()
    typer.echo(f"converted {source} -> {destination} (probe score {probe.score:.6f})", err=True)


# Builds the embedded default model into a directory. Training owns the recipe, so :mod:`vlreward.cli`
# sets this to training's bootstrap when the train extra is installed; the service never imports training.
default_model_builder: Callable[[Path], object] | None = None


def resolve_model(settings: Settings) -> Path:
    """The checkpoint to serve: ``--model`` or the embedded default (built on first start if absent)."""
    if settings.model is not None:
        return settings.model
    path = settings.default_model_dir()
    if not (path / "config.json").is_file():
        if default_model_builder is None:
            raise fail(
                f"no --model given and the embedded default model is not built yet ({path}): pass --model DIR "
                f"(a vlreward checkpoint), or install the train extra to build it ({extras.install_hint('train')})"
            )
        typer.echo(f"building the embedded default model in {path} (first start only)", err=True)
        default_model_builder(path)
    return path


@app.command()
def serve(
    model: Annotated[Path | None, typer.Option(help="Checkpoint; default: the embedded model.")] = None,
    backend: Annotated[str | None, typer.Option(help="hf or vllm.")] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind.")] = None,
    port: Annotated[int | None, typer.Option(help="Port.")] = None,
    dtype: Annotated[str | None, typer.Option(help="float32, bfloat16 or float16.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda[:N].")] = None,
    max_batch_size: Annotated[int | None, typer.Option(help="Samples per forward pass.")] = None,
    max_batch_tokens: Annotated[int | None, typer.Option(help="Padded tokens per pass.")] = None,
    max_wait_ms: Annotated[float | None, typer.Option(help="Wait for a batch to fill.")] = None,
    max_queue: Annotated[int | None, typer.Option(help="Queued samples before 429.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Tokens per sample.")] = None,
    api_key_file: Annotated[Path | None, typer.Option(help="One API key per line.")] = None,
    log_json: Annotated[bool | None, typer.Option(help="JSON access log.")] = None,
    max_images: Annotated[int | None, typer.Option(help="Images per sample (vLLM: per prompt).")] = None,
    vllm_max_model_len: Annotated[int | None, typer.Option(help="vLLM context length.")] = None,
    vllm_gpu_memory_utilization: Annotated[float | None, typer.Option(help="vLLM memory share.")] = None,
    vllm_tensor_parallel_size: Annotated[int | None, typer.Option(help="vLLM GPUs per replica.")] = None,
    vllm_max_num_seqs: Annotated[int | None, typer.Option(help="vLLM sequences per step.")] = None,
    vllm_max_num_batched_tokens: Annotated[int | None, typer.Option(help="vLLM tokens per step.")] = None,
    vllm_enable_prefix_caching: Annotated[bool | None, typer.Option(help="vLLM prefix caching.")] = None,
    vllm_enforce_eager: Annotated[bool | None, typer.Option(help="vLLM without CUDA graphs.")] = None,
) -> None:
    """Serve /score, /rank and /get_reward over HTTP. Every setting also reads VLREWARD_<NAME>."""
    overrides = {k: v for k, v in locals().items() if v is not None}
    require_serve_extra("serve")
    from vlreward.service.server import run

    settings = Settings(**overrides)
    settings = settings.model_copy(update={"model": resolve_model(settings)})
    raise typer.Exit(run(settings))
