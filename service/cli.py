"""The service's commands of ``vlreward``: serve, score and convert (assembled by :mod:`vlreward.cli`).

This module imports only typer and the settings, so ``vlreward --help`` works without any extra; each
command says in one line which extra it needs when that extra is missing.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from vlreward import extras
from vlreward.service.settings import Settings, default, env_name

app = typer.Typer()


def fail(message: str) -> typer.Exit:
    """Print one line to stderr; the caller raises the returned exit (status 2, no traceback)."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def describe(name: str) -> str:
    """A setting's help text, for the flags of commands other than serve."""
    return Settings.model_fields[name].description or name


def require_extra(extra: str, what: str) -> None:
    """Stop with one line when ``extra`` is not installed (``what``: the command or option that needs it)."""
    if not extras.installed(extra):
        missing = ", ".join(extras.missing(extra))
        raise fail(f"{what} needs the {extra} extra (missing: {missing}): {extras.install_hint(extra)}")


def require_serve_extra(command: str) -> None:
    """Stop with one line when the serve extra (torch, transformers, FastAPI, ...) is not installed."""
    require_extra("serve", f"`vlreward {command}`")


ENGINES = ("local", "ray")


@app.command()
def score(
    model: Annotated[str, typer.Option(help=describe("model") + " With --models: a model's name in the file.")],
    input: Annotated[
        Path, typer.Option("--input", help="local: JSONL, a Sample a line; ray: JSONL, Parquet or a datasets folder.")
    ],
    output: Annotated[
        Path, typer.Option(help="local: a JSONL file, one {'score'} per input line; ray: a folder of Parquet shards.")
    ],
    models: Annotated[
        Path | None, typer.Option(help="A models file as serve takes: --model names one of its models (or adapters).")
    ] = None,
    engine: Annotated[str, typer.Option(help="local: in this process; ray: on Ray Data (the ray extra).")] = "local",
    backend: Annotated[str, typer.Option(help=describe("backend"))] = default("backend"),
    batch_size: Annotated[int, typer.Option(min=1, help=describe("max_batch_size"))] = default("max_batch_size"),
    dtype: Annotated[str, typer.Option(help=describe("dtype"))] = default("dtype"),
    device: Annotated[str, typer.Option(help=describe("device"))] = default("device"),
    revision: Annotated[str | None, typer.Option(help=describe("revision"))] = None,
    allow_urls: Annotated[bool, typer.Option(help=describe("allow_urls"))] = False,
    address: Annotated[str | None, typer.Option(help="ray: a cluster to join (default: start a local Ray).")] = None,
    actors: Annotated[int, typer.Option(min=1, help="ray: scoring actors, each with one backend.")] = 1,
    actor_gpus: Annotated[float, typer.Option(min=0, help="ray: GPUs per scoring actor.")] = 0.0,
    preparers: Annotated[int, typer.Option(min=1, help="ray: CPU workers preparing rows for the actors.")] = 1,
    num_cpus: Annotated[int | None, typer.Option(min=1, help="ray: a local Ray's CPUs (default: all).")] = None,
    rows_per_shard: Annotated[int, typer.Option(min=1, help="ray: rows per shard (the unit of resuming).")] = 256,
) -> None:
    """Score samples offline (images as data URIs, bytes, or paths relative to the input's folder).

    With --engine ray the run is resumable: rerunning the same command skips the shards its output folder's
    manifest holds, and rows that cannot be scored go to errors.jsonl while the rest completes."""
    require_serve_extra("score")
    if engine not in ENGINES:
        raise typer.BadParameter(f"--engine {engine!r}: choose one of {', '.join(ENGINES)}")
    settings = Settings(backend=backend, dtype=dtype, device=device, max_batch_size=batch_size, revision=revision,
                        allow_urls=allow_urls)  # fmt: skip
    settings, model_dir, adapter = offline_model(model, models, settings)
    if engine == "ray":
        require_extra("ray", "--engine ray")
        from vlreward.offline.inputs import InputFileError
        from vlreward.offline.ray_engine import RayOptions, RunInterrupted, score_with_ray
        from vlreward.offline.shards import ResumeError

        options = RayOptions(address=address, num_cpus=num_cpus, actors=actors, actor_gpus=actor_gpus,
                             preparers=preparers)  # fmt: skip
        backend_settings = settings.model_dump(mode="json", exclude={"model", "models"}, exclude_none=True)
        try:
            manifest = score_with_ray(input, output, model_dir, backend_settings, options, rows_per_shard,
                                      adapter=adapter)  # fmt: skip
        except (InputFileError, ResumeError) as exc:
            raise fail(str(exc)) from None
        except RunInterrupted as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(130) from None
        rows = sum(done["rows"] for done in manifest.done.values())
        errors = sum(done["errors"] for done in manifest.done.values())
        typer.echo(f"wrote {rows} scores to {output} ({errors} rows in {output / 'errors.jsonl'})", err=True)
        if (output / "shift.json").exists():  # the input carried earlier scores (a traffic capture)
            typer.echo(f"score shift against the captured scores: {(output / 'shift.json').read_text()}", err=True)
        return
    from vlreward.service.offline import offline_backend, score_file

    engine_ = offline_backend(settings, model_dir, adapter)
    count = score_file(engine_, input, output, batch_size=batch_size)
    typer.echo(f"wrote {count} scores to {output}", err=True)


@app.command()
def convert(
    source: Annotated[str, typer.Argument(help="Published checkpoint: a directory or a Hugging Face repo id.")],
    destination: Annotated[Path, typer.Argument(help="New reward checkpoint directory.")],
    from_: Annotated[str, typer.Option("--from", help="Source layout: skywork.")] = "skywork",
    probe_device: Annotated[str, typer.Option(help="Device used to compute the start-up probe (float32).")] = default(
        "device"
    ),
    revision: Annotated[str | None, typer.Option(help=describe("revision"))] = None,
) -> None:
    """Convert a published reward model into the vlreward checkpoint contract, with a probe."""
    require_serve_extra("convert")
    from vlreward.service.model.checkpoint import CheckpointError
    from vlreward.service.model.convert import SOURCES
    from vlreward.service.model.hub import download, is_repo_id
    from vlreward.service.resolve import convert_into

    if from_ not in SOURCES:
        raise typer.BadParameter(f"unknown source layout {from_!r}; choose one of {', '.join(SOURCES)}")
    try:
        directory = download(source, revision) if is_repo_id(source) else Path(source)
        convert_into(directory, destination, probe_device)
    except CheckpointError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"converted {source} -> {destination}", err=True)


# Builds the embedded default model into a directory. Training owns the recipe, so :mod:`vlreward.cli`
# sets this to training's bootstrap when the train extra is installed; the service never imports training.
default_model_builder: Callable[[Path], object] | None = None


def offline_model(model: str, models: Path | None, settings: Settings) -> tuple[Settings, Path, Path | None]:
    """What ``vlreward score`` scores with: (its settings, its checkpoint folder, a LoRA adapter of it or None).
    Without a models file ``model`` is a folder or repo id; with one, the name of one of its models (its own
    settings on top of the flags'; an adapter: its base's). One line and exit 2 for what cannot be scored."""
    from vlreward.service.catalog import CatalogError, check_specs, model_settings, read_models_file

    if models is None:
        return settings, checkpoint_dir(model, settings), None
    try:
        specs = {spec.name: spec for spec in read_models_file(models)}
        check_specs(list(specs.values()))
    except CatalogError as exc:
        raise fail(str(exc)) from None
    spec = specs.get(model)
    if spec is None:
        raise fail(f"--model {model!r} is not in {models} (its models: {', '.join(map(str, specs))})")
    if spec.ensemble is not None:
        raise fail(f"{model!r} is an ensemble: score its members, whose reference statistics its formula needs")
    adapter = None
    if spec.settings.get("base") is not None:
        adapter, spec = Path(spec.source or ""), specs[spec.settings["base"]]
    try:
        own = model_settings(settings, spec)
    except CatalogError as exc:
        raise fail(str(exc)) from None
    return own, resolve_model(own), adapter


def checkpoint_dir(model: str, settings: Settings) -> Path:
    """A local directory for ``--model``: as given, or a Hugging Face repo id resolved through the cache
    (converted once into the vlreward home when it is in Skywork's layout). One line and exit 2 on failure."""
    from vlreward.service.model.checkpoint import CheckpointError
    from vlreward.service.resolve import resolve_checkpoint

    try:
        return resolve_checkpoint(model, settings.home, settings.revision, probe_device=settings.device)
    except CheckpointError as exc:
        raise fail(str(exc)) from None


def resolve_model(settings: Settings) -> Path:
    """The checkpoint to serve: ``settings.model`` or the embedded default (built on first start if absent)."""
    if settings.model is not None:
        return checkpoint_dir(settings.model, settings)
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


REPEATABLE = frozenset({"model"})
"""Settings whose flag may be given several times (``--model a=/x --model b=/y``: several models)."""


def served_models(settings: Settings, model_flags: list[str]) -> list:
    """The models to serve, each resolved to a local checkpoint directory and named (one line and exit 2
    for a flag, models file or checkpoint that cannot be served)."""
    from vlreward.service.catalog import CatalogError, model_settings, model_specs
    from vlreward.service.model.checkpoint import model_name

    try:
        specs = model_specs(settings, model_flags)
        resolved = []
        for spec in specs:
            if spec.settings.get("base") is not None:  # a LoRA adapter: a local folder, served on its base
                from vlreward.service.model.lora import is_adapter

                directory = Path(spec.source or "")
                if not is_adapter(directory):
                    raise CatalogError(f"model {spec.name!r} names a base, so {directory} must be a LoRA adapter "
                                       "folder (adapter_config.json)")  # fmt: skip
                resolved.append(spec.model_copy(update={"source": str(directory)}))
                continue
            directory = resolve_model(model_settings(settings, spec))
            name = spec.name or model_name(directory)
            resolved.append(spec.model_copy(update={"source": str(directory), "name": name}))
        return resolved
    except CatalogError as exc:
        raise fail(str(exc)) from None


def setting_options() -> list[inspect.Parameter]:
    """One ``--flag`` per setting, generated from the settings model: the
    flag's name, type and help come from the field, so a flag cannot drift from its variable. Every
    option defaults to None: unset flags leave the environment and the model's defaults in force."""
    options = []
    for name, field in Settings.model_fields.items():
        kinds = [t for t in typing.get_args(field.annotation) if t is not type(None)] or [field.annotation]
        if typing.get_origin(field.annotation) is typing.Literal:  # choices: a string the settings validate
            kinds = [str]
        shown = {None: "unset", "": "empty"}.get(field.default, field.default)
        help_text = f"{field.description} [env {env_name(name)}; default {shown}]"
        if name in REPEATABLE:
            option = typer.Option(help=help_text, show_default=False, metavar="[NAME=]PATH_OR_REPO")
            annotation = Annotated[list[str] | None, option]
        else:
            annotation = Annotated[kinds[0] | None, typer.Option(help=help_text, show_default=False)]
        options.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation))
    return options


def with_setting_flags(command: Callable[..., None]) -> Callable[..., None]:
    """Give ``command(**settings)`` a signature typer reads: one keyword option per setting."""
    parameters = setting_options()
    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in parameters}
    return command


@app.command()
@with_setting_flags
def serve(**flags: object) -> None:
    """Serve /score, /rank, /get_reward and /classify over HTTP. Every flag also reads VLREWARD_<NAME>;
    --model may be given once per model (NAME=PATH_OR_REPO), or --models names a YAML file of them."""
    require_serve_extra("serve")
    from vlreward.service.http.server import run

    model_flags = list(flags.pop("model", None) or [])
    settings = Settings(**{name: value for name, value in flags.items() if value is not None})
    specs = served_models(settings, model_flags)
    settings = settings.model_copy(update={"model": specs[0].source if len(specs) == 1 else None, "models": None})
    raise typer.Exit(run(settings, specs))
