"""The one ``vlreward`` command, assembled here so that the service does not depend on training.

The service's commands (serve, score, convert) are always there; training's (train, export,
bootstrap, eval, data, ...) join when the train extra is installed, and then ``vlreward serve``
without ``--model`` can build the embedded default model on first start.
"""

from __future__ import annotations

import typer

from vlreward import extras
from vlreward.service import cli as service_cli

app = typer.Typer(
    help="vlreward: train, evaluate and serve multimodal reward models.",
    no_args_is_help=True,
    rich_markup_mode=None,  # help texts are plain: `vlreward[train]` is not markup
    epilog=None
    if extras.installed("train")
    else (
        "Training commands (train, export, bootstrap, eval, data, pairs) need the train extra: "
        + extras.install_hint("train")
    ),
)
app.add_typer(service_cli.app)

if extras.installed("train"):
    from vlreward.training.bootstrap import bootstrap
    from vlreward.training.cli import app as training_app

    app.add_typer(training_app)
    service_cli.default_model_builder = bootstrap


def main() -> None:
    """Console-script entry point."""
    app(prog_name="vlreward")
