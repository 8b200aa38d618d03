"""Dependency bounds that are true (issue #36): the constraints file a cluster image is
built with pins every direct dependency at a version pyproject.toml allows."""
import os
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pins():
    pins = {}
    for line in open(os.path.join(ROOT, "constraints.txt")):
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[canonicalize_name(name)] = version.split("+")[0]
    return pins


def test_constraints_pin_every_direct_dependency_within_its_bounds():
    deps = [Requirement(r) for r in tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))["project"]
            ["dependencies"]]
    pins = _pins()
    for req in deps:
        name = canonicalize_name(req.name)
        assert name in pins, f"constraints.txt does not pin {req.name}"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} is outside {req}"

