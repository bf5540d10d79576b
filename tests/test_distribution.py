"""What a user installs: the wheel carries the PEP 561 marker and the LICENSE, its metadata says
what the LICENSE says, and mypy run on a user's file sees forkjoin's types.

The wheel test builds from a copy of the checkout (no build/ or egg-info left in the tree) and
installs into a fresh virtual environment with pip's cache, then type-checks a user's file
against that environment alone.
"""

from __future__ import annotations

import email.parser
import os
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest's own dependency on 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

USER_FILE = """\
import forkjoin as fj

def score(n: int) -> float:
    return n / 2

results = fj.map(score, range(10))
reveal_type(results)
with fj.Pool(workers=2) as pool:
    reveal_type(pool.submit(score, 3))
wrong: str = fj.map(score, range(10))
"""


def test_license_file_matches_the_metadata() -> None:
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text  # the full text, not a pointer to it


def test_typed_marker_changelog_and_urls() -> None:
    assert (ROOT / "src" / "forkjoin" / "py.typed").is_file()
    assert PYPROJECT["tool"]["setuptools"]["package-data"]["forkjoin"] == ["py.typed"]
    changelog = (ROOT / "CHANGELOG.md").read_text()
    version = PYPROJECT["project"]["version"]
    assert f"## {version}" in changelog, f"CHANGELOG.md has no section for {version}"
    import forkjoin

    assert forkjoin.__version__ == version
    urls = PYPROJECT["project"]["urls"]
    assert {"Homepage", "Documentation", "Source", "Issues", "Changelog"} <= set(urls)
    assert all(url.startswith("https://") for url in urls.values())
    assert "Typing :: Typed" in PYPROJECT["project"]["classifiers"]


def test_docs_extra_is_in_the_test_extra() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert set(extras["docs"]) <= set(extras["test"])


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the project's packaging inputs."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    (built,) = out.glob("forkjoin-*.whl")
    return built


@pytest.mark.slow
def test_wheel_carries_py_typed_and_license(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert "forkjoin/py.typed" in names
        licenses = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert licenses, f"no LICENSE in the wheel's dist-info: {names[-8:]}"
        assert archive.read(licenses[0]) == (ROOT / "LICENSE").read_bytes()
        metadata_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = email.parser.Parser().parsestr(archive.read(metadata_name).decode())
    assert metadata["License-Expression"] == "Apache-2.0"
    assert "Typing :: Typed" in metadata.get_all("Classifier")
    assert any(url.startswith("Changelog, ") for url in metadata.get_all("Project-URL"))
    assert not [n for n in names if n.startswith(("tests/", "docs/", "benchmarks/"))]


@pytest.mark.slow
def test_mypy_sees_forkjoins_types_from_a_users_file(wheel: Path, tmp_path: Path) -> None:
    # the checkout's src/ must not be seen (developers run the tests with PYTHONPATH=src)
    clean_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)  # pip runs from outside, with its cache
    python = env_dir / "bin" / "python"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--disable-pip-version-check",
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    installed = subprocess.run(
        [str(python), "-c", "import forkjoin, pathlib; print(pathlib.Path(forkjoin.__file__))"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=clean_env,
    )
    assert str(env_dir) in installed.stdout, done.stdout[-3000:]

    project = tmp_path / "user"
    project.mkdir()
    (project / "app.py").write_text(USER_FILE)
    checked = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--python-executable",
            str(python),
            "--no-incremental",
            "--config-file",
            "",
            "--strict-optional",
            "app.py",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=project,
        env=clean_env,
    )
    out = checked.stdout + checked.stderr
    assert "missing library stubs or py.typed marker" not in out, out
    # mypy before 2.0 spells builtins out ("builtins.list[builtins.float]")
    assert re.search(r'Revealed type is "(builtins\.)?list\[(builtins\.)?float\]"', out), out
    future = r'Revealed type is "concurrent\.futures\._base\.Future\[(builtins\.)?float\]"'
    assert re.search(future, out), out
    assert 'Incompatible types in assignment (expression has type "list[float]"' in out, out
    assert checked.returncode == 1  # exactly that one deliberate error
    assert "Found 1 error" in out, out
