"""Worker processes over the caller's life (RELIABILITY.md rows 17, 21): the caller SIGKILLed,
Ctrl-C, leaving early, nested pools, and what a worker's environment looks like.

The caller-side scenarios run a small script in a child interpreter, which the test then kills or
interrupts; the script reports its worker pids through files in a temporary directory.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import _tasks
import pytest
from helpers import pid_gone, wait_until

import forkjoin as fj
from forkjoin.machine import THREAD_CAP_VARIABLES

pytestmark = pytest.mark.timeout(60)

PRELUDE = """
import json, os, sys, time
import forkjoin as fj

OUT = sys.argv[1]

def announce(kind, value):
    tmp = os.path.join(OUT, f".{kind}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(value, f)
    os.replace(tmp, os.path.join(OUT, f"{kind}.{os.getpid()}"))

def long_task(_):
    import subprocess
    grandchild = subprocess.Popen(["sleep", "60"])  # something the task itself started
    announce("worker", [os.getpid(), grandchild.pid])
    time.sleep(60)
"""


def start_script(tmp_path, body):
    script = tmp_path / "caller.py"
    script.write_text(PRELUDE + textwrap.dedent(body))
    return subprocess.Popen(
        [sys.executable, str(script), str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def announced(tmp_path, kind):
    values = []
    for path in tmp_path.glob(f"{kind}.*"):
        values.append(json.loads(path.read_text()))
    return values


def wait_for_workers_announced(tmp_path, proc, count):
    ok = wait_until(
        lambda: len(announced(tmp_path, "worker")) >= count or proc.poll() is not None, 30
    )
    if proc.poll() is not None or not ok:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the caller script did not start its workers:\n{out}\n{err}")
    pids = []
    for worker_pid, grandchild_pid in announced(tmp_path, "worker"):
        pids += [worker_pid, grandchild_pid]
    return pids


def kill_leftovers(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_caller_sigkilled_leaves_no_orphans(tmp_path):
    proc = start_script(
        tmp_path,
        """
        pool = fj.Pool(2, "process")
        futures = [pool.submit(long_task, i) for i in range(4)]
        time.sleep(120)
        """,
    )
    pids = wait_for_workers_announced(tmp_path, proc, 2)
    try:
        assert len(pids) == 4 and not any(pid_gone(p) for p in pids)
        proc.kill()
        proc.wait(10)
        start = time.monotonic()
        gone = wait_until(lambda: all(pid_gone(p) for p in pids), 10)
        elapsed = time.monotonic() - start
        assert gone, (
            f"still running 10 s after the caller died: {[p for p in pids if not pid_gone(p)]}"
        )
        assert elapsed < 10
    finally:
        kill_leftovers(pids)
        proc.communicate()


def test_ctrl_c_in_map_raises_keyboard_interrupt_and_stops_workers(tmp_path):
    proc = start_script(
        tmp_path,
        """
        fj.map(long_task, range(8), workers=2, chunksize=1)
        print("map returned", flush=True)
        """,
    )
    pids = wait_for_workers_announced(tmp_path, proc, 2)
    try:
        proc.send_signal(signal.SIGINT)
        start = time.monotonic()
        out, err = proc.communicate(timeout=10)
        elapsed = time.monotonic() - start
        assert "KeyboardInterrupt" in err, err
        assert "map returned" not in out
        assert proc.returncode in (-signal.SIGINT, 1, 130), proc.returncode
        assert elapsed < 5, f"Ctrl-C took {elapsed:.1f} s to end the program"
        assert wait_until(lambda: all(pid_gone(p) for p in pids), 5), "workers outlived Ctrl-C"
    finally:
        kill_leftovers(pids)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_ctrl_c_inside_a_pool_block_cancels_its_futures(tmp_path):
    proc = start_script(
        tmp_path,
        """
        with fj.Pool(2, "process") as pool:
            futures = [pool.submit(long_task, i) for i in range(20)]
            for future in futures:
                future.result()
        """,
    )
    pids = wait_for_workers_announced(tmp_path, proc, 2)
    try:
        proc.send_signal(signal.SIGINT)
        start = time.monotonic()
        _, err = proc.communicate(timeout=15)
        assert "KeyboardInterrupt" in err, err
        assert time.monotonic() - start < 5
        assert wait_until(lambda: all(pid_gone(p) for p in pids), 5)
    finally:
        kill_leftovers(pids)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_leaving_imap_early_does_not_delay_exit(tmp_path):
    proc = start_script(
        tmp_path,
        """
        def first_fast(x):
            if x:
                long_task(x)
            return x

        for value in fj.imap(first_fast, range(6), workers=2, chunksize=1, ordered=False):
            break
        print("left", flush=True)
        """,
    )
    start = time.monotonic()
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        kill_leftovers(sum((p for p in announced(tmp_path, "worker")), []))
        pytest.fail("the script did not exit within 20 s of leaving imap")
    assert "left" in out, err
    assert proc.returncode == 0, err
    # start-up, one fast task, then exit: the five 60 s tasks left behind must not be waited for
    assert time.monotonic() - start < 10
    pids = sum((p for p in announced(tmp_path, "worker")), [])
    assert wait_until(lambda: all(pid_gone(p) for p in pids), 5)


def test_workers_ignore_sigint_and_live_in_their_own_session(tmp_path):
    with fj.Pool(1, "process") as pool:
        future = pool.submit(_tasks.write_pid_and_sleep, (str(tmp_path / "pid"), 0.5))
        assert wait_until((tmp_path / "pid").exists, 20)
        worker = int((tmp_path / "pid").read_text())
        os.kill(worker, signal.SIGINT)  # what a terminal's Ctrl-C would send, were it in our group
        assert future.result(timeout=10) == worker
        pid, sid, pgid, depth = pool.submit(_tasks.worker_identity).result(timeout=10)
    assert pid == worker
    assert sid != os.getsid(0), "workers have their own session"
    assert pgid == pid, "and lead their own process group"
    assert depth == "1"


# -- nested pools ----------------------------------------------------------------------------------


def test_nested_map_runs_inline_inside_a_worker():
    out = fj.map(_tasks.nested_pids, range(3), workers=2, backend="process", chunksize=1)
    for worker_pid, inner_pids, depth in out:
        assert worker_pid != os.getpid()
        assert inner_pids == [worker_pid] * 4, "the inner map ran in the worker itself"
        assert depth == "1"


def test_nested_map_result_values():
    out = fj.map(_tasks.nested_map, [3, 4], workers=2)
    assert [value for value, _, _ in out] == [0 + 1 + 4, 0 + 1 + 4 + 9]


def test_explicit_process_pool_inside_a_worker_works():
    assert fj.map(_tasks.nested_process_map, [3, 5], workers=2, backend="process") == [5, 30]


def test_third_level_of_process_pools_is_refused_not_a_fork_bomb():
    with pytest.raises(fj.TaskError) as info:
        fj.map(_tasks.deeply_nested_process_map, [3], workers=1, backend="process")
    assert "refusing to start worker processes 3 levels deep" in str(info.value)
    assert "backend='inline' or 'threads'" in str(info.value)


# -- worker environment ----------------------------------------------------------------------------


def test_workers_get_thread_caps(monkeypatch):
    for name in THREAD_CAP_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    from forkjoin.machine import usable_cpu_count

    expected = str(max(1, usable_cpu_count() // 2))
    for name in THREAD_CAP_VARIABLES:
        assert fj.map(_tasks.env_var, [name] * 2, workers=2, backend="process") == [expected] * 2


def test_a_thread_cap_the_user_set_wins(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert fj.map(_tasks.env_var, ["OMP_NUM_THREADS"], workers=2, backend="process") == ["3"]


def test_worker_environment_marks_depth_and_id():
    out = fj.map(
        _tasks.env_var,
        ["FORKJOIN_WORKER_DEPTH", "FORKJOIN_WORKER_ID"],
        workers=1,
        backend="process",
    )
    assert out == ["1", "0"]
    assert "FORKJOIN_WORKER_DEPTH" not in os.environ
