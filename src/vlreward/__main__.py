"""``python -m vlreward`` runs the ``vlreward`` command (``accelerate launch -m vlreward train ...``)."""

from vlreward.cli import main

main()
