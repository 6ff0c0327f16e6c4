"""`python -m engine`: arguments, verbs, exit codes and error rendering."""

from engine.cli.main import main

__all__ = ["main"]
