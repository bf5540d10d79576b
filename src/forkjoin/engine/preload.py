"""``preload=``: modules a pool's workers import when they start, before their first task.

A data job's first task in a fresh worker pays for importing pyarrow and pandas (~0.3-1 s per
worker): as much as the whole job on a few million rows. ``Pool(preload=("pyarrow", "pandas"))``
has the workers import them as they start, while the caller is still building its plan; and
``preload_running`` asks the workers of an already running shared pool to import them, in the
background, so that a job planned now finds them loaded. ``forkjoin.data`` uses both, and
registers its modules with ``preload_shared_pools``: once a program has loaded forkjoin.data's
readers, every shared process pool started after (by ``fj.map`` or by a data job) has its
workers import pyarrow and pandas as they start, so a cold data job pays nothing a warm one
does not (benchmarks/bench_data.py, "forkjoin" vs "forkjoin (warm workers)").
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any


def import_modules(modules: Sequence[str]) -> None:
    """Import ``modules`` here; one that is not installed is skipped (the task that needs it
    will say so)."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            continue


# An import task of ``preload_running`` lasts at least this long: a worker that already has
# the modules would otherwise finish its task in microseconds and take its neighbours' too.
IMPORT_TASK_MIN_SECONDS = 0.1


def _import_task(modules: Sequence[str]) -> None:
    start = time.monotonic()
    import_modules(modules)
    time.sleep(max(0.0, IMPORT_TASK_MIN_SECONDS - (time.monotonic() - start)))


def _start(modules: tuple[str, ...], initializer: Callable[..., Any] | None,
           initargs: tuple[Any, ...]) -> None:  # fmt: skip
    import_modules(modules)
    if initializer is not None:
        initializer(*initargs)


def with_preload(
    preload: Sequence[str], initializer: Callable[..., Any] | None, initargs: tuple[Any, ...]
) -> tuple[Callable[..., Any] | None, tuple[Any, ...]]:
    """The pool initializer that imports ``preload`` first, then runs the user's."""
    if isinstance(preload, str):
        preload = (preload,)
    if not preload:
        return initializer, initargs
    return _start, (tuple(preload), initializer, tuple(initargs))


# Modules every shared process pool imports in its workers as they start (see the docstring).
# Written at import time of the registering module, read when a shared pool starts.
_SHARED_PRELOAD: list[str] = []


def preload_shared_pools(modules: Sequence[str]) -> None:
    """Have every shared process pool started from now on import ``modules`` in its workers
    as they start (before their first task); pools already running are not changed."""
    for name in modules:
        if name not in _SHARED_PRELOAD:
            _SHARED_PRELOAD.append(name)


def shared_pool_initializer(backend_name: str) -> dict[str, Any]:
    """The ``initializer``/``initargs`` keyword arguments a shared pool of ``backend_name`` is
    started with: the registered preload for process pools, nothing otherwise."""
    if backend_name != "process" or not _SHARED_PRELOAD:
        return {}
    initializer, initargs = with_preload(tuple(_SHARED_PRELOAD), None, ())
    return {"initializer": initializer, "initargs": initargs}


def preload_running(modules: Sequence[str], backend_name: str = "process") -> bool:
    """If the shared pool ``backend_name`` is running, have each of its workers import
    ``modules`` in the background (returns at once); False when there is no such pool. A pool
    started with them preloaded (``preload_shared_pools``) gets no task at all: each import
    task holds a worker for IMPORT_TASK_MIN_SECONDS, which a short job would feel."""
    from .api import shared_pools
    from .options import RunOptions
    from .scheduler import Job

    with shared_pools._lock:
        entry = shared_pools._pools.get(backend_name)
    if entry is None or not entry[1].alive:
        return False
    _, backend, events = entry
    if backend.initializer is _start and set(modules) <= set(backend.initargs[0]):
        return True  # its workers imported them as they started: nothing to do, no task sent
    workers = max(1, backend.workers)
    # Two import tasks per worker, all submitted at once: a worker that finishes its first
    # (or had the modules already) takes another, so a slow-starting one still gets its own.
    options = RunOptions(chunksize=1, progress=False, max_in_flight=2 * workers, retries=0)
    job = Job(backend, events, _import_task, [tuple(modules)] * (2 * workers), options)

    def run() -> None:
        try:
            job.collect()
        except Exception:  # a pool shut down meanwhile: nothing to warm
            pass

    threading.Thread(target=run, name="fj-preload", daemon=True).start()
    return True
