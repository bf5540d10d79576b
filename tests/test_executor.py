"""``fj.Pool`` as a ``concurrent.futures.Executor`` (RELIABILITY.md rows 18 and 19)."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    CancelledError,
    Executor,
    Future,
    as_completed,
    wait,
)

import _tasks
import pytest
from helpers import CLUSTER_BACKENDS, pid_gone, wait_for_workers, wait_until

import forkjoin as fj
from forkjoin.engine.pool import PoolState

pytestmark = pytest.mark.timeout(60)


def test_pool_is_an_executor(backend):
    with fj.Pool(2, backend) as pool:
        assert isinstance(pool, Executor)
        future = pool.submit(_tasks.add, 2, b=40)
        assert isinstance(future, Future)
        assert future.result(timeout=30) == 42
        assert future.done() and not future.cancelled()


def test_submit_lambda_and_exception(backend):
    with fj.Pool(2, backend) as pool:
        assert pool.submit(lambda a, b=1: a * b, 6, b=7).result(timeout=30) == 42
        failed = pool.submit(_tasks.fail_on, 3)
        error = failed.exception(timeout=30)
        assert isinstance(error, fj.TaskError) and isinstance(error, ValueError)
        assert "(3)" in str(error)
        with pytest.raises(ValueError, match="bad item 3"):
            failed.result()


def test_as_completed_yields_in_completion_order(backend):
    if backend == "inline":
        pytest.skip("inline runs each task inside submit")
    with fj.Pool(3, backend) as pool:
        # warm: a cluster starts its worker processes lazily (seconds on a busy machine)
        assert pool.map_list(_tasks.sleep_for, [0.2] * 3) == [0.2] * 3
        futures = {pool.submit(_tasks.sleep_for, d): d for d in (2.0, 0.1, 1.0)}
        order = [futures[f] for f in as_completed(futures, timeout=30)]
    assert order == [0.1, 1.0, 2.0]


def test_wait_first_and_all_completed(backend):
    with fj.Pool(2, backend) as pool:
        slow = pool.submit(_tasks.sleep_for, 1.0 if backend != "inline" else 0.0)
        fast = pool.submit(_tasks.sleep_for, 0.0)
        done, not_done = wait([slow, fast], timeout=30, return_when=FIRST_COMPLETED)
        assert fast in done
        if backend != "inline":
            assert slow in not_done
        done, not_done = wait([slow, fast], timeout=30, return_when=ALL_COMPLETED)
        assert done == {slow, fast} and not not_done


def test_cancel_a_pending_future():
    with fj.Pool(1, "process") as pool:
        running = pool.submit(_tasks.sleep_for, 0.8)
        assert wait_until(running.running, 20)
        pending = pool.submit(_tasks.sleep_for, 0.0)
        assert pending.cancel(), "a task still queued can be cancelled"
        assert pending.cancelled()
        with pytest.raises(CancelledError):
            pending.result()
        assert not running.cancel(), "a running task cannot be cancelled"
        assert running.result(timeout=30) == 0.8
        assert pool.submit(_tasks.square, 5).result(timeout=30) == 25


def test_cancel_a_pending_future_on_a_warm_pool():
    with fj.Pool(1, "process") as pool:
        wait_for_workers(pool, 1)
        pool.map_list(_tasks.square, range(1000))  # fast tasks: the pool expects more of them
        futures = [pool.submit(_tasks.sleep_for, 0.5) for _ in range(10)]
        time.sleep(0.2)
        assert sum(f.running() for f in futures) == 1, "one worker runs one task at a time"
        assert futures[-1].cancel(), "a task that has not started can be cancelled"
        pool.shutdown(wait=True, cancel_futures=True)


def test_cancel_pending_on_threads():
    with fj.Pool(1, "threads") as pool:
        gate = threading.Event()
        running = pool.submit(gate.wait, 20)
        assert wait_until(running.running, 5)
        pending = pool.submit(_tasks.square, 3)
        assert pending.cancel()
        gate.set()
        assert running.result(timeout=30) is True
        assert pending.cancelled()


def test_done_callback_that_raises_keeps_the_engine_usable(backend, caplog):
    with fj.Pool(2, backend) as pool:
        seen = []

        def bad_callback(future):
            seen.append(future.result())
            raise RuntimeError("callback exploded")

        with caplog.at_level(logging.ERROR, logger="concurrent.futures"):
            future = pool.submit(_tasks.square, 4)
            future.add_done_callback(bad_callback)
            assert future.result(timeout=30) == 16
            assert wait_until(lambda: seen == [16], 10)
            # the engine still runs work, through every entry point
            assert pool.submit(_tasks.square, 5).result(timeout=30) == 25
            assert pool.map_list(_tasks.square, range(5)) == [0, 1, 4, 9, 16]
        assert "callback exploded" in caplog.text or backend == "inline"


def test_done_callback_that_submits_more_work(backend):
    with fj.Pool(2, backend) as pool:
        finished = threading.Event()
        values = []

        def chain(future):
            values.append(future.result())
            if len(values) < 5:
                pool.submit(_tasks.add, values[-1], 1).add_done_callback(chain)
            else:
                finished.set()

        pool.submit(_tasks.add, 0, 1).add_done_callback(chain)
        assert finished.wait(30), f"the chain stopped at {values}"
        assert values == [1, 2, 3, 4, 5]


def test_done_callback_on_a_failed_and_a_crashed_task():
    with fj.Pool(1, "process", retries=0) as pool:
        errors = []
        pool.submit(_tasks.fail_on_three, 3).add_done_callback(
            lambda f: errors.append(f.exception())
        )
        pool.submit(_tasks.crash_always, 0).add_done_callback(
            lambda f: errors.append(f.exception())
        )
        assert wait_until(lambda: len(errors) == 2, 20)
        assert isinstance(errors[0], fj.TaskError) and isinstance(errors[0], ValueError)
        assert isinstance(errors[1], fj.WorkerCrashedError)
        assert pool.submit(_tasks.square, 2).result(timeout=30) == 4


def test_shutdown_wait_finishes_running_and_queued_tasks(backend):
    pool = fj.Pool(2, backend)
    futures = [pool.submit(_tasks.sleep_for, 0.2) for _ in range(4)]
    pool.shutdown(wait=True)
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == [0.2] * 4
    assert pool.state is PoolState.CLOSED


def test_shutdown_cancel_futures_with_100_long_pending_tasks():
    pool = fj.Pool(2, "process")
    wait_for_workers(pool, 2)
    pids = pool.worker_pids()
    futures = [pool.submit(_tasks.sleep_for, 30) for _ in range(100)]
    assert wait_until(lambda: sum(f.running() for f in futures) >= 1, 20)
    start = time.monotonic()
    pool.shutdown(wait=True, cancel_futures=True)
    elapsed = time.monotonic() - start
    assert elapsed < 5, f"shutdown(cancel_futures=True) took {elapsed:.1f} s"
    assert all(f.done() for f in futures)
    for future in futures:  # queued ones cancelled, running ones stopped: none left to finish
        with pytest.raises(CancelledError):
            future.result(timeout=0)
    assert all(pid_gone(p) for p in pids)


def test_shutdown_cancel_futures_threads():
    gate = threading.Event()
    pool = fj.Pool(1, "threads")
    running = pool.submit(gate.wait, 10)
    assert wait_until(running.running, 5)
    pending = [pool.submit(_tasks.square, i) for i in range(50)]
    threading.Timer(0.2, gate.set).start()
    pool.shutdown(wait=True, cancel_futures=True)
    assert all(f.cancelled() for f in pending)
    assert running.done()


def test_shutdown_without_wait_returns_at_once_and_workers_still_exit():
    pool = fj.Pool(2, "process")
    wait_for_workers(pool, 2)
    pids = pool.worker_pids()
    future = pool.submit(_tasks.sleep_for, 0.5)
    start = time.monotonic()
    pool.shutdown(wait=False)
    assert time.monotonic() - start < 0.2
    assert future.result(timeout=10) == 0.5, "queued work still finishes after wait=False"
    assert wait_until(lambda: all(pid_gone(p) for p in pids), 10)


def test_submit_after_shutdown_raises(backend):
    pool = fj.Pool(2, backend)
    pool.shutdown()
    with pytest.raises(RuntimeError, match="closed"):
        pool.submit(_tasks.square, 1)
    with pytest.raises(RuntimeError, match="closed"):
        pool.map_list(_tasks.square, [1])
    with pytest.raises(RuntimeError, match="closed"):
        list(pool.map(_tasks.square, [1]))
    pool.shutdown()  # a second shutdown is harmless


def test_context_manager_shuts_down(backend):
    with fj.Pool(2, backend) as pool:
        assert pool.state is PoolState.RUNNING
        assert "running" in repr(pool)
        pool.map_list(_tasks.square, range(4))
        pids = pool.worker_pids()
    assert pool.state is PoolState.CLOSED
    assert "closed" in repr(pool)
    if backend in CLUSTER_BACKENDS:
        return  # the session's engine serves every pool; test_cluster_backends checks its end
    assert all(pid_gone(p) for p in pids)
    if backend == "process":
        assert len(pids) == 2
    else:
        assert pids == []


def test_executor_map_semantics(backend):
    with fj.Pool(2, backend) as pool:
        assert list(pool.map(_tasks.square, range(7))) == [x * x for x in range(7)]
        assert list(pool.map(_tasks.add, [1, 2, 3], [10, 20])) == [11, 22], "zip: shortest"
        lazy = pool.map(_tasks.square, iter(range(3)))
        assert next(lazy) == 0 and list(lazy) == [1, 4]


def test_executor_map_timeout_is_per_task():
    with fj.Pool(2, "process") as pool:
        results = pool.map(_tasks.sleep_for, [0.1, 30], timeout=1.0, chunksize=1)
        assert next(results) == 0.1
        with pytest.raises(TimeoutError):
            next(results)


def test_executor_map_raises_at_the_failing_position(backend):
    with fj.Pool(2, backend) as pool:
        seen = []
        with pytest.raises(ValueError):
            for value in pool.map(_tasks.sleep_then_square_or_fail, [0, 1, 2, 3], chunksize=1):
                seen.append(value)
    assert seen == [0, 1, 4]


def test_tasks_submitted_together_run_on_different_workers():
    """Two 0.5 s tasks on a warm two-worker pool run side by side: a burst of tasks is shared
    among idle workers, not all queued on the first one because earlier tasks were fast.

    The manager thread is held in a done-callback while the two tasks are submitted, so that it
    finds both in its queue at once (as it does whenever a caller submits faster than it wakes).
    """
    with fj.Pool(2, "process") as pool:
        wait_for_workers(pool, 2)
        pool.map_list(_tasks.square, range(200))  # fast tasks: a large prefetch budget
        gate = threading.Event()
        holder = pool.submit(_tasks.sleep_for, 0.1)
        holder.add_done_callback(lambda f: gate.wait(10))
        assert wait_until(holder.done, 20)
        time.sleep(0.1)  # done() turns true just before the manager enters the callback
        futures = [pool.submit(_tasks.sleep_then_pid, 0.5) for _ in range(2)]
        start = time.monotonic()
        gate.set()
        pids = [f.result(timeout=30) for f in futures]
        elapsed = time.monotonic() - start
    assert len(set(pids)) == 2, f"both tasks ran on worker {pids[0]}"
    assert elapsed < 0.9, f"two 0.5 s tasks on two workers took {elapsed:.2f} s"


def test_stats_counts():
    with fj.Pool(2, "process", retries=1) as pool:
        futures = [pool.submit(_tasks.fail_on_three, i) for i in range(6)]
        for f in futures:
            f.exception(timeout=30)
        pool.submit(_tasks.crash_always, 0).exception(timeout=30)
        pool.map_list(_tasks.square, range(10), chunksize=5)
        stats = pool.stats()
        records = pool.events.task_records()
    # 6 submits + crash (2 attempts) + 2 chunks of 5
    assert stats.tasks_submitted == 6 + 2 + 2
    assert stats.tasks_done == 6 + 2 + 2
    assert stats.tasks_failed == 2  # item 3, and the crash after its retry
    assert stats.tasks_retried == 1
    assert stats.worker_crashes == 2
    assert stats.items_done == 6 + 10
    assert stats.bytes_sent > 0 and stats.bytes_received > 0
    assert stats.workers_started >= 3  # two, plus replacements for the crashes
    assert sum(u.tasks for u in stats.workers.values()) == stats.tasks_done
    assert len(records) == stats.tasks_done
    assert stats.throughput > 0


def test_stats_counts_threads():
    with fj.Pool(2, "threads") as pool:
        pool.map_list(_tasks.square, range(10), chunksize=2)
        stats = pool.stats()
    assert stats.tasks_submitted == stats.tasks_done == 5
    assert stats.items_done == 10
    assert stats.worker_crashes == 0


def test_stats_never_finish_more_tasks_than_were_submitted():
    with fj.Pool(2, "process") as pool:
        pool.map_list(
            _tasks.identity,
            [_tasks.Unpicklable(i) for i in range(3)],
            on_error="collect",
            chunksize=1,
        )
        stats = pool.stats()
    assert stats.tasks_done <= stats.tasks_submitted, stats


def test_done_callback_that_shuts_the_pool_down(backend):
    pool = fj.Pool(2, backend)
    finished = threading.Event()
    future = pool.submit(_tasks.sleep_for, 0.1)
    future.add_done_callback(lambda _: (pool.shutdown(wait=True), finished.set()))
    assert finished.wait(10), "shutdown from a done-callback must not deadlock"
    assert future.result() == 0.1
    assert pool.state is PoolState.CLOSED
    pool.shutdown()


def raise_in_initializer():
    raise RuntimeError("initializer failed on purpose")


def test_initializer_that_raises_breaks_the_pool_cleanly():
    start = time.monotonic()
    with fj.Pool(2, "process", initializer=raise_in_initializer) as pool:
        error = pool.submit(_tasks.square, 3).exception(timeout=20)
        assert isinstance(error, fj.ForkjoinError)
        assert "initializer raised RuntimeError: initializer failed on purpose" in str(error)
        with pytest.raises(fj.ForkjoinError, match="initializer"):
            pool.map_list(_tasks.square, [1, 2])
    assert time.monotonic() - start < 10


def test_unpicklable_initializer_is_refused_at_once():
    lock = threading.Lock()
    with pytest.raises(fj.SerializationError) as info:
        fj.Pool(2, "process", initializer=lambda: lock)
    assert (info.value.what, info.value.side) == ("initializer", "caller")


def make_adder(k):
    return lambda x: x + k


def test_many_distinct_functions_share_workers():
    """More distinct functions than the workers' function cache holds, used in turn and out of
    order: the caller's mirror of each worker's cache must never go out of step."""
    functions = [make_adder(k) for k in range(150)]
    with fj.Pool(2, "process") as pool:
        for k, fn in enumerate(functions):
            assert pool.map_list(fn, [1, 2], chunksize=1) == [1 + k, 2 + k]
        futures = [pool.submit(functions[(k * 37) % 150], k) for k in range(600)]
        assert [f.result(timeout=30) for f in futures] == [k + (k * 37) % 150 for k in range(600)]
        assert pool.stats().worker_crashes == 0
