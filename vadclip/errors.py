"""Errors that name a problem of the user's input or configuration (a file, a table,
a model URI, an option).  The CLI prints their one-line message and exits 2; every
other exception is a problem of the environment or a bug and keeps its traceback."""
from __future__ import annotations


class InputError(ValueError):
    """Bad input or configuration; the message names the file/option and the problem."""


class MissingInputError(InputError, FileNotFoundError):
    """A path or URI the user gave does not exist."""


def one_line(exc: BaseException, limit: int = 400) -> str:
    """The first line of an exception's message, bounded in length."""
    text = str(exc).strip().splitlines()
    msg = text[0] if text else type(exc).__name__
    return msg if len(msg) <= limit else msg[:limit] + "…"
