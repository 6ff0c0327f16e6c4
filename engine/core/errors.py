"""User errors: one record per mistake, rendered as one block by the CLI.

A `UserError` is a mistake in the user's files, flags or recipe code (exit code 2). Several found
together travel as `UserErrors`. Rendering lives here so every verb prints the same shape::

    error: unknown config key 'epocs'
      where: recipes.toml [ranking_v2.train]
      expected: one of epochs, batch_size, ...
      found: epocs = 3
      hint: did you mean 'epochs'?
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence


class UserError(Exception):
    """A mistake the user can fix: exit code 2, one message, no traceback."""

    def __init__(self, what: str, *, where: str | None = None, expected: str | None = None,
                 found: str | None = None, hint: str | None = None) -> None:
        super().__init__(what)
        self.what = what
        self.where = where
        self.expected = expected
        self.found = found
        self.hint = hint

    def render(self) -> str:
        """The error as the block the CLI prints on stderr."""
        lines = [f"error: {self.what}"]
        for label in ("where", "expected", "found", "hint"):
            value = getattr(self, label)
            if value is not None:
                lines.append(f"  {label}: {value}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


class UserErrors(Exception):
    """Several user errors found together; each is rendered as its own block."""

    def __init__(self, errors: Sequence[UserError]) -> None:
        super().__init__(f"{len(errors)} errors")
        self.errors = list(errors)

    def render(self) -> str:
        """Every error's block, one after another."""
        return "\n".join(e.render() for e in self.errors)

    def __str__(self) -> str:
        return self.render()


def raise_all(errors: Sequence[UserError]) -> None:
    """Raise nothing, the one error, or all of them together."""
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise UserErrors(errors)


def first_line(exc: BaseException) -> str:
    """`TypeName: first line of the message` (at most 300 characters): a library's error can
    span a page."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__


def close_match(word: str, choices: Iterable[str]) -> str | None:
    """The closest of `choices` to a misspelt `word`, as a hint, or None."""
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean '{matches[0]}'?" if matches else None


def describe_value(value: object) -> str:
    """A value as an error shows it: its type and a short repr (`str 'ten'`)."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"
