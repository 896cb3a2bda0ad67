"""Repository hygiene: no file carries unresolved merge-conflict markers; the docs build that CI
runs matches the docs extra and the Sphinx configuration."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_no_tracked_file_has_conflict_markers():
    try:
        listed = subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    offenders = []
    for name in listed:
        path = ROOT / name
        if path.suffix in {".npz", ".png", ".gz", ".onnx"} or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            if line.startswith(("<<<<<<< ", ">>>>>>> ")) or line == "=======":
                offenders.append(f"{name}:{number}")
    assert not offenders, f"unresolved merge conflicts at {offenders}"


DOCS_BUILD = "python -m sphinx -W --keep-going -b html docs docs/_build/html"


def test_the_docs_extra_and_the_docs_build_agree():
    """CI installs the docs extra and runs the one build command (failing on warnings); the
    extra installs what docs/conf.py uses. Static: the docs are not built here."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    if not (ROOT / "docs" / "conf.py").is_file():
        pytest.skip("no docs/ beside the tests (an installed copy, as in the test image)")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    docs_extra = project["optional-dependencies"]["docs"]
    names = {
        re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower() for requirement in docs_extra
    }
    conf = (ROOT / "docs" / "conf.py").read_text()
    assert "sphinx" in names
    if "myst_parser" in conf:
        assert "myst-parser" in names
    theme = re.search(r'^html_theme = "([^"]+)"', conf, re.MULTILINE).group(1)
    assert theme == "alabaster" or theme in names, f"theme {theme!r} is not in the docs extra"
    if "numpydoc" in conf:
        assert "numpydoc" in names
    ci = (ROOT / ".ci" / "run").read_text()
    assert DOCS_BUILD in ci and '".[docs]"' in ci
    assert ci.index(DOCS_BUILD) > ci.index("\npytest\n"), "the docs build runs after the tests"
    assert DOCS_BUILD in conf and DOCS_BUILD in (ROOT / "README.md").read_text()
    for page in ("index.md", "install.md", "api.rst", "performance.md"):
        assert (ROOT / "docs" / page).is_file(), page
    ignored = (ROOT / ".gitignore").read_text().split()
    assert "docs/_build/" in ignored
