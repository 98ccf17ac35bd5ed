"""``python -m training`` runs the ``vlreward`` command."""

from training.cli import app

app(prog_name="vlreward")
