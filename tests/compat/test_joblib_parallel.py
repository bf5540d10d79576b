"""joblib's own ``joblib/test/test_parallel.py`` (shipped in the joblib wheel), run with
forkjoin's ``"forkjoin"`` backend in its backend parametrization and as joblib's default
backend.

forkjoin's joblib integration registers the backend on import, before the upstream module is
imported, so the lists upstream builds from ``joblib.parallel.BACKENDS`` (every valid backend,
the generator-returning backends) already hold it. Its lists of process-based and parallel
backends are fixed names; wherever a parametrization names ``"loky"`` (a process backend like
forkjoin's), ``"forkjoin"`` is added. Parameter values that select another backend are dropped:
those cases test joblib's own backends, not forkjoin. The upstream test functions are then
collected from this module; tests that do not apply are listed in ``expectations.py``.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any

import joblib.parallel
import pytest

import forkjoin.integrations.joblib as fj_joblib

# Imported once the "forkjoin" backend is registered (the import above), so that the lists the
# upstream module builds from joblib.parallel.BACKENDS hold it.
upstream = importlib.import_module("joblib.test.test_parallel")

_BACKEND = fj_joblib.NAME


def _is_forkjoin(value: Any) -> bool:
    """A backend parameter value that runs on forkjoin: its name, an instance of its class,
    or None (joblib's default backend, which this module sets to forkjoin)."""
    return value is None or value == _BACKEND or isinstance(value, fj_joblib.ForkjoinBackend)


def _values(param: Any) -> tuple[Any, ...]:
    """The values of one parametrize entry (a plain value, a tuple, or a pytest.param)."""
    if isinstance(param, type(pytest.param(None))):
        return tuple(param.values)
    return (param,)


def _forkjoin_cases(mark: pytest.Mark) -> pytest.Mark | None:
    """``mark`` (a parametrize) narrowed to the cases that run on forkjoin; None when no case
    does (the test is about other backends). Marks that do not choose a backend: unchanged."""
    argnames, argvalues = mark.args[0], list(mark.args[1])
    names = [n.strip() for n in argnames.split(",")] if isinstance(argnames, str) else argnames
    positions = [i for i, name in enumerate(names) if "backend" in name]
    if not positions:
        return mark
    multi = len(names) > 1
    kwargs = dict(mark.kwargs)
    ids = list(kwargs["ids"]) if isinstance(kwargs.get("ids"), (list, tuple)) else None
    if not multi and "loky" in argvalues and _BACKEND not in argvalues:
        argvalues.append(_BACKEND)
        if ids is not None:
            ids.append(_BACKEND)
    kept, kept_ids = [], []
    for position, case in enumerate(argvalues):
        values = _values(case)
        row = values[0] if (multi and len(values) == 1) else values
        if all(_is_forkjoin(row[i]) for i in positions):
            kept.append(case)
            if ids is not None:
                kept_ids.append(ids[position])
    if not kept:
        return None
    if ids is not None:
        kwargs["ids"] = kept_ids
    return pytest.mark.parametrize(argnames, kept, **kwargs).mark


def _forkjoin_test(function: Any) -> Any | None:
    marks = getattr(function, "pytestmark", [])
    narrowed = []
    for mark in marks:
        if mark.name == "parametrize":
            mark = _forkjoin_cases(mark)
            if mark is None:
                return None
        narrowed.append(mark)
    function.pytestmark = narrowed
    return function


for _name, _obj in list(vars(upstream).items()):
    if _name.startswith("test_") and callable(_obj):
        _test = _forkjoin_test(_obj)
        if _test is not None:
            globals()[_name] = _test
del _name, _obj


@pytest.fixture(autouse=True)
def forkjoin_is_joblibs_default() -> Iterator[None]:
    """joblib's default backend is forkjoin for each test (joblib's own conftest sets
    ``parallel.DEFAULT_BACKEND`` the same way from JOBLIB_TESTS_DEFAULT_PARALLEL_BACKEND)."""
    previous = joblib.parallel.DEFAULT_BACKEND
    joblib.parallel.DEFAULT_BACKEND = _BACKEND
    try:
        yield
    finally:
        joblib.parallel.DEFAULT_BACKEND = previous
