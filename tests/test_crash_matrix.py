"""The process backend's fault matrix (RELIABILITY.md rows 1-16, 20).

The crash cases are a table, as in loky's ``crash_cases`` and CPython's ``test_deadlock.py``:
each way of dying, at each moment of a task's life in the worker (unpickling the call, running
it, pickling the result), with the error and message fields the caller must see.
"""

from __future__ import annotations

import operator
import os
import signal
import threading
import time
from concurrent.futures import BrokenExecutor

import _tasks
import psutil
import pytest
from helpers import long_lived_pool, pid_gone, read_count, wait_for_workers, wait_until

import forkjoin as fj
from forkjoin.backends.process import TERM_GRACE_SECONDS
from forkjoin.errors import ForkjoinError, RemoteTraceback

pytestmark = pytest.mark.timeout(60)

# A dead worker must be noticed, and a crash reported, within this (DESIGN.md: "within 5 s").
NOTICE_SECONDS = 5.0


@pytest.fixture(scope="module")
def pool():
    """Two workers, no retries: each crash below costs exactly one worker."""
    yield from long_lived_pool(2, "process", retries=0)


def assert_pool_works(pool):
    assert pool.map_list(_tasks.square, range(6)) == [0, 1, 4, 9, 16, 25]


# -- the crash table -------------------------------------------------------------------------------

# how the worker dies -> (exit code, signal name, words in the message)
DEATHS = {
    "segfault": (-signal.SIGSEGV, "SIGSEGV", "was killed by SIGSEGV"),
    "os._exit(0)": (0, "", "exited with code 0"),
    "os._exit(1)": (1, "", "exited with code 1"),
    "sys.exit(0)": (0, "", "exited with code 0"),
    "SIGKILL": (-signal.SIGKILL, "SIGKILL", "was killed by SIGKILL"),
}


def run_unpickling_the_call(pool, how):
    return pool.map_list(_tasks.call_with_arg, [_tasks.CrashOnUnpickle(how)])


def run_unpickling_the_function(pool, how):
    poison = _tasks.CrashOnUnpickle(how)
    return pool.map_list(lambda x: (poison, x)[1], [0])


def run_during_the_call(pool, how):
    return pool.map_list(_tasks.crash_task, [how])


def run_pickling_the_result(pool, how):
    return pool.map_list(_tasks.return_crash_on_pickle, [how])


MOMENTS = {
    "unpickling the call": run_unpickling_the_call,
    "unpickling the function": run_unpickling_the_function,
    "during the call": run_during_the_call,
    "pickling the result": run_pickling_the_result,
}

CRASH_CASES = [
    pytest.param(moment, how, *DEATHS[how], id=f"{how}-{moment.replace(' ', '_')}")
    for moment in MOMENTS
    for how in DEATHS
]


@pytest.mark.parametrize("moment,how,exitcode,signal_name,message", CRASH_CASES)
def test_crash_case(pool, moment, how, exitcode, signal_name, message):
    # A fresh pool for this moment: when the worker dies before it has said which task it runs,
    # an engine that cannot blame the task requeues it forever (fixed in 6e7da65), and that
    # would wedge the shared pool for every test after this one.
    if moment == "unpickling the function":
        with fj.Pool(2, "process", retries=0) as fresh:
            check_crash_case(fresh, moment, how, exitcode, signal_name, message)
    else:
        check_crash_case(pool, moment, how, exitcode, signal_name, message)


def check_crash_case(pool, moment, how, exitcode, signal_name, message):
    crashes_before = pool.stats().worker_crashes
    start = time.monotonic()
    done = threading.Event()
    outcome = {}

    def call():
        try:
            MOMENTS[moment](pool, how)
        except BaseException as exc:
            outcome["error"] = exc
        done.set()

    threading.Thread(target=call, daemon=True).start()
    if not done.wait(NOTICE_SECONDS):
        pool.shutdown(wait=True, cancel_futures=True)  # unblocks the call
        pytest.fail(
            f"no error after {NOTICE_SECONDS} s (workers started: {pool.stats().workers_started})"
        )
    elapsed = time.monotonic() - start
    error = outcome.get("error")
    assert isinstance(error, fj.WorkerCrashedError), repr(error)
    assert isinstance(error, BrokenExecutor)
    assert error.exitcode == exitcode
    assert error.signal_name == signal_name
    assert error.index == 0
    assert error.attempts == 1
    assert message in str(error)
    assert "while running item 0" in str(error)
    assert "pid" in str(error) and "peak RSS" in str(error)
    if signal_name == "SIGKILL":  # the likely cause, and what to do about it
        assert "memory" in str(error) and "workers=" in str(error)
    assert elapsed < NOTICE_SECONDS, f"the crash took {elapsed:.1f} s to report"
    assert pool.stats().worker_crashes == crashes_before + 1
    assert_pool_works(pool)


# A task that raises (rather than dies) at each moment: the error names the right side.
def test_raise_while_unpickling_the_call(pool):
    with pytest.raises(fj.SerializationError) as info:
        pool.map_list(_tasks.call_with_arg, [_tasks.FailsToUnpickle("arg")])
    assert (info.value.what, info.value.side, info.value.index) == ("argument", "worker", 0)
    assert "refusing to unpickle 'arg'" in str(info.value)


def test_raise_while_unpickling_the_function(pool):
    poison = _tasks.FailsToUnpickle("fn")
    with pytest.raises(fj.SerializationError) as info:
        pool.map_list(lambda x: (poison, x)[1], [0])
    assert "function could not be unpickled" in str(info.value)
    assert (info.value.what, info.value.side) == ("function", "worker")


def test_raise_during_the_call(pool):
    with pytest.raises(fj.TaskError) as info:
        pool.map_list(_tasks.fail_on_three, [3])
    assert isinstance(info.value, ValueError) and info.value.index == 0


def test_raise_while_pickling_the_result(pool):
    pids = set(pool.worker_pids())
    out = pool.map_list(_tasks.return_unpicklable, [1, 2, 3], on_error="collect", chunksize=3)
    assert out[0] == 1 and out[2] == 3
    error = out[1]
    assert isinstance(error, fj.SerializationError)
    assert (error.what, error.side, error.index) == ("result", "worker", 1)
    assert "could not be pickled in the worker" in str(error)
    assert set(pool.worker_pids()) == pids, "a result that cannot be pickled must not cost a worker"


def test_sys_exit_is_never_a_success(pool):
    # inside a chunk too: the chunk is split to find the item, which then fails on its own
    out = pool.map_list(
        _tasks.crash_on, [0, 1, 2, 3, 4], chunksize=5, on_error="collect"
    )  # crash_on's default: item 3 calls os._exit(1)
    assert out[:3] == [0, 1, 2] and out[4] == 4
    assert isinstance(out[3], fj.WorkerCrashedError) and out[3].index == 3


# -- (un)pickling errors ---------------------------------------------------------------------------


def test_argument_unpicklable_in_the_caller(pool):
    with pytest.raises(fj.SerializationError) as info:
        pool.map_list(_tasks.identity, [0, _tasks.Unpicklable("x"), 2])
    error = info.value
    assert (error.what, error.side, error.index) == ("argument", "caller", 1)
    assert "cannot pickle Unpicklable('x')" in str(error)
    assert isinstance(error.__cause__, TypeError)


def test_bad_arguments_then_good_ones_all_finish(pool):
    items = [_tasks.Unpicklable(i) for i in range(100)] + list(range(100))
    out = pool.map_list(_tasks.identity, items, on_error="collect")
    assert len(out) == 200
    assert all(isinstance(v, fj.SerializationError) and v.side == "caller" for v in out[:100])
    assert [v.index for v in out[:100]] == list(range(100))
    assert out[100:] == list(range(100))


def test_argument_fails_to_unpickle_in_the_worker_other_items_unaffected(pool):
    items = [0, 1, _tasks.FailsToUnpickle(2), 3, 4, 5]
    out = pool.map_list(_tasks.identity, items, on_error="collect", chunksize=3)
    assert out[:2] == [0, 1] and out[3:] == [3, 4, 5]
    assert isinstance(out[2], fj.SerializationError)
    assert (out[2].what, out[2].side, out[2].index) == ("argument", "worker", 2)


def test_result_fails_to_unpickle_in_the_caller(pool):
    with pytest.raises(fj.SerializationError) as info:
        pool.map_list(_tasks.return_fails_to_unpickle, [2])
    error = info.value
    assert (error.what, error.side) == ("result", "caller")
    assert "could not be unpickled in the caller" in str(error)
    assert "refusing to unpickle 2" in str(error)
    assert_pool_works(pool)


def test_result_fails_to_unpickle_in_the_caller_only_that_item_fails(pool):
    out = pool.map_list(
        _tasks.return_fails_to_unpickle, [0, 1, 2, 3, 4], chunksize=5, on_error="collect"
    )
    assert out[:2] == [0, 1] and out[3:] == [3, 4]
    assert isinstance(out[2], fj.SerializationError) and out[2].index == 2


def test_function_unpicklable_in_the_caller(pool):
    lock = threading.Lock()
    with pytest.raises(fj.SerializationError) as info:
        pool.map_list(lambda x: (lock, x)[1], [1])
    assert (info.value.what, info.value.side) == ("function", "caller")
    assert "_thread.lock" in str(info.value)


def test_unpicklable_exception_keeps_type_message_traceback(pool):
    with pytest.raises(fj.TaskError) as info:
        pool.map_list(_tasks.raise_locked_error, [7])
    error = info.value
    assert error.original is None, "the original could not travel"
    assert error.original_type == "LockedError"
    assert "LockedError" in str(error) and "locked failure on 7" in str(error)
    assert error.index == 0
    assert isinstance(error.__cause__, RemoteTraceback)
    assert "raise_locked_error" in error.traceback_text
    assert "LockedError: locked failure on 7" in error.traceback_text
    assert_pool_works(pool)


# -- crashes and retries ---------------------------------------------------------------------------


def test_poison_task_is_reported_after_retries_plus_one_deaths(pool):
    crashes = pool.stats().worker_crashes
    start = time.monotonic()
    with pytest.raises(fj.WorkerCrashedError) as info:
        pool.map_list(_tasks.crash_always, ["poison"], retries=2)
    assert info.value.attempts == 3
    assert info.value.exitcode == 9 and info.value.index == 0
    assert pool.stats().worker_crashes == crashes + 3
    assert time.monotonic() - start < 3 * NOTICE_SECONDS
    assert_pool_works(pool)


def test_poison_task_in_a_chunk_other_items_survive(pool):
    out = pool.map_list(
        _tasks.crash_on_three, range(10), chunksize=5, retries=1, on_error="collect"
    )
    assert [v for i, v in enumerate(out) if i != 3] == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert isinstance(out[3], fj.WorkerCrashedError) and out[3].index == 3
    assert out[3].attempts == 2


def test_crash_retried_on_a_fresh_worker(pool, tmp_path):
    counter = tmp_path / "calls"
    assert pool.map_list(_tasks.crash_first_times, [(str(counter), 2)], retries=2) == [2]
    assert read_count(counter) == 3


def test_submit_crash_is_retried(tmp_path):
    counter = tmp_path / "calls"
    with fj.Pool(1, "process", retries=1) as pool:
        assert pool.submit(_tasks.crash_first_times, (str(counter), 1)).result(30) == 1
        future = pool.submit(_tasks.crash_always, 0)
        assert isinstance(future.exception(30), fj.WorkerCrashedError)
        assert future.exception().attempts == 2


def test_results_kept_when_another_task_crashes(pool):
    items = [(i, 5, 0.3) for i in range(12)]  # item 5 sleeps, then dies
    out = pool.map_list(_tasks.sleep_then_crash_on, items, chunksize=1, on_error="collect")
    assert [v for i, v in enumerate(out) if i != 5] == [i for i in range(12) if i != 5]
    assert isinstance(out[5], fj.WorkerCrashedError)


def test_results_streamed_before_a_crash_are_kept(pool):
    seen = []
    with pytest.raises(fj.WorkerCrashedError) as info:
        for value in pool.imap(
            _tasks.sleep_then_crash_on, [(i, 6, 0.5) for i in range(8)], chunksize=1
        ):
            seen.append(value)
    assert info.value.index == 6
    assert seen == list(range(len(seen))), "what was yielded is the in-order prefix"
    assert_pool_works(pool)


def test_dead_worker_noticed_within_5_seconds(tmp_path):
    pid_file = tmp_path / "pid"
    with fj.Pool(2, "process", retries=0) as pool:
        future = pool.submit(_tasks.write_pid_and_sleep, (str(pid_file), 60))
        assert wait_until(pid_file.exists, 20)
        pid = int(pid_file.read_text())
        assert pid in pool.worker_pids()
        os.kill(pid, signal.SIGKILL)
        start = time.monotonic()
        error = future.exception(timeout=NOTICE_SECONDS)
        assert time.monotonic() - start < NOTICE_SECONDS
        assert isinstance(error, fj.WorkerCrashedError)
        assert error.signal_name == "SIGKILL" and error.exitcode == -signal.SIGKILL
        assert f"pid {pid}" in str(error)
        assert wait_until(lambda: pid not in pool.worker_pids(), NOTICE_SECONDS)
        assert_pool_works(pool)


def test_killed_worker_task_is_retried_and_other_results_kept(tmp_path):
    pid_file = tmp_path / "pid"
    with fj.Pool(2, "process", retries=1) as pool:
        items = [(x, 2, str(pid_file)) for x in range(6)]
        results = pool.imap(_tasks.hang_first_time, items, chunksize=1)
        first = next(results)
        assert wait_until(pid_file.exists, 20)
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
        start = time.monotonic()
        assert [first, *results] == [0, 10, 20, 30, 40, 50]
        assert time.monotonic() - start < NOTICE_SECONDS
        stats = pool.stats()
        assert stats.worker_crashes == 1 and stats.tasks_retried == 1


# -- timeouts --------------------------------------------------------------------------------------


def test_timeout_raises_within_grace_and_replaces_the_worker(pool, tmp_path):
    wait_for_workers(pool, 2)
    items = [(str(tmp_path / f"pid{i}"), seconds) for i, seconds in enumerate([0.0, 30, 0.0])]
    start = time.monotonic()
    out = pool.map_list(_tasks.write_pid_and_sleep, items, timeout=0.5, on_error="collect")
    elapsed = time.monotonic() - start
    error = out[1]
    assert isinstance(error, fj.TaskTimeoutError) and isinstance(error, TimeoutError)
    assert error.index == 1 and error.timeout == 0.5
    assert "ran past its timeout of 0.5 s" in str(error)
    assert elapsed < 0.5 + TERM_GRACE_SECONDS + 2.0
    assert isinstance(out[0], int) and isinstance(out[2], int)
    assert pool.stats().timeouts >= 1
    stopped = int((tmp_path / "pid1").read_text())
    assert wait_until(lambda: pid_gone(stopped), NOTICE_SECONDS), "the hung worker was not stopped"
    assert wait_until(lambda: len(pool.worker_pids()) == 2, 10), "and not replaced"
    assert stopped not in pool.worker_pids()
    assert_pool_works(pool)


def test_timeout_on_error_raise(pool):
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        pool.map_list(_tasks.sleep_for, [30], timeout=0.3)
    assert time.monotonic() - start < 0.3 + TERM_GRACE_SECONDS + 2.0


def test_timeout_is_not_hit_by_queued_time(pool):
    # four 0.4 s tasks on two workers with timeout 0.7: the clock starts when each task starts
    out = pool.map_list(_tasks.sleep_for, [0.4] * 4, timeout=0.7, chunksize=1)
    assert out == [0.4] * 4


def test_hang_that_ignores_sigterm_is_killed(pool):
    start = time.monotonic()
    with pytest.raises(fj.TaskTimeoutError):
        pool.map_list(_tasks.ignore_sigterm_and_hang, [30], timeout=0.5)
    elapsed = time.monotonic() - start
    assert elapsed >= 0.5
    assert elapsed < 0.5 + TERM_GRACE_SECONDS + 2.0, f"took {elapsed:.1f} s"
    assert_pool_works(pool)


def test_submit_timeout():
    with fj.Pool(1, "process", timeout=0.3) as pool:
        future = pool.submit(_tasks.sleep_for, 30)
        assert isinstance(future.exception(timeout=10), fj.TaskTimeoutError)
        assert pool.submit(_tasks.sleep_for, 0.01).result(timeout=10) == 0.01


# -- workers killing each other --------------------------------------------------------------------


def register_pid(directory):
    with open(os.path.join(directory, str(os.getpid())), "w"):
        pass


def kill_a_sibling(directory):
    """SIGKILL a random live worker of this pool (maybe this one)."""
    import random

    me = psutil.Process()
    siblings = []
    for name in os.listdir(directory):
        try:
            proc = psutil.Process(int(name))
            if proc.ppid() == me.ppid() and proc.status() != psutil.STATUS_ZOMBIE:
                siblings.append(proc.pid)
        except psutil.NoSuchProcess:
            pass
    if siblings:
        try:
            os.kill(random.choice(siblings), signal.SIGKILL)
        except ProcessLookupError:
            pass
    time.sleep(0.02)
    return os.getpid()


@pytest.mark.parametrize("workers", [1, 2, 5, 13])
def test_workers_sigkill_each_other(workers, tmp_path):
    start = time.monotonic()
    with fj.Pool(
        workers,
        "process",
        retries=1,
        initializer=register_pid,
        initargs=(str(tmp_path),),
    ) as pool:
        try:
            out = pool.map_list(
                kill_a_sibling, [str(tmp_path)] * (workers + 2), chunksize=1, on_error="collect"
            )
        except ForkjoinError as exc:  # e.g. "workers exit during start-up": clean, not a hang
            out = [exc]
        for value in out:
            assert isinstance(value, (int, ForkjoinError)), value
        assert len(out) in (1, workers + 2)
        if pool._backend.alive:
            assert pool.map_list(_tasks.square, range(4)) == [0, 1, 4, 9]
    assert time.monotonic() - start < 45


# -- large payloads --------------------------------------------------------------------------------

PAYLOAD = b"p" * (20 * 2**20)  # far more than a socket buffer


def test_crash_while_a_large_argument_is_in_flight():
    start = time.monotonic()
    with fj.Pool(1, "process", retries=0) as pool:
        out = pool.map_list(
            _tasks.kill_after_reading, [PAYLOAD] * 3, on_error="collect", chunksize=1
        )
        assert all(isinstance(v, fj.WorkerCrashedError) for v in out), out
        assert pool.map_list(_tasks.length, [PAYLOAD]) == [len(PAYLOAD)]
    assert time.monotonic() - start < 30


def die_while_sending(nbytes):
    """Return a large result, and be SIGKILLed while it is pickled / sent back."""

    def die():
        time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=die, daemon=True).start()
    return b"r" * nbytes


def test_crash_while_a_large_result_is_in_flight():
    start = time.monotonic()
    with fj.Pool(1, "process", retries=0) as pool:
        out = pool.map_list(die_while_sending, [50 * 2**20] * 2, on_error="collect", chunksize=1)
        for value in out:  # a result that made it back is fine too; a hang is not
            assert isinstance(value, (bytes, fj.WorkerCrashedError)), type(value)
        assert pool.map_list(_tasks.big_bytes, [30 * 2**20]) == [b"x" * (30 * 2**20)]
    assert time.monotonic() - start < 30


def test_large_payloads_both_ways_in_parallel(pool):
    sizes = [PAYLOAD] * 4
    assert pool.map_list(_tasks.identity, sizes, chunksize=1) == sizes


# -- the input iterator ----------------------------------------------------------------------------


def broken_input(n, fail_at):
    for i in range(n):
        if i == fail_at:
            raise KeyError(f"input broke at {i}")
        yield i


def test_input_iterator_raising_surfaces_in_map(pool):
    with pytest.raises(KeyError, match="input broke at 50"):
        pool.map_list(_tasks.sleep_then_square, broken_input(100, 50), chunksize=4)
    assert_pool_works(pool)


def test_input_iterator_raising_surfaces_in_imap_after_earlier_results(pool):
    seen = []
    with pytest.raises(KeyError, match="input broke at 30"):
        for value in pool.imap(_tasks.square, broken_input(100, 30), chunksize=1):
            seen.append(value)
    assert seen == [x * x for x in range(len(seen))]
    assert len(seen) <= 30
    assert_pool_works(pool)


def test_input_iterator_raising_leaves_no_task_behind():
    with fj.Pool(2, "process") as pool:
        wait_for_workers(pool, 2)
        items = (1.0 for _ in broken_input(10, 4))  # four slow tasks, then the input breaks
        start = time.monotonic()
        with pytest.raises(KeyError):
            pool.map_list(_tasks.sleep_for, items, chunksize=1)
        assert time.monotonic() - start < 0.9, "the error must not wait for running tasks"
        # the failed call's tasks are dropped, or finish on their own; nothing waits for them
        assert pool.map_list(_tasks.square, [3]) == [9]
        start = time.monotonic()
    assert time.monotonic() - start < 2 * 1.0 + 1, "shutdown waited for dropped tasks"


def test_map_reduce_propagates_worker_crash(pool):
    with pytest.raises(fj.WorkerCrashedError):
        pool.map_reduce(_tasks.crash_on_three, range(6), operator.add, chunksize=1)


def test_stats_busy_seconds_are_sane_after_a_crash_and_a_timeout():
    # a task that never reported its start must not count the whole monotonic clock as busy
    with fj.Pool(1, "process", retries=0) as pool:
        pool.map_list(_tasks.crash_task, ["os._exit(1)"], on_error="collect")
        pool.map_list(_tasks.sleep_for, [30], timeout=0.2, on_error="collect")
        stats = pool.stats()
    assert stats.busy_seconds < stats.elapsed_seconds + 1, stats.busy_seconds
    assert all(u.busy_seconds < stats.elapsed_seconds + 1 for u in stats.workers.values())


def test_orphan_check_helper_sees_dead_pids():
    # guards the helper the lifecycle tests rely on
    assert pid_gone(2**22 + 12345)
    assert not pid_gone(os.getpid())
