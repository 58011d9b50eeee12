"""``python -m ticketsolver`` is the CLI."""

from ticketsolver.cli import main

main()
