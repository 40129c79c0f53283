"""The code base stays lint-clean: ruff over the Python, cython-lint over the Cython
(versions pinned in the `test` extra so a new linter release cannot turn CI red)."""
import shutil
import subprocess
from pathlib import Path

from conftest import missing

ROOT = Path(__file__).resolve().parent.parent


def run(cmd):
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)


def test_python_sources_pass_ruff():
    if shutil.which("ruff") is None:
        missing("ruff", pip="ruff")
    res = run(["ruff", "check", "fastgear", "tests", "bench"])
    assert res.returncode == 0, res.stdout + res.stderr


def test_cython_sources_pass_cython_lint():
    if shutil.which("cython-lint") is None:
        missing("cython-lint", pip="cython-lint")
    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "fastgear").rglob("*")
                     if p.suffix in (".pyx", ".pxd", ".pxi"))
    res = run(["cython-lint", "--max-line-length", "100"] + sources)
    assert res.returncode == 0, res.stdout + res.stderr
