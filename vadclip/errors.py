"""The two kinds of problem a job meets, and how each is handled.

* :class:`InputError` — the user's input or configuration: a file, a table, a video,
  a model URI, an option.  Its message is one line naming the thing and the problem.
  The CLI prints it and exits 2; inside a batch job a bad video becomes an error row
  and the job goes on.
* :class:`EnvironmentProblem` — the machine or the cluster: a library that does not
  load, a node that lacks what it was promised, storage that does not answer.  Never
  recorded as a bad video: inside a job Ray retries the task, then the job fails; the
  CLI prints its one line and exits 3.

Any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations


class VadclipError(Exception):
    """Every problem vadclip names itself."""


class InputError(VadclipError, ValueError):
    """Bad input or configuration; the message names the file/option and the problem."""


class MissingInputError(InputError, FileNotFoundError):
    """A path or URI the user gave does not exist."""


class EnvironmentProblem(VadclipError, RuntimeError):
    """The machine or cluster cannot do what was asked (retried, then fails the job)."""


def one_line(exc: BaseException, limit: int = 400) -> str:
    """The first line of an exception's message, bounded in length."""
    text = str(exc).strip().splitlines()
    msg = text[0] if text else type(exc).__name__
    return msg if len(msg) <= limit else msg[:limit] + "…"


def environment_cause(exc: BaseException):
    """The :class:`EnvironmentProblem` behind ``exc`` (raised in a worker, handed back by
    Ray wrapped, the cause kept in the chain), or None."""
    import re

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, EnvironmentProblem):
            return exc
        # an actor that died in its constructor hands back only the text of its error
        m = re.search(r"(?:vadclip\.errors\.)?EnvironmentProblem: ([^\n]+)", str(exc))
        if m:
            return EnvironmentProblem(m.group(1).strip())
        exc = exc.__cause__ or exc.__context__ or getattr(exc, "cause", None)
    return None
