"""The package's layers (vadclip/__init__.py) hold: import-linter's contracts in
pyproject.toml are kept, there is no import cycle between modules, the storage layer
loads no torch and open_clip is imported on first use only."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(cwd))
    # the lint-imports of this interpreter's environment, not whichever PATH finds first
    tool = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(tool) if tool.exists() else shutil.which("lint-imports") or "lint-imports",
                           "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_import_contracts_are_kept():
    r = _lint(ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


def test_a_layering_violation_fails_the_check(tmp_path):
    # the check is real: the same contracts on a copy whose storage module imports torch
    shutil.copytree(ROOT / "vadclip", tmp_path / "vadclip", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    storage = tmp_path / "vadclip" / "io" / "storage.py"
    storage.write_text(storage.read_text() + "\n\ndef _late():\n    import torch  # noqa\n")
    metrics = tmp_path / "vadclip" / "metrics" / "measures.py"
    metrics.write_text(metrics.read_text() + "\n\ndef _late2():\n    from vadclip.jobs import score  # noqa\n")
    r = _lint(tmp_path)
    assert r.returncode != 0
    assert "vadclip.io.storage -> torch" in r.stdout
    assert "vadclip.metrics.measures -> vadclip.jobs.score" in r.stdout


def _cycles(graph) -> list:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if not w.startswith("vadclip"):
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for m in sorted(graph.modules):
        if m.startswith("vadclip") and m not in index:
            visit(m)
    return out


def test_no_import_cycle():
    sys.setrecursionlimit(10000)
    graph = grimp.build_graph("vadclip", cache_dir=None)
    assert _cycles(graph) == []
    # the check is real: one import back from the CLIP spec to the model config is a cycle
    graph.add_import(importer="vadclip.clip.spec", imported="vadclip.model.config")
    assert ["vadclip.clip.spec", "vadclip.model.config"] in _cycles(graph)


def test_storage_loads_no_torch_and_open_clip_waits_for_first_use():
    code = ("import sys, vadclip.io.storage, vadclip.io.features, vadclip.io.gt\n"
            "heavy = [m for m in ('torch', 'open_clip', 'ray', 'mlflow') if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "import vadclip.clip.backbone, vadclip.model.network\n"
            "assert 'open_clip' not in sys.modules\n"
            "from vadclip.model.config import ClipSpec\n"
            "assert ClipSpec.tiny().embed_dim == 32 and ClipSpec().image_size == 224\n"
            "assert 'open_clip' not in sys.modules\n"        # a model's sizes: its config file, read as JSON
            "from vadclip.clip.catalog import _config_files, open_clip_module\n"
            "oc = open_clip_module()\n"
            "assert sorted(_config_files()) == sorted(oc.list_models())\n"
            "assert all(_config_files()[m] == oc.get_model_config(m) for m in oc.list_models())\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.slow
def test_an_extraction_driver_imports_neither_torch_nor_open_clip(tmp_path):
    """What `vadclip extract` runs on the driver (the checks, the plan, the listing and the
    folder's done set) needs neither torch nor open_clip (their import alone was 690 MB of a
    nightly no-op's 1,056 MB peak at 100,000 recordings): a run with work, then the re-run
    with nothing to do, in one process, which then holds neither."""
    from vadclip.video.samples import make_sample_set

    make_sample_set(str(tmp_path / "v"), 1, 1, frames_range=(40, 50), seed=1, prefix="d")
    code = ("import sys\n"
            "from vadclip.jobs.extract import ExtractOptions, run_extract\n"
            "from vadclip.model.config import ClipSpec\n"
            "opts = ExtractOptions(clip=ClipSpec.tiny())\n"
            f"s = run_extract({str(tmp_path / 'v')!r}, {str(tmp_path / 'o')!r}, opts, log=lambda *_: None)\n"
            "assert s['videos_ok'] == 2, s\n"
            f"s = run_extract({str(tmp_path / 'v')!r}, {str(tmp_path / 'o')!r}, opts, log=lambda *_: None)\n"
            "assert s['videos_ok'] == 0 and s['videos_skipped'] == 2, s\n"
            "heavy = [m for m in ('torch', 'open_clip', 'torchcodec') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def test_the_fallback_for_open_clips_private_rule_agrees_with_it(monkeypatch):
    """vadclip.clip.weights.safe_alternatives uses open_clip's private
    _get_safe_alternatives where it exists; its own rule, used where it does not, gives
    the same answers."""
    import open_clip.pretrained as ocp

    from vadclip.clip import weights

    names = [ocp.HF_WEIGHTS_NAME, "model.bin", "ViT-B-16.pth", "model.safetensors", "weights.pt"]
    real = [weights.safe_alternatives(n) for n in names]
    assert real == [list(ocp._get_safe_alternatives(n)) for n in names]
    assert (weights.HF_WEIGHTS_NAME, weights.HF_SAFE_WEIGHTS_NAME) == (ocp.HF_WEIGHTS_NAME, ocp.HF_SAFE_WEIGHTS_NAME)
    monkeypatch.delattr(ocp, "_get_safe_alternatives")
    assert [weights.safe_alternatives(n) for n in names] == real
