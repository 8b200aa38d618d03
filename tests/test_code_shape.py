"""The shape issue #43 asks of the jobs: small functions, and no test machinery in the
package (fault injection lives in tests/faultinject.py)."""
import ast
import pathlib

import vadclip

PACKAGE = pathlib.Path(vadclip.__file__).parent
LONGEST = 80


def test_no_function_in_jobs_runs_past_80_lines():
    long = []
    for f in sorted((PACKAGE / "jobs").glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > LONGEST:
                    long.append(f"{f.name}:{node.lineno} {node.name} ({n} lines)")
    assert not long, long


def test_the_package_reads_no_test_switch():
    assert not (PACKAGE / "jobs" / "faults.py").exists()
    found = [f"{f.relative_to(PACKAGE)}: {word}" for f in PACKAGE.rglob("*.py")
             for word in ("VADCLIP_TEST_", "VADCLIP_INJECT_FAULTS", "os._exit(") if word in f.read_text()]
    assert not found, found
