"""The cluster image (issue #47): the repository's Dockerfile is what cluster.yaml, every KubeRay
manifest and the docs run, and its install steps work. No Docker daemon runs here, so the
slow test does what the Dockerfile does, step by step: the files its COPY lines name into a
build folder, a clean venv (no site packages) for the image's Python, and each RUN line
that installs or checks Python packages, as written, in that folder (its WORKDIR)."""
import glob
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
import yaml

from vadclip._version import __version__

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = f"vadclip:{__version__}"


def _dockerfile():
    """(instruction, argument) pairs of the Dockerfile, continuation lines joined."""
    text = open(os.path.join(ROOT, "Dockerfile"), encoding="utf-8").read()
    text = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _pin(name):
    for line in open(os.path.join(ROOT, "constraints.txt")):
        if line.lower().startswith(f"{name}=="):
            return line.split("==", 1)[1].strip()
    raise AssertionError(f"constraints.txt pins no {name}")


def _container_images(doc):
    found = []

    def walk(node):
        if isinstance(node, dict):
            if "containers" in node:
                found.extend(c.get("image") for c in node["containers"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(doc)
    return found


def test_the_image_is_built_from_the_ray_release_in_use_and_named_everywhere():
    steps = _dockerfile()
    base = [a for k, a in steps if k == "FROM"]
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    assert base == [f"rayproject/ray:{_pin('ray')}-{py}-gpu"], base
    assert f"docker build -t {IMAGE} ." in open(os.path.join(ROOT, "Dockerfile")).read()
    assert yaml.safe_load(open(os.path.join(ROOT, "cluster.yaml")))["docker"]["image"] == IMAGE
    manifests = sorted(glob.glob(os.path.join(ROOT, "deploy", "kuberay", "*.yaml")))
    assert manifests
    for m in manifests:
        images = [i for doc in yaml.safe_load_all(open(m)) if doc for i in _container_images(doc)]
        assert images and set(images) == {IMAGE}, (m, images)
    for page in ("kubernetes.md", "cluster.md"):
        text = open(os.path.join(ROOT, "docs", page), encoding="utf-8").read()
        assert "Dockerfile" in text and IMAGE in text, page
    # the job entry points a manifest runs are where the image's WORKDIR puts them
    workdir = [a for k, a in steps if k == "WORKDIR"][-1]
    copied = " ".join(a for k, a in steps if k == "COPY")
    assert "jobs" in copied and workdir.startswith("/home/ray/")


@pytest.mark.slow
def test_the_image_install_steps_work_in_a_clean_venv(tmp_path):
    steps = _dockerfile()
    ctx = tmp_path / "image" / "workdir"
    ctx.mkdir(parents=True)
    for k, arg in steps:
        if k != "COPY":
            continue
        parts = [p for p in shlex.split(arg) if not p.startswith("--")]
        *sources, dest = parts
        for src in sources:
            target = ctx / dest / (os.path.basename(src) if dest.endswith("/") or dest in (".", "./") else "")
            s = os.path.join(ROOT, src)
            if os.path.isdir(s):
                shutil.copytree(s, target if not dest.endswith("/") and dest not in (".", "./") else ctx / src,
                                ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
            else:
                shutil.copy(s, target)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = dict(os.environ, PATH=f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", VIRTUAL_ENV=str(venv))
    env.pop("PYTHONPATH", None)
    ran = []
    for k, arg in steps:
        if k != "RUN" or "apt-get" in arg:      # FFmpeg comes from the base image's Debian: not a venv's
            continue
        r = subprocess.run(arg, shell=True, cwd=ctx, env=env, capture_output=True, text=True, timeout=1500)
        assert r.returncode == 0, f"RUN {arg}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        ran.append(arg)
    assert any("pip install" in a for a in ran) and any("vadclip --help" in a for a in ran)
    # installed (not editable) from the build folder, at the versions CI tests
    show = subprocess.run([str(venv / "bin" / "python"), "-c",
                           "import vadclip, torch, ray, mlflow; print(vadclip.__file__); "
                           "print(torch.__version__.split('+')[0], ray.__version__, mlflow.__version__)"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, check=True).stdout.split("\n")
    assert show[0].startswith(str(venv)), show
    assert show[1].split() == [_pin("torch"), _pin("ray"), _pin("mlflow")]
    check = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "check"], capture_output=True, text=True,
                           env=env)
    assert check.returncode == 0, check.stdout[-2000:]
    shutil.rmtree(venv)     # 6 GB: pytest keeps the tmp_path of its last three sessions
