"""Reading what a ``vadclip`` command printed, the same way in every test."""
import json


def result_json(out: str) -> dict:
    """The command's JSON result: the last top-level object on stdout (an in-process
    ``main`` shares stdout with whatever the test process printed before)."""
    start = 0 if out.startswith("{\n") else out.rindex("\n{\n") + 1
    return json.loads(out[start:])


def one_error_line(err: str, *expected: str) -> str:
    """stderr of a failed command: no traceback, exactly one ``vadclip CMD: error:`` line,
    holding each of ``expected``."""
    assert "Traceback" not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("vadclip ")]
    assert len(lines) == 1 and ": error: " in lines[0], err[-3000:]
    for e in expected:
        assert e in lines[0], lines[0]
    return lines[0]
