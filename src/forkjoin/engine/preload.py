"""``preload=``: modules a pool's workers import when they start, before their first task.

A data job's first task in a fresh worker pays for importing pyarrow and pandas (~0.3-1 s per
worker): as much as the whole job on a few million rows. ``Pool(preload=("pyarrow", "pandas"))``
has the workers import them as they start, while the caller is still building its plan; and
``preload_running`` asks the workers of an already running shared pool to import them, in the
background, so that a job planned now finds them loaded. ``fj.map``/``fj.imap`` take the
same ``preload=``: when the call starts the shared pool, its workers import the modules as they
start. ``forkjoin.data`` uses both (warm a running pool while the plan is built; start one with
the modules), so a cold data job pays nothing a warm one does not (benchmarks/bench_data.py,
"forkjoin" vs "forkjoin (warm workers)"). Only the data layer's own calls ask for them: a shared
pool that a plain ``fj.map`` starts stays light (it had preloaded pyarrow and pandas for every
program that had imported forkjoin.data, which made its workers start ~0.5 s late and unevenly).
"""

from __future__ import annotations

import importlib
import threading
import time
import weakref
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


def shared_pool_initializer(backend_name: str, modules: Sequence[str]) -> dict[str, Any]:
    """The ``initializer``/``initargs`` keyword arguments of a shared pool of ``backend_name``
    started by a call with ``preload=modules``: process pools only (elsewhere the modules are
    the caller's own, or the cluster's workers are not started by this call)."""
    if backend_name != "process" or not modules:
        return {}
    initializer, initargs = with_preload(tuple(modules), None, ())
    return {"initializer": initializer, "initargs": initargs, "preload": tuple(modules)}


# The modules each running shared pool has been asked to import (preload_running).
_warmed: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()


def preload_running(modules: Sequence[str], backend_name: str = "process") -> bool:
    """If the shared pool ``backend_name`` is running, have each of its workers import
    ``modules`` in the background (returns at once); False when there is no such pool. A pool
    started with them preloaded (``preload=``), or asked already, gets no task at all: each
    import task holds a worker for IMPORT_TASK_MIN_SECONDS, which a short job would feel."""
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
    warmed = _warmed.setdefault(backend, set())
    if set(modules) <= warmed:
        return True  # warmed already (a join reads twice: it waited ~0.4 s for a second warm-up)
    warmed.update(modules)
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
