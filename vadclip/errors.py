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

import re


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
        # raised in a worker: Ray hands back its own wrapper (an instance of the same class too)
        # whose first line names the actor; the problem's own line is in its text.  An actor
        # that died in its constructor hands back only that text
        m = re.search(r"(?:[\w.]+\.)?(?:EnvironmentProblem|LeaseLost): ([^\n]+)", str(exc))
        if m:
            return EnvironmentProblem(m.group(1).strip())
        if isinstance(exc, EnvironmentProblem):
            return exc
        refused = storage_refused(exc)
        if refused is not None:
            return refused
        busy = _client_gave_up(exc)
        if busy is not None:
            return busy
        exc = exc.__cause__ or exc.__context__ or getattr(exc, "cause", None)
    return None


# what a busy or unreachable store says (retried by vadclip.io.storage; named by the CLI)
TRANSIENT = re.compile(r"SLOW_?DOWN|SlowDown|503|500 |InternalError|ServiceUnavailable|Throttl|RequestTimeout|"
                       r"timed? ?out|Timeout|Connection (was )?reset|reset by peer|Broken pipe|curlCode|"
                       r"Unable to connect|connection refused|NETWORK_CONNECTION|Could not connect|"
                       r"Couldn't connect|Error in HTTP|SERVICE_UNAVAILABLE|INTERNAL_FAILURE|Failed to connect",
                       re.IGNORECASE)

# boto3/botocore (MLflow's artifact store client) raise these once their own retries are spent
_CLIENT_ERRORS = ("S3UploadFailedError", "ClientError", "EndpointConnectionError", "ConnectTimeoutError",
                  "ReadTimeoutError", "ConnectionClosedError")


def _client_gave_up(exc: BaseException):
    """An :class:`EnvironmentProblem` for a storage client's error that says the store was busy
    or unreachable after the client's own retries (MLflow's artifact uploads), else None."""
    if type(exc).__name__ in _CLIENT_ERRORS and TRANSIENT.search(str(exc)):
        return EnvironmentProblem(f"storage kept failing: {(str(exc).strip().splitlines() or [''])[0][:300]}")
    return None


# what a store or a disk says when it will not do what a job needs, however often asked: the
# environment's (credentials, permissions, space), never a video's; retrying does not help
_REFUSALS = ("ACCESS_DENIED", "AccessDenied", "Access Denied", "ExpiredToken", "InvalidAccessKeyId",
             "SignatureDoesNotMatch", "No space left on device", "Disk quota exceeded", "Read-only file system",
             "Permission denied")


def storage_refused(exc: BaseException):
    """An :class:`EnvironmentProblem` for ``exc`` when it is a store or a disk refusing
    (access denied, an expired or wrong credential, no space left, a read-only or
    forbidden path), else None."""
    import errno

    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES,
                                                   errno.EPERM) or any(r in text for r in _REFUSALS):
        # the line that says it (a worker's error comes back inside Ray's own text), not Ray's wrapper
        said = [ln.strip() for ln in text.splitlines() if any(r in ln for r in _REFUSALS)]
        line = said[-1] if said else one_line(exc, 300)
        line = re.sub(r"^(?:[\w.]+(?:Error|Exception)|OSError): ", "", line)
        return EnvironmentProblem(f"storage refused: {line[:300]}")
    return None
