"""Isolating bad items by bisection (issue 21): a chunk that fails as a whole (its worker died,
its results could not be read) is resent once, then halved, and only the half that fails again
is split further; so k bad items in a chunk of n cost O(k log n) tasks, counted here from the
event log, and every good item still comes back."""

from __future__ import annotations

import functools
import math
import os
import random
import warnings

import _tasks
import pytest

import forkjoin as fj
from forkjoin.errors import SerializationError, WorkerCrashedError

pytestmark = pytest.mark.timeout(240)

N = 10_000


def _poison(k: int, seed: int) -> frozenset[int]:
    return frozenset(random.Random(seed).sample(range(N), k))


def _task_budget(k: int) -> int:
    # the chunk, its resend, and per bad item two halves per level down to one item
    return 2 + 2 * k * math.ceil(math.log2(N)) + k


def _check(pool: fj.Pool, results: list, bad: frozenset[int], error_type) -> None:
    failed = {i for i, value in enumerate(results) if isinstance(value, BaseException)}
    assert failed == set(bad)
    assert all(isinstance(results[i], error_type) for i in bad)
    assert all(results[i] == i + 1 for i in range(N) if i not in bad)
    tasks = len(pool.events.task_records())
    assert tasks <= _task_budget(len(bad)), f"{tasks} tasks for {len(bad)} bad items"


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 2, 7])
def test_crashing_items_are_found_by_bisection(k):
    bad = _poison(k, seed=k)
    fn = functools.partial(_tasks.crash_at, bad=bad)
    with fj.Pool(workers=2, retries=0) as pool:
        results = pool.map_list(fn, range(N), chunksize=N, on_error="collect")
        _check(pool, results, bad, WorkerCrashedError)
        assert pool.map_list(_tasks.square, range(3)) == [0, 1, 4]


# On a cluster engine the poison item kills the engine's worker process (os._exit, as on the
# process backend); the engine reports the lost worker (Ray: WorkerCrashedError, Dask:
# KilledWorker, its allowed-failures being 0) and forkjoin's scheduler bisects as it does for its
# own processes. Each crash costs the engine a new worker process: Dask's nanny restarts one in
# ~0.2-0.5 s, Ray starts one (an interpreter importing ray) in ~1 s on an idle 2-core machine and
# 3-5 s on a busy one. k poison items in 10,000 cost ~k*log2(10,000/k) + 2k crashes (1: ~16,
# 2: ~30, 7: ~90), so Ray beyond k=1 takes 1-3 minutes: it runs with FORKJOIN_LONG_CLUSTER_TESTS=1.
_LONG = os.environ.get("FORKJOIN_LONG_CLUSTER_TESTS") == "1"


def _long(backend: str, k: int):  # type: ignore[no-untyped-def]
    crashes = k * math.ceil(math.log2(N / k)) + 2 * k
    reason = f"~{crashes} {backend} worker restarts: set FORKJOIN_LONG_CLUSTER_TESTS=1"
    marks = [pytest.mark.skipif(not _LONG, reason=reason), pytest.mark.timeout(900)]
    return pytest.param(backend, k, marks=marks)


@pytest.mark.slow
@pytest.mark.timeout(480)  # Dask with k=7 takes ~45 s on an idle machine, minutes on a busy one
@pytest.mark.parametrize(
    ("backend", "k"),
    [("dask", 1), ("dask", 2), ("dask", 7), ("ray", 1), _long("ray", 2), _long("ray", 7)],
    indirect=["backend"],
)
def test_crashing_items_are_found_by_bisection_on_clusters(backend, k):
    bad = _poison(k, seed=k)
    fn = functools.partial(_tasks.crash_at, bad=bad)
    with fj.Pool(workers=2, backend=backend, retries=0) as pool:
        results = pool.map_list(fn, range(N), chunksize=N, on_error="collect")
        _check(pool, results, bad, WorkerCrashedError)
        assert all(results[i].index == i for i in bad)
        # the engine's workers came back: the same pool still runs work
        assert pool.map_list(_tasks.square, range(3)) == [0, 1, 4]


@pytest.mark.parametrize("k", [1, 2, 7])
def test_unreadable_results_are_found_by_bisection(backend, k):
    if backend in ("inline", "threads"):
        pytest.skip("results are not pickled on this backend")
    bad = _poison(k, seed=100 + k)
    fn = functools.partial(_tasks.unreadable_at, bad=bad)
    # Ray reports a result its driver cannot deserialize as a system error, which forkjoin
    # cannot tell from a lost worker: the item is still found, as a WorkerCrashedError
    expected = (SerializationError, WorkerCrashedError) if backend == "ray" else SerializationError
    with fj.Pool(workers=2, backend=backend, retries=0) as pool:
        results = pool.map_list(fn, range(N), chunksize=N, on_error="collect")
        _check(pool, results, bad, expected)


def test_a_chunk_over_its_timeout_blames_only_the_slow_item():
    # 8 items of which one sleeps past timeout=: bisection finds it; the rest come back
    items = [0.0] * 8
    items[5] = 30.0
    with fj.Pool(workers=2, retries=0) as pool:
        results = pool.map_list(
            _tasks.sleep_for, items, chunksize=8, timeout=1.5, on_error="collect"
        )
    assert isinstance(results[5], fj.TaskTimeoutError)
    assert [r for i, r in enumerate(results) if i != 5] == [0.0] * 7


@pytest.mark.cluster
@pytest.mark.parametrize("allowed_failures", [3, 0])
def test_joining_a_dask_scheduler_that_reruns_tasks_of_dead_workers_warns(allowed_failures):
    # Dask's default (3) re-runs a task whose worker died before forkjoin sees the death: a
    # poison item then kills 4 workers per attempt (and per bisection step); forkjoin's own
    # local cluster sets 0, a scheduler the user started keeps its own setting
    import dask
    import distributed

    with dask.config.set({"distributed.scheduler.allowed-failures": allowed_failures}):
        # in this process, over Dask's in-process transport: no port, no child process
        cluster = distributed.LocalCluster(n_workers=1, processes=False, dashboard_address=None)
    with cluster, distributed.Client(cluster, set_as_default=False) as client:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with fj.Pool(1, "dask", address=client) as pool:
                assert pool.map_list(abs, [-1, -2]) == [1, 2]
    named = [str(w.message) for w in caught if "allowed-failures" in str(w.message)]
    if allowed_failures:
        assert len(named) == 1 and "kills 4 workers per attempt" in named[0], named
    else:
        assert named == []
