"""memory_limit=: forkjoin stops a task that outgrows it, before the OS does, and says so."""

from __future__ import annotations

import time

import _tasks
import pytest
from helpers import wait_until

import forkjoin as fj


def test_task_over_the_limit_is_stopped_with_a_clear_error() -> None:
    with fj.Pool(2, "process", memory_limit="150MB") as pool:
        results = pool.map_list(_tasks.allocate_mib, [10, 400, 10], chunksize=1, on_error="collect")
        assert results[0] == 10 and results[2] == 10, "other items are unaffected"
        error = results[1]
        assert isinstance(error, fj.WorkerCrashedError)
        assert "memory_limit" in str(error) and "item 1" in str(error)
        assert error.peak_rss > 150 * 10**6
        assert error.index == 1
        assert pool.map_list(_tasks.allocate_mib, [5, 5]) == [5, 5], "pool still healthy"


def test_a_worker_that_keeps_memory_between_tasks_is_replaced() -> None:
    with fj.Pool(1, "process", memory_limit="120MB") as pool:
        first = pool.submit(_tasks.hoard_mib_after_returning, 200).result(timeout=30)
        assert wait_until(lambda: first not in pool.worker_pids(), timeout=10)
        second = pool.submit(_tasks.allocate_mib, 1)
        assert second.result(timeout=30) == 1, "a fresh worker runs the next task"
        assert pool.stats().tasks_failed == 0, "recycling an idle worker fails nothing"


def test_memory_limit_is_parsed_and_checked() -> None:
    with pytest.raises(ValueError, match="4GB"):
        fj.RunOptions(memory_limit="lots")
    assert fj.RunOptions(memory_limit="1KiB").memory_limit == 1024
    with pytest.raises(ValueError, match="backend='process'"):
        fj.map(abs, [1], backend="threads", memory_limit="1GB")


def test_fj_map_accepts_memory_limit() -> None:
    start = time.monotonic()
    assert fj.map(_tasks.allocate_mib, [1, 2], memory_limit="1GB") == [1, 2]
    assert time.monotonic() - start < 30
