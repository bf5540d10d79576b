"""Engine trust (issue 15): ordinary code that broke the engine's "never a hang" promise.

Each test reproduces one report: an exception that cannot be rebuilt by calling its class with
one message, a BaseException while a result is decoded or a done-callback runs, results waiting
behind a slow task, multiprocessing.Manager proxies, callables kept alive by the pool, a
one-worker Pool without isolation, ``map`` consumed after the ``with`` block, and shutdown,
interpreter-exit and KeyboardInterrupt edge cases. Every wait is bounded.
"""

from __future__ import annotations

import concurrent.futures as cf
import gc
import json
import multiprocessing
import pickle
import subprocess
import sys
import textwrap
import time
import weakref

import _tasks
import pytest
from helpers import BACKENDS

import forkjoin as fj
from forkjoin.errors import SerializationError, TaskError, WorkerCrashedError

pytestmark = pytest.mark.timeout(90)

RAISERS = [
    (_tasks.raise_called_process_error, subprocess.CalledProcessError),
    (_tasks.raise_json_decode_error, json.JSONDecodeError),
    (_tasks.raise_unicode_decode_error, UnicodeDecodeError),
    (_tasks.raise_needs_two_args, _tasks.NeedsTwoArgs),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("raiser, exc_type", RAISERS, ids=lambda v: getattr(v, "__name__", v))
def test_exception_with_required_init_arguments_comes_back(backend, raiser, exc_type):
    with fj.Pool(workers=2, backend=backend) as pool:
        future = pool.submit(raiser, 1)
        error = future.exception(timeout=30)
        assert isinstance(error, TaskError)
        assert isinstance(error, exc_type), type(error).__mro__
        assert error.original_type == exc_type.__name__
        assert exc_type.__name__ in str(error)
        assert error.traceback_text
        # the pool is not broken: the next submit and a map both work
        assert pool.submit(_tasks.square, 3).result(timeout=30) == 9
        with pytest.raises(exc_type):
            pool.map_list(raiser, [1, 2])
        assert pool.map_list(_tasks.square, range(4)) == [0, 1, 4, 9]


@pytest.mark.parametrize("backend", BACKENDS)
def test_rebuilt_exception_keeps_its_attributes(backend):
    with fj.Pool(workers=2, backend=backend) as pool:
        error = pool.submit(_tasks.raise_called_process_error).exception(timeout=30)
        assert (error.returncode, error.cmd, error.output) == (1, ["false"], b"out")
        error = pool.submit(_tasks.raise_needs_two_args).exception(timeout=30)
        assert (error.code, error.detail) == (7, "bad")
        # and a TaskError of that kind still pickles (it crosses processes in nested pools)
        again = pickle.loads(pickle.dumps(error))
        assert isinstance(again, _tasks.NeedsTwoArgs) and isinstance(again, TaskError)


def test_system_exit_while_decoding_a_result_fails_that_future_only():
    with fj.Pool(workers=2) as pool:
        future = pool.submit(_tasks.return_exit_on_unpickle)
        error = future.exception(timeout=30)
        assert isinstance(error, SerializationError)
        assert "call 0" in str(error) and "SystemExit" in str(error)
        assert pool.submit(_tasks.square, 4).result(timeout=30) == 16


# inline runs the task inside submit(), so its callbacks run in the caller, as for any future
# that is already done when add_done_callback is called
@pytest.mark.parametrize("backend", ["threads", "process"])
def test_done_callback_raising_base_exception_leaves_the_pool_usable(backend):
    called = []

    def explode(_future):
        called.append(True)
        raise SystemExit("from a done-callback")

    with fj.Pool(workers=2, backend=backend) as pool:
        future = pool.submit(_tasks.sleep_then_square, 2, 0.5)
        future.add_done_callback(explode)
        assert future.result(timeout=30) == 4
        assert pool.submit(_tasks.square, 5).result(timeout=30) == 25
        assert called


def test_no_result_waits_behind_a_slow_task_while_a_worker_is_free():
    with fj.Pool(workers=2) as pool:
        # measure the function as fast first, so the pool would queue tasks behind each other
        assert [f.result(timeout=30) for f in [pool.submit(_tasks.sleep_for, 0)] * 3]
        for _ in range(20):
            pool.submit(_tasks.sleep_for, 0).result(timeout=30)
        slow = pool.submit(_tasks.sleep_for, 8)
        instant = [pool.submit(_tasks.sleep_for, 0) for _ in range(9)]
        done, not_done = cf.wait(instant, timeout=4)
        assert not not_done, f"{len(not_done)} instant tasks waited behind the slow one"
        assert not slow.done()
        slow.cancel()
        pool.shutdown(wait=False, cancel_futures=True)


def test_a_finished_result_is_delivered_while_its_worker_runs_a_slow_task():
    with fj.Pool(workers=1) as pool:
        for _ in range(20):
            pool.submit(_tasks.sleep_for, 0).result(timeout=30)
        first = pool.submit(_tasks.sleep_for, 0)
        slow = pool.submit(_tasks.sleep_for, 6)
        first.result(timeout=3)  # finished at once: must not wait for the slow one
        assert not slow.done()


def test_manager_proxies_work_in_tasks_and_initargs():
    # a spawned manager: forking this test process (which may hold Ray/Dask/Spark threads by
    # now) could leave the child stuck on a lock one of those threads held
    with multiprocessing.get_context("spawn").Manager() as manager:
        shared = manager.dict({"key": 42})
        seen = manager.list()
        with fj.Pool(workers=2, initializer=_tasks.append_to_proxy, initargs=(seen,)) as pool:
            assert pool.submit(_tasks.read_proxy, shared).result(timeout=30) == 42
            assert fj.map(_tasks.read_proxy, [shared] * 3, workers=2) == [42] * 3
        assert len(seen) == 2  # the initializer ran once per worker, through the proxy


class _Big:
    def __init__(self):
        self.payload = bytearray(50 * 2**20)

    def size(self, _x):
        return len(self.payload)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_pool_does_not_keep_a_submitted_callable_alive(backend):
    with fj.Pool(workers=2, backend=backend) as pool:
        big = _Big()
        ref = weakref.ref(big)
        assert pool.submit(big.size, 0).result(timeout=30) == 50 * 2**20
        del big
        deadline = time.monotonic() + 10
        while ref() is not None and time.monotonic() < deadline:
            gc.collect()
            time.sleep(0.05)
        assert ref() is None, "the pool still holds the callable after its task finished"


def test_imap_does_not_hold_results_already_handed_out():
    with fj.Pool(workers=1) as pool:
        iterator = pool.imap(_tasks.big_bytes, [8 * 2**20] * 6, chunksize=6)
        first = next(iterator)
        # this frame's name and getrefcount's argument: nothing else may hold it
        assert sys.getrefcount(first) == 2, "the iterator keeps results it already yielded"
        del first
        assert len(next(iterator)) == 8 * 2**20
        list(iterator)


def test_one_worker_pool_isolates_a_crash():
    with fj.Pool(workers=1, retries=0) as pool:
        assert pool.backend_name == "process"
        with pytest.raises(WorkerCrashedError):
            pool.submit(_tasks.crash_task, "segfault").result(timeout=30)
        assert pool.submit(_tasks.square, 6).result(timeout=30) == 36


def test_map_results_can_be_read_after_the_with_block():
    with fj.Pool(workers=2) as pool:
        results = pool.map(_tasks.square, range(50))
        unordered_free = pool.map(_tasks.add, range(5), range(5))
    assert list(results) == [x * x for x in range(50)]
    assert list(unordered_free) == [2 * x for x in range(5)]


def test_map_failure_after_the_with_block_raises_at_its_item():
    with fj.Pool(workers=2) as pool:
        results = pool.map(_tasks.fail_on_three, range(6))
    assert next(results) == 0
    assert [next(results), next(results)] == [1, 2]
    with pytest.raises(ValueError):
        next(results)


def test_a_crash_during_shutdown_reports_the_crash():
    pool = fj.Pool(workers=2)
    future = pool.submit(_tasks.crash_task, "segfault")
    pool.shutdown(wait=True)
    assert isinstance(future.exception(timeout=30), WorkerCrashedError)


def test_submit_after_interpreter_shutdown_raises(tmp_path):
    script = tmp_path / "late_submit.py"
    script.write_text(
        textwrap.dedent(
            """
            import atexit
            import forkjoin as fj

            pool = fj.Pool(workers=1)
            pool.submit(abs, -1).result()

            @atexit.register
            def late():
                try:
                    pool.submit(abs, -2)
                except RuntimeError as exc:
                    print("refused:", exc)
            """
        )
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60
    )
    assert "refused: cannot schedule new futures after interpreter shutdown" in out.stdout, (
        out.stdout + out.stderr
    )


# inline: the task runs in the caller's thread, where KeyboardInterrupt is Ctrl-C and propagates
@pytest.mark.parametrize("backend", ["threads", "process"])
def test_keyboard_interrupt_in_a_task_runs_once_and_is_a_task_error(backend, tmp_path):
    counter = tmp_path / "count"
    with fj.Pool(workers=2, backend=backend) as pool:
        error = pool.submit(_tasks.count_then_interrupt, str(counter)).exception(timeout=30)
        assert isinstance(error, TaskError), repr(error)
        assert error.original_type == "KeyboardInterrupt"
        assert pool.submit(_tasks.square, 7).result(timeout=30) == 49
    assert counter.read_text() == "x"


def test_max_tasks_per_child_replaces_workers():
    with fj.Pool(workers=2, max_tasks_per_child=3) as pool:
        pids = [pool.submit(_tasks.pid_of).result(timeout=30) for _ in range(12)]
        # one at a time: each worker runs at most 3 tasks before a fresh process takes over
        assert max(pids.count(pid) for pid in set(pids)) <= 3
        assert len(set(pids)) >= 4
        assert pool.map_list(_tasks.square, range(40), chunksize=1) == [x * x for x in range(40)]


def test_per_worker_usage_adds_up_when_workers_are_many():
    """A job whose workers are replaced all the time (here after every task) names dozens of
    workers in one batch of task records: the per-worker sums must still add up to the job's
    (they were computed by one pass per worker, quadratic in a long run with kills)."""
    with fj.Pool(workers=2, max_tasks_per_child=1) as pool:
        assert pool.map_list(_tasks.square, range(40), chunksize=1) == [x * x for x in range(40)]
        stats = pool.stats()
        records = pool.events.task_records()
    assert len({r.worker for r in records}) > 16  # more than the few-workers path handles
    usage = stats.workers
    assert sum(u.tasks for u in usage.values()) == len(records) == 40
    assert sum(u.items for u in usage.values()) == stats.items_done == 40
    for worker in {r.worker for r in records}:
        mine = [r for r in records if r.worker == worker]
        assert usage[worker].tasks == len(mine)
        assert usage[worker].busy_seconds == pytest.approx(
            sum(r.end_time - r.start_time for r in mine), abs=1e-9
        )


def test_max_tasks_per_child_is_checked():
    with pytest.raises(ValueError, match=">= 1"):
        fj.Pool(workers=1, max_tasks_per_child=0)
    with pytest.raises(ValueError, match="backend='process'"):
        fj.Pool(workers=1, backend="threads", max_tasks_per_child=2)


def test_a_failing_initializer_breaks_the_pool_as_the_standard_library_does():
    with fj.Pool(workers=1, initializer=_tasks.raise_error) as pool:
        with pytest.raises(cf.process.BrokenProcessPool, match="initializer"):
            pool.submit(_tasks.square, 2).result(timeout=30)


def test_drop_in_error_types():
    with fj.Pool(workers=1, retries=0) as pool:
        with pytest.raises(cf.process.BrokenProcessPool):
            pool.submit(_tasks.crash_task, "os._exit(1)").result(timeout=30)
        with pytest.raises(pickle.PicklingError):
            pool.submit(_tasks.square, _tasks.threading.Lock()).result(timeout=30)
