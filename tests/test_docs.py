"""The documentation (issue #36): a README that stays short and an MkDocs site whose
every page, link and anchor resolves, built by MkDocs itself in strict mode."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_is_short_and_its_links_resolve():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert len(text.encode()) <= 12 * 1024
    for needed in ("pip install torch==2.14.1 torchvision==0.29.1 && pip install -e . && vadclip demo",
                   'pip install -e ".[test,cluster]" && python -m pytest -q -m "not slow" tests',
                   "vadclip extract", "vadclip train", "vadclip score"):
        assert needed in text
    local = [t for t in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text) if "://" not in t]
    assert local and all(os.path.exists(os.path.join(ROOT, t)) for t in local), local


def test_mkdocs_builds_the_site_strictly(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", os.path.join(ROOT, "mkdocs.yml"),
                        "-d", str(tmp_path / "site")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    pages = {os.path.splitext(f)[0] for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md")}
    built = {d for d in os.listdir(tmp_path / "site") if os.path.isdir(tmp_path / "site" / d)}
    assert pages - {"index"} <= built and (tmp_path / "site" / "index.html").is_file()


# what "session" may mean in the docs: Ray's own session folder and a cloud credential's session
# token; anything else ("session 10", "no session has been lent a GPU") speaks of who worked when
_TECHNICAL_SESSION = re.compile(r"Ray session|session token|session's `logs/`|start_new_session", re.I)


def test_the_docs_speak_of_the_project_with_dates_commits_and_commands():
    pages = [os.path.join(ROOT, "README.md")] + [os.path.join(ROOT, "docs", f)
                                                 for f in sorted(os.listdir(os.path.join(ROOT, "docs")))
                                                 if f.endswith(".md")]
    found = []
    for p in pages:
        for n, line in enumerate(open(p, encoding="utf-8"), 1):
            if re.search(r"\bsessions?\b", _TECHNICAL_SESSION.sub("", line), re.I):
                found.append(f"{os.path.relpath(p, ROOT)}:{n}: {line.strip()[:120]}")
    assert not found, "\n".join(found)
