"""The public surface: ``__all__`` is what the package exposes, backends resolve by name, and the
exception tree. (Which layer may import which is tests/test_layering.py.)"""

from __future__ import annotations

import inspect
import re
import types
from pathlib import Path

import pytest

import forkjoin as fj
from forkjoin.backends.base import backend_class, backend_names

pytestmark = pytest.mark.timeout(60)

SRC = Path(fj.__file__).parent


def public_names() -> set[str]:
    """What ``dir(forkjoin)`` offers a user: names without a leading underscore, other than
    forkjoin's own subpackages (which appear once imported)."""
    return {
        name
        for name in dir(fj)
        if not name.startswith("_")
        and not (
            isinstance(getattr(fj, name), types.ModuleType)
            and getattr(fj, name).__name__.startswith("forkjoin.")
        )
    }


def test_every_name_in_all_resolves_and_is_listed():
    assert len(fj.__all__) == len(set(fj.__all__)), "no duplicates"
    for name in fj.__all__:
        assert getattr(fj, name) is not None
    assert set(fj.__all__) - {"__version__"} <= public_names()


def test_all_is_exactly_what_the_package_exposes():
    assert public_names() == set(fj.__all__) - {"__version__"}


def has_own_docstring(name: str) -> bool:
    doc = inspect.getdoc(getattr(fj, name)) or ""
    return bool(doc) and not doc.startswith(f"{name}(")  # not just a dataclass's signature


def test_every_public_name_exists_and_is_documented():
    assert isinstance(fj.__version__, str) and fj.__version__.count(".") >= 1
    for name in fj.__all__:
        value = getattr(fj, name)
        if not (inspect.isfunction(value) or inspect.isclass(value)):
            continue
        assert has_own_docstring(name), f"{name} has no docstring of its own"


def test_star_import_gives_the_public_names():
    namespace: dict[str, object] = {}
    exec("from forkjoin import *", namespace)
    assert {n for n in namespace if n != "__builtins__"} == set(fj.__all__)


def test_documented_calls_are_exposed():
    # DESIGN.md's "Public API contract": the names users, examples and benchmarks rely on
    for name in ("map", "imap", "map_reduce", "Pool", "devices", "rng"):
        assert callable(getattr(fj, name))
    for method in ("submit", "map", "shutdown", "imap", "map_list", "map_reduce", "stats"):
        assert callable(getattr(fj.Pool, method))


def test_error_tree():
    from concurrent.futures import BrokenExecutor

    for name in (
        "TaskError",
        "WorkerCrashedError",
        "TaskTimeoutError",
        "SerializationError",
        "ResourceError",
        "DataError",
        "BackendUnavailableError",
    ):
        assert issubclass(getattr(fj, name), fj.ForkjoinError), name
    assert issubclass(fj.WorkerCrashedError, BrokenExecutor)
    assert issubclass(fj.TaskTimeoutError, TimeoutError)
    assert issubclass(fj.BackendUnavailableError, ImportError)


# -- module size ---------------------------------------------------------------------------------


def test_no_module_is_too_long_to_read():
    # STYLE.md: one module, one job; past ~500 lines a module should be split.
    for path in sorted(SRC.rglob("*.py")):
        lines = len(path.read_text().splitlines())
        assert lines <= 500, f"{path.relative_to(SRC)} has {lines} lines: split it by job"


# -- backend resolution ----------------------------------------------------------------------------


def test_backends_resolve_by_name():
    assert {"inline", "threads", "process"} <= set(backend_names())
    for name in ("inline", "threads", "process"):
        assert backend_class(name).name == name


def test_unknown_backend_lists_the_choices():
    with pytest.raises(ValueError, match="unknown backend 'nope'") as info:
        backend_class("nope")
    assert "process" in str(info.value)


def test_missing_extra_names_the_pip_install(monkeypatch):
    from forkjoin.backends import base

    monkeypatch.setitem(base._REGISTRY, "fake", ("forkjoin_no_such_module", "Fake", "ray"))
    with pytest.raises(fj.BackendUnavailableError, match=r'pip install "forkjoin\[ray\]"') as info:
        fj.map(abs, [1], backend="fake")
    assert isinstance(info.value, ImportError)


def test_every_capability_flag_is_read():
    # a flag nothing reads is a promise nobody checks (zero_copy, supports_resources were removed)
    import ast
    import dataclasses

    from forkjoin.backends.base import Capabilities

    read = set()
    for path in [*SRC.rglob("*.py"), *(SRC.parents[1] / "tests").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                read.add(node.attr)
    flags = {field.name for field in dataclasses.fields(Capabilities)}
    assert flags <= read, f"never read: {sorted(flags - read)}; remove them or use them"


# -- the exception tree (issue 16: one place per rule) -------------------------------------------


def _error_classes() -> list[type]:
    import forkjoin.errors as errors
    import forkjoin.mapfile as mapfile
    import forkjoin.train.errors as train_errors

    found = []
    for module in (errors, train_errors, mapfile):
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, fj.ForkjoinError):
                found.append(value)
    return found


def test_every_forkjoin_error_pickles_with_its_fields():
    # fields are declared once (_fields); pickling is derived from them, for every class
    import pickle

    samples = {"index": 3, "rank": 1, "restarts": 2, "timeout": 1.5, "exitcode": -9,
               "signal_name": "SIGKILL", "peak_rss": 10, "attempts": 2, "what": "result",
               "side": "worker", "original_type": "ValueError", "item_repr": "3",
               "traceback_text": "tb", "stack": "stack", "line": 7}  # fmt: skip
    for cls in _error_classes():
        fields = {name: samples.get(name) for name in cls._fields}
        if cls.__name__.startswith("TaskError["):
            continue
        error = cls("message", **fields)
        again = pickle.loads(pickle.dumps(error))
        assert isinstance(again, type(error)) and str(again) == "message", cls
        assert again.field_values() == error.field_values(), cls


def test_serialization_error_what_is_a_closed_set():
    # every literal `what=` (and the cluster layer's `_checked(..., what)`) names one of WHAT
    literal = re.compile(r'what="([^"]+)"|_(?:pack|put)_checked\([^)]*?,\s*"([^"]+)"\)')
    seen = set()
    for path in SRC.rglob("*.py"):
        for match in literal.finditer(path.read_text()):
            seen.add(match.group(1) or match.group(2))
    assert seen, "the scan found no call sites"
    assert seen <= fj.SerializationError.WHAT, seen - fj.SerializationError.WHAT
