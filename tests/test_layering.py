"""The dependency rule, stated once: which part of forkjoin may import which.

Arrows point to what a layer may import::

    __main__, cli.py ──> observe/ bench/ data/ train/ integrations/ testing demo/ mapfile sysinfo
                                  │
                                  ▼
                               engine/ ──────────> backends/base.py ◄── backends/* (every backend)
                                  │                        │                  │
                                  └──────────> core/ ◄─────┴──────────────────┘
                                                 │
                                                 ▼
                          errors.py  machine.py  _text.py   (leaves: import nothing of forkjoin
                              │                              but errors.py -> _portable.py)
                              ▼
                          _portable.py

Every rule is a row below (``LOWER_LAYERS``, ``LAZY_ONLY``, ``ABOVE_THE_ENGINE``, ``ONLY_FROM``,
``LIGHT``); the tests read imports from each module's syntax tree (``ast``), so a string that
merely mentions a module never counts, and a relative import is resolved like Python does.
The docs (docs/architecture.md) describe this file; they do not restate it.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import forkjoin as fj

pytestmark = pytest.mark.timeout(120)

SRC = Path(fj.__file__).parent

# -- the rules -------------------------------------------------------------------------------------

LEAVES = ("forkjoin._text", "forkjoin._portable", "forkjoin.errors", "forkjoin.machine")

# The lower layers, each with every part of forkjoin it may import (a name allows its submodules).
# Nothing else: in particular never engine/ from core/ or backends/, and never data/, train/,
# bench/, observe/, cli from any of them.
LOWER_LAYERS: dict[str, tuple[str, ...]] = {
    **{leaf: () for leaf in LEAVES},
    # how an item's exception crosses a process, apart so that a worker need not import errors
    "forkjoin.errors": ("forkjoin._portable",),
    # the task model and the worker-side runtime, shared by the engine and every backend
    "forkjoin.core": (*LEAVES, "forkjoin.core"),
    # how tasks run; a backend knows the task model, never the scheduler that feeds it
    "forkjoin.backends": (*LEAVES, "forkjoin.core", "forkjoin.backends"),
    # split/assign/merge; knows backends only through their interface (capability flags, by name)
    "forkjoin.engine": (
        *LEAVES,
        "forkjoin.core",
        "forkjoin.engine",
        "forkjoin.backends.base",
        "forkjoin.observe.runs",  # only inside a function: see LAZY_ONLY
    ),
}

# importer -> modules it may import only inside a function (loaded when a feature is first used)
LAZY_ONLY = {
    # profile= and dashboard= hand the engine's events to the observe layer; a plain run never
    # loads it (and never its web UI: observe.dashboard/live are outside the engine's list above)
    "forkjoin.engine": ("forkjoin.observe",),
}

# The layers above the engine reach a backend only through backends.base (resolution by name),
# except these modules, each for the reason given.
ABOVE_THE_ENGINE = (
    "forkjoin.data", "forkjoin.train", "forkjoin.bench", "forkjoin.observe",
    "forkjoin.integrations", "forkjoin.testing", "forkjoin.demo", "forkjoin.cli",
    "forkjoin.mapfile", "forkjoin.sysinfo",
)  # fmt: skip
BACKEND_EXCEPTIONS = {
    # a Spark training gang runs its ranks in the Spark session the spark backend manages
    "forkjoin.train.spark_launch": ("forkjoin.backends.spark_session",),
}

# module -> the only importers it may have (the command line is a leaf of the whole tree)
ONLY_FROM = {
    "forkjoin.cli": ("forkjoin.__main__", "forkjoin.data.commands", "forkjoin.bench.commands",
                     "forkjoin.observe.commands", "forkjoin.train.commands"),
}  # fmt: skip

# Optional or heavy packages that neither `import forkjoin` nor a plain map in worker processes
# may load at import time: each is imported inside the function (or the backend module, itself
# loaded by name) that needs it.
HEAVY = (
    "ray", "dask", "distributed", "pyspark", "torch", "pyarrow", "pandas", "polars", "duckdb",
    "rich", "matplotlib", "aiohttp", "sklearn", "joblib", "fsspec", "numpy",
)  # fmt: skip
LIGHT = {
    # what `import forkjoin` runs
    "import forkjoin": ("forkjoin",),
    # what a caller loads for fj.map / fj.Pool on the built-in backends
    "a plain map": (
        "forkjoin.engine.api", "forkjoin.engine.pool", "forkjoin.backends.inline",
        "forkjoin.backends.threads", "forkjoin.backends.process",
    ),
    # what a worker process imports before its first task
    "a worker's start-up": (
        "forkjoin.backends.process_zygote", "forkjoin.backends.process_worker_start",
        "forkjoin.core.execute", "forkjoin.core.context",
    ),
}  # fmt: skip


# -- reading imports -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Import:
    importer: str  # the module whose source holds the import
    module: str  # absolute name; for `from a import b` both `a` and `a.b` are listed
    line: int
    at_load: bool  # runs when the importer is loaded: not inside a function nor TYPE_CHECKING


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_path(name: str) -> Path | None:
    """The file of a forkjoin module, or None if ``name`` is not one (an attribute, say)."""
    relative = Path(*name.split("."))
    for candidate in (
        SRC.parent / relative.with_suffix(".py"),
        SRC.parent / relative / "__init__.py",
    ):
        if candidate.is_file():
            return candidate
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path) -> list[Import]:
    """Every import in ``path``, relative ones resolved against its package."""
    importer = module_name(path)
    package = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, at_load: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    found.append(Import(importer, alias.name, child.lineno, at_load))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - child.level + 1]
                    module = ".".join(base + ([child.module] if child.module else []))
                else:
                    module = child.module or ""
                found.append(Import(importer, module, child.lineno, at_load))
                for alias in child.names:  # `from ..backends import process` loads a submodule
                    found.append(Import(importer, f"{module}.{alias.name}", child.lineno, at_load))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for statement in child.body:
                    visit(ast.Module(body=[statement], type_ignores=[]), False)
                for statement in child.orelse:
                    visit(ast.Module(body=[statement], type_ignores=[]), at_load)
            else:
                visit(child, at_load)

    visit(ast.parse(path.read_text(), str(path)), True)
    return found


ALL_IMPORTS = [imp for path in sorted(SRC.rglob("*.py")) for imp in imports_of(path)]


def within(name: str, prefixes: tuple[str, ...] | str) -> bool:
    prefixes = (prefixes,) if isinstance(prefixes, str) else prefixes
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def is_forkjoin_module(name: str) -> bool:
    return within(name, "forkjoin") and module_path(name) is not None


def describe(imports: list[Import]) -> str:
    return "; ".join(f"{i.importer} imports {i.module} (line {i.line})" for i in imports)


# -- the reader itself -----------------------------------------------------------------------------


def test_reader_resolves_relative_imports_and_sees_lazy_ones():
    api = [i for i in ALL_IMPORTS if i.importer == "forkjoin.engine.api"]
    names = {i.module for i in api}
    assert {"forkjoin.backends.base", "forkjoin.engine.scheduler", "forkjoin.core.task"} <= names
    profiled = [i for i in api if i.module == "forkjoin.observe.runs"]
    assert profiled and not any(i.at_load for i in profiled), "observe.runs is imported lazily"
    typing_only = [i for i in ALL_IMPORTS if i.importer == "forkjoin" and i.module.endswith(".api")]
    assert typing_only and not any(i.at_load for i in typing_only), "TYPE_CHECKING is not a load"


def test_every_module_belongs_to_a_layer_the_rules_name():
    named = (*LOWER_LAYERS, *ABOVE_THE_ENGINE, "forkjoin.__main__", "forkjoin.observe")
    for path in SRC.rglob("*.py"):
        name = module_name(path)
        assert name == "forkjoin" or within(name, named), f"{name}: add its layer to the rules"


# -- the rules, checked ----------------------------------------------------------------------------


@pytest.mark.parametrize("layer", list(LOWER_LAYERS))
def test_lower_layers_import_only_what_they_may(layer):
    allowed = LOWER_LAYERS[layer]
    bad = [
        i
        for i in ALL_IMPORTS
        if within(i.importer, layer)
        and is_forkjoin_module(i.module)
        and not within(i.module, allowed)
    ]
    assert not bad, f"{layer} may import only {allowed}: {describe(bad)}"


@pytest.mark.parametrize("layer", list(LAZY_ONLY))
def test_lazy_imports_stay_inside_functions(layer):
    bad = [
        i
        for i in ALL_IMPORTS
        if within(i.importer, layer) and within(i.module, LAZY_ONLY[layer]) and i.at_load
    ]
    assert not bad, f"import these inside the function that needs them: {describe(bad)}"


def test_upper_layers_reach_backends_only_through_their_interface():
    bad = [
        i
        for i in ALL_IMPORTS
        if within(i.importer, ABOVE_THE_ENGINE)
        and is_forkjoin_module(i.module)
        and within(i.module, "forkjoin.backends")
        and not within(i.module, ("forkjoin.backends.base",))
        and i.module != "forkjoin.backends"
        and not within(i.module, BACKEND_EXCEPTIONS.get(i.importer, ()))
    ]
    assert not bad, f"use forkjoin.backends.base (backend_class by name): {describe(bad)}"


@pytest.mark.parametrize("module", list(ONLY_FROM))
def test_modules_with_few_importers(module):
    bad = [
        i
        for i in ALL_IMPORTS
        if within(i.module, module) and is_forkjoin_module(i.module)
        and i.importer not in ONLY_FROM[module] and not within(i.importer, module)
    ]  # fmt: skip
    assert not bad, describe(bad)


def loaded_at_import(roots: tuple[str, ...]) -> tuple[set[str], list[Import]]:
    """forkjoin modules that importing ``roots`` loads (following only imports that run at load
    time), and the imports of outside packages they make on the way."""
    seen: set[str] = set()
    outside: list[Import] = []
    queue = list(roots)
    while queue:
        name = queue.pop()
        # importing a.b.c runs a/__init__.py and a/b/__init__.py first
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):
            module = ".".join(parts[:depth])
            path = module_path(module)
            if path is None or module in seen:
                continue
            seen.add(module)
            for imp in imports_of(path):
                if not imp.at_load:
                    continue
                if within(imp.module, "forkjoin"):
                    queue.append(imp.module)
                else:
                    outside.append(imp)
    return seen, outside


def test_loaded_at_import_follows_the_chain():
    seen, outside = loaded_at_import(("forkjoin.backends.process",))
    assert {"forkjoin", "forkjoin.backends", "forkjoin.backends.base", "forkjoin.core.task"} <= seen
    assert any(i.module == "selectors" for i in outside)


@pytest.mark.parametrize("what", list(LIGHT))
def test_heavy_packages_load_only_when_used(what):
    _, outside = loaded_at_import(LIGHT[what])
    heavy = [i for i in outside if i.module.split(".")[0] in HEAVY]
    assert not heavy, f"{what} would load: {describe(heavy)}; import them where they are used"


# -- the same, observed in a fresh interpreter (lazy attribute access is invisible to ast) --------


def modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


def heavy_in(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


def test_import_forkjoin_loads_no_layer_and_no_heavy_package():
    modules = modules_after("import forkjoin")
    assert "forkjoin" in modules
    assert heavy_in(modules) == []
    assert not {"forkjoin.data", "forkjoin.train", "forkjoin.bench", "forkjoin.testing"} & modules
    assert "forkjoin.backends.process" not in modules, "backends are imported when used"


def test_layers_load_on_first_use():
    modules = modules_after("import forkjoin as fj; fj.data.from_items; fj.testing")
    assert {"forkjoin.data", "forkjoin.testing"} <= modules
    assert "forkjoin.train" not in modules and "torch" not in modules


def test_running_maps_loads_no_heavy_package():
    modules = modules_after(
        "import forkjoin as fj\n"
        "assert fj.map(abs, [-1, -2], workers=2) == [1, 2]\n"
        "assert fj.map(abs, [-1], backend='threads') == [1]\n"
    )
    assert heavy_in(modules) == []
    assert not {"forkjoin.observe", "forkjoin.bench", "forkjoin.data"} & modules
