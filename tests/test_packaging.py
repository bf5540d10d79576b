"""The README's test command installs everything the tests use: a fresh virtual environment with
``pip install -e ".[test]"`` runs every test, and none is skipped for a missing package.

A test of an optional layer (torch, Ray, Dask, pyarrow, scikit-learn...) imports it plainly:
``pytest.importorskip`` would turn a package missing from the ``test`` extra into a quiet skip
instead of the failure that says to add it."""

from __future__ import annotations

import ast
import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest's own dependency on 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("tests", "examples")  # what the README's test command runs or imports


def _project() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as handle:
        return tomllib.load(handle)["project"]


def _installed_by_test_extra() -> set[str]:
    """Distribution names that ``pip install -e ".[test]"`` brings in: the core dependencies,
    the ``test`` extra, and what those require in turn (with the extras they ask for)."""
    project = _project()
    pending = [
        Requirement(r)
        for r in [*project["dependencies"], *project["optional-dependencies"]["test"]]
    ]
    seen: set[str] = set()
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(requirement.name) or []
        except metadata.PackageNotFoundError:
            continue  # not installed here: its own requirements cannot be read
        for text in requires:
            needed = Requirement(text)
            extras = requirement.extras or {""}
            env = default_environment()
            if needed.marker is None or any(
                needed.marker.evaluate({**env, "extra": extra}) for extra in extras
            ):
                pending.append(needed)
    return seen


def _imported_top_level_modules() -> dict[str, list[str]]:
    """Top-level modules imported anywhere in the scanned trees -> files importing them."""
    local = {p.stem for d in (*SCANNED, "benchmarks") for p in (ROOT / d).rglob("*.py")}
    local |= {"forkjoin", "conftest"}
    found: dict[str, list[str]] = {}
    for directory in SCANNED:
        for path in (ROOT / directory).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            versioned = {  # imports that depend on the Python version, as just above
                id(inner)
                for node in ast.walk(tree)
                if isinstance(node, ast.If) and "version_info" in ast.unparse(node.test)
                for inner in ast.walk(node)
            }
            for node in ast.walk(tree):
                if id(node) in versioned:
                    continue
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.partition(".")[0]
                    if top not in sys.stdlib_module_names and top not in local:
                        found.setdefault(top, []).append(str(path.relative_to(ROOT)))
    return found


def test_every_package_the_tests_import_is_installed_by_the_test_extra() -> None:
    installed = _installed_by_test_extra()
    providers = metadata.packages_distributions()
    missing = {}
    for module, files in sorted(_imported_top_level_modules().items()):
        dists = {canonicalize_name(d) for d in providers.get(module, [module])}
        if not dists & installed:
            missing[module] = sorted(set(files))[:3]
    assert not missing, (
        f"imported by tests but not installed by pip install -e '.[test]': {missing}; add "
        f"them to the test extra in pyproject.toml"
    )


def test_no_test_skips_for_a_missing_package() -> None:
    pattern = re.compile(r"importorskip\(|skip\w*\([^)]*(not installed|no module)", re.IGNORECASE)
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in (ROOT / "tests").rglob("*.py")
        if path.name != Path(__file__).name
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line) and "chromium" not in line  # a system package, see README
    ]
    assert not offenders, (
        f"tests that skip when a package is missing: {offenders}; import it plainly and add "
        f"it to the test extra instead"
    )
