"""Helpers the test modules share (fixtures live in conftest.py, task functions in _tasks.py)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

import forkjoin as fj
from forkjoin.engine.pool import PoolState

# The local backends every engine behaviour is checked on; the contract suite's ``backend``
# fixture adds the cluster engines, each started once per session (conftest.py).
BACKENDS = ["inline", "threads", "process"]
CLUSTER_BACKENDS = ["ray", "dask", "spark"]
# How long teardown waits for processes, threads and files to go away before calling it a leak.
LEAK_GRACE_SECONDS = 5.0

# Pools a module keeps for all its tests; the per-test leak check exempts their workers.
LONG_LIVED: list[fj.Pool] = []


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return bool(predicate())
        time.sleep(interval)


def pid_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie waiting for its reaper counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def pool_pids(pool: fj.Pool) -> list[int]:
    """Every process a pool runs: its workers and its backend's own (the zygote)."""
    return pool.worker_pids() + pool._backend.service_pids()


def long_lived_pool(*args, **kwargs) -> Iterator[fj.Pool]:
    """Body of a module-scoped pool fixture: exempt from the per-test leak check while the
    module runs; at the end it must shut down and take all its workers with it."""
    pool = fj.Pool(*args, **kwargs)
    LONG_LIVED.append(pool)
    try:
        yield pool
    finally:
        LONG_LIVED.remove(pool)
        pids = pool_pids(pool)
        pool.shutdown(wait=True)
        assert wait_until(lambda: all(pid_gone(p) for p in pids), LEAK_GRACE_SECONDS), (
            f"workers {pids} outlived their pool"
        )


def started_children(recursive: bool = False) -> list[psutil.Process]:
    """This process's children, less the session's long-lived pools (a Ray or Dask cluster)
    and multiprocessing's resource tracker: what a test itself started."""
    exempt = {pid for pool in LONG_LIVED for pid in pool_pids(pool)}
    found = []
    me = psutil.Process()
    for child in me.children(recursive=recursive):
        try:
            if child.pid in exempt or "resource_tracker" in " ".join(child.cmdline()):
                continue
            if child.ppid() == me.pid and child.cmdline() == me.cmdline():
                continue  # a fork of this process (an upstream test's Manager), not forkjoin's
        except psutil.Error:
            continue
        found.append(child)
    return found


def running_long_lived(backend: str) -> list[fj.Pool]:
    return [p for p in LONG_LIVED if p.state is PoolState.RUNNING and p.backend_name == backend]


def wait_for_workers(pool: fj.Pool, count: int, timeout: float = 30.0) -> None:
    """Block until ``count`` workers of ``pool`` are ready (start-up takes a while on a loaded
    machine; tests that compare timings must not measure it)."""
    pool.map_list(abs, range(count * 2), chunksize=1)
    assert wait_until(lambda: _ready_workers(pool) >= count, timeout), pool.stats()


def _ready_workers(pool: fj.Pool) -> int:
    return sum(1 for usage in pool.stats().workers.values() if usage.alive and usage.pid)


def is_parallel(backend: str) -> bool:
    from forkjoin.backends.base import backend_class

    return backend_class(backend).capabilities.parallel


def read_count(path: Path) -> int:
    """How many times a ``_tasks.*_first_times`` task ran (one byte per call)."""
    try:
        return len(path.read_text())
    except FileNotFoundError:
        return 0
