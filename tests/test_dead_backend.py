"""A call waiting on a backend that stops (issue 16): it ends with ``BrokenPoolError`` when the
backend can report nothing more, and keeps waiting while a backend that is shutting down
gracefully still finishes the tasks it accepted."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

import forkjoin as fj
from forkjoin.backends import base
from forkjoin.backends.base import Backend, DoneCallback
from forkjoin.core.task import Task
from forkjoin.engine.scheduler import WAIT_SLICE_SECONDS

pytestmark = pytest.mark.timeout(60)


class LosingBackend(Backend):
    """Accepts tasks and loses them: after ``LOSE_AFTER`` seconds it is gone, as a cluster
    backend is when its connection drops, and it never reports the tasks it held."""

    name = "losing"
    LOSE_AFTER = 0.3

    def __init__(self, workers: int, **kwargs: Any) -> None:
        super().__init__(workers, **kwargs)
        self.accepted: list[Task] = []
        self._closed = False
        self._timer = threading.Timer(self.LOSE_AFTER, self.shutdown)
        self._timer.start()

    def submit(self, task: Task, done: DoneCallback) -> None:
        if self._closed:
            raise RuntimeError("the losing backend is gone")
        self.accepted.append(task)

    def shutdown(self, wait: bool = True, *, cancel_pending: bool = False) -> None:
        self._closed = True
        self._timer.cancel()

    @property
    def alive(self) -> bool:
        return not self._closed


@pytest.fixture
def losing(monkeypatch):
    monkeypatch.setitem(base._REGISTRY, "losing", (__name__, "LosingBackend", ""))
    return "losing"


@pytest.mark.parametrize("call", ["map", "imap"])
def test_a_call_on_a_backend_that_dies_under_it_raises_promptly(losing, call):
    with fj.Pool(workers=2, backend=losing) as pool:
        started = time.monotonic()
        with pytest.raises(fj.BrokenPoolError, match=r"losing backend stopped .* outstanding"):
            if call == "map":
                pool.map_list(abs, range(10), chunksize=1)
            else:
                list(pool.imap(abs, range(10), chunksize=1))
        waited = time.monotonic() - started
        assert pool._backend.accepted, "the call had tasks out when the backend went"
    # noticed within one wait slice of the backend going (plus scheduling noise)
    assert waited < LosingBackend.LOSE_AFTER + 2 * WAIT_SLICE_SECONDS + 2.0, waited


def nap(x: int) -> int:
    time.sleep(1.5 * WAIT_SLICE_SECONDS)  # longer than one wait slice: the check runs meanwhile
    return x * 10


@pytest.mark.parametrize("backend", ["threads", "process"])
def test_a_graceful_shutdown_under_a_call_still_delivers_its_accepted_tasks(backend):
    # shutdown(wait=False) stops new work, not the tasks already accepted: the call that holds
    # them must get their results, not a BrokenPoolError
    pool = fj.Pool(workers=2, backend=backend)
    try:
        results = pool.imap(nap, range(4), chunksize=1)
        first = next(results)  # every task is submitted by now (the window holds all four)
        pool.shutdown(wait=False)
        assert [first, *results] == [0, 10, 20, 30]
    finally:
        pool.shutdown(wait=True)
