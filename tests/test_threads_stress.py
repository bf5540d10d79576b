"""Several threads using forkjoin at once (issue 16): fj.map with different workers= (so the
shared pool is replaced under running jobs), Pool.submit and imap, all bounded in time. No hang,
every result right."""

from __future__ import annotations

import threading

import _tasks
import pytest

import forkjoin as fj

pytestmark = pytest.mark.timeout(120)


def _mapper(workers: int, rounds: int, errors: list[BaseException]) -> None:
    try:
        for r in range(rounds):
            items = list(range(r, r + 40))
            assert fj.map(_tasks.square, items, workers=workers) == [x * x for x in items]
    except BaseException as exc:  # reported by the test
        errors.append(exc)


def _submitter(pool: fj.Pool, rounds: int, errors: list[BaseException]) -> None:
    try:
        for r in range(rounds):
            futures = [pool.submit(_tasks.add, r, i) for i in range(20)]
            assert [f.result(timeout=60) for f in futures] == [r + i for i in range(20)]
            assert list(pool.imap(_tasks.square, range(10))) == [x * x for x in range(10)]
    except BaseException as exc:
        errors.append(exc)


@pytest.mark.slow
@pytest.mark.parametrize("run", range(3))
def test_threads_mapping_and_submitting_at_once_never_hang(run):
    errors: list[BaseException] = []
    with fj.Pool(workers=2) as pool:
        threads = [
            threading.Thread(target=_mapper, args=(workers, 6, errors)) for workers in (1, 2, 3)
        ] + [threading.Thread(target=_submitter, args=(pool, 6, errors)) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(100)
        assert not any(thread.is_alive() for thread in threads), "a thread hung"
    assert not errors, errors
