"""The backend contract: every behaviour here holds on every backend in ``BACKENDS``.

Each test takes the ``backend`` fixture and runs once per backend; a new backend joins by being
added to the list in helpers.py. Backend-specific faults (crashes, timeouts) live in
test_crash_matrix.py.
"""

from __future__ import annotations

import functools
import operator
import pickle
import threading
import time
import warnings

import _tasks
import numpy as np
import pytest
from helpers import is_parallel, read_count

import forkjoin as fj
from forkjoin.errors import RemoteTraceback

pytestmark = pytest.mark.timeout(60)

WORKERS = 2


def run(backend, fn, items, **options):
    options.setdefault("workers", WORKERS)
    return fj.map(fn, items, backend=backend, **options)


# -- results ---------------------------------------------------------------------------------------


def test_map_returns_results_in_input_order(backend):
    # later items sleep less, so on a parallel backend they finish first
    assert run(backend, _tasks.slow_square_reverse, range(20), chunksize=1) == [
        x * x for x in range(20)
    ]


@pytest.mark.parametrize("chunksize", [1, 3, 7, 64, 1000, "auto"])
def test_chunksize_never_changes_results(backend, chunksize):
    assert run(backend, _tasks.square, range(100), chunksize=chunksize) == [
        x * x for x in range(100)
    ]


def test_unordered_yields_every_result_once(backend):
    out = list(fj.imap(_tasks.square, range(50), workers=WORKERS, backend=backend, ordered=False))
    assert sorted(out) == [x * x for x in range(50)]


def test_unordered_does_not_wait_for_a_slow_first_item(backend):
    if not is_parallel(backend):
        pytest.skip("a sequential backend finishes items in input order")
    delays = [2.0] + [0.0] * 5
    start = time.monotonic()
    results = fj.imap(
        _tasks.sleep_for, delays, workers=WORKERS, backend=backend, ordered=False, chunksize=1
    )
    first = next(results)
    waited = time.monotonic() - start
    rest = list(results)
    assert first == 0.0 and waited < 1.5, f"first result {first!r} after {waited:.2f} s"
    assert sorted([first, *rest]) == sorted(delays)


def test_empty_input(backend):
    assert run(backend, _tasks.square, []) == []
    assert list(fj.imap(_tasks.square, iter([]), backend=backend, workers=WORKERS)) == []
    assert fj.map_reduce(_tasks.square, [], operator.add, 10, backend=backend) == 10
    with pytest.raises(TypeError, match="no items with no initial value"):
        fj.map_reduce(_tasks.square, [], operator.add, backend=backend)


def test_generator_input(backend):
    assert run(backend, _tasks.square, (x for x in range(57))) == [x * x for x in range(57)]


def test_imap_is_lazy(backend):
    pulled = []

    def source():
        for x in range(10):
            pulled.append(x)
            yield x

    results = fj.imap(_tasks.square, source(), backend=backend, workers=WORKERS)
    assert pulled == [], "imap must not read the input before the first result is asked for"
    assert next(results) == 0
    assert list(results) == [x * x for x in range(1, 10)]


def test_star_map_on_pool(backend):
    with fj.Pool(WORKERS, backend) as pool:
        assert list(pool.map(_tasks.add, [1, 2, 3], [10, 20, 30])) == [11, 22, 33]


def test_lambdas_and_closures(backend):
    offset = 1000
    assert run(backend, lambda x: x + offset, range(5)) == [1000, 1001, 1002, 1003, 1004]

    def make_adder(k):
        return lambda x: x + k

    assert run(backend, make_adder(7), [1, 2]) == [8, 9]


def test_large_values_round_trip(backend):
    data = [bytes([i]) * 300_000 for i in range(4)]
    assert run(backend, _tasks.length, data) == [300_000] * 4
    assert run(backend, _tasks.big_bytes, [1 << 20, 5]) == [b"x" * (1 << 20), b"xxxxx"]


# -- map_reduce ------------------------------------------------------------------------------------


def test_map_reduce_sum(backend):
    total = fj.map_reduce(_tasks.square, range(100), operator.add, backend=backend)
    assert total == sum(x * x for x in range(100))


def test_map_reduce_unordered_commutative(backend):
    total = fj.map_reduce(
        _tasks.square, range(100), operator.add, 0, backend=backend, ordered=False, chunksize=3
    )
    assert total == sum(x * x for x in range(100))


def test_map_reduce_ordered_keeps_order_for_non_commutative_reduce(backend):
    joined = fj.map_reduce(
        str, range(30), operator.add, "", backend=backend, workers=WORKERS, chunksize=2
    )
    assert joined == "".join(str(x) for x in range(30))


# -- errors ----------------------------------------------------------------------------------------


def test_task_error_raise(backend):
    with pytest.raises(fj.TaskError) as info:
        run(backend, _tasks.fail_on_three, range(10), chunksize=4)
    error = info.value
    assert isinstance(error, ValueError), "except ValueError must still catch it"
    assert error.index == 3
    assert error.item_repr == "3"
    assert isinstance(error.original, ValueError)
    assert str(error.original) == "bad item 3"
    assert error.original_type == "ValueError"
    assert "item 3" in str(error) and "ValueError" in str(error) and "bad item 3" in str(error)
    assert isinstance(error.__cause__, RemoteTraceback)
    assert "fail_on" in error.__cause__.tb and "bad item 3" in error.__cause__.tb
    assert "fail_on" in error.traceback_text


def test_task_error_of_a_builtin_lookup_error(backend):
    with pytest.raises(KeyError) as info:
        run(backend, _tasks.raise_key_error, ["k"])
    assert isinstance(info.value, fj.TaskError)
    assert info.value.index == 0


def test_task_error_survives_pickling(backend):
    with pytest.raises(fj.TaskError) as info:
        run(backend, _tasks.fail_on_three, [3])
    copy = pickle.loads(pickle.dumps(info.value))
    assert isinstance(copy, fj.TaskError) and isinstance(copy, ValueError)
    assert (copy.index, copy.item_repr, copy.original_type) == (0, "3", "ValueError")
    assert str(copy) == str(info.value)


def test_on_error_collect(backend):
    out = run(backend, _tasks.fail_on, [0, 1, 2, 3, 4, 3], on_error="collect", chunksize=2)
    assert out[:3] == [0, 1, 2] and out[4] == 4
    for position in (3, 5):
        assert isinstance(out[position], fj.TaskError)
        assert isinstance(out[position], ValueError)
        assert out[position].index == position


def test_on_error_collect_in_one_large_chunk(backend):
    """Failures at the edges and in the middle of one large chunk land where their items were
    (the caller finds them in the chunk's results without looking at every item)."""
    bad = (0, 3, 9_999, 19_999)
    fn = functools.partial(_tasks.fail_on, bad=bad)
    out = run(backend, fn, list(range(20_000)), on_error="collect", chunksize=20_000)
    assert len(out) == 20_000
    for position, value in enumerate(out):
        if position in bad:
            assert isinstance(value, fj.TaskError) and value.index == position
        else:
            assert value == position


def test_on_error_skip_warns_with_count(backend):
    with pytest.warns(RuntimeWarning, match="2 item"):
        out = run(backend, _tasks.fail_on, [0, 1, 3, 2, 3, 4], on_error="skip", chunksize=2)
    assert out == [0, 1, 2, 4]


def test_on_error_skip_unordered(backend):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = list(
            fj.imap(
                _tasks.fail_on_three,
                range(10),
                backend=backend,
                workers=WORKERS,
                ordered=False,
                on_error="skip",
            )
        )
    assert sorted(out) == [0, 1, 2, 4, 5, 6, 7, 8, 9]


def test_failure_is_not_retried_by_default(backend, tmp_path):
    counter = tmp_path / "calls"
    with pytest.raises(ConnectionError):
        run(backend, _tasks.fail_first_times, [(str(counter), 5)], retries=3)
    assert read_count(counter) == 1


def test_retry_on_retries_named_exceptions(backend, tmp_path):
    counter = tmp_path / "calls"
    out = run(
        backend,
        _tasks.fail_first_times,
        [(str(counter), 2)],
        retries=2,
        retry_on=(ConnectionError,),
    )
    assert out == [2]
    assert read_count(counter) == 3


def test_retry_on_gives_up_after_retries(backend, tmp_path):
    counter = tmp_path / "calls"
    with pytest.raises(fj.TaskError) as info:
        run(backend, _tasks.fail_first_times, [(str(counter), 5)], retries=1, retry_on=OSError)
    assert isinstance(info.value, ConnectionError)
    assert read_count(counter) == 2


def test_retry_on_in_a_chunk_keeps_the_other_items(backend, tmp_path):
    counter = tmp_path / "calls"
    items = [(str(tmp_path / f"other{i}"), 0) for i in range(3)]
    items.insert(1, (str(counter), 1))
    out = run(backend, _tasks.fail_first_times, items, chunksize=4, retry_on=(ConnectionError,))
    assert out == [0, 1, 0, 0]


def test_sys_exit_in_a_task_is_a_failure_not_a_result(backend):
    with pytest.raises(fj.WorkerCrashedError):
        run(backend, _tasks.crash_task, ["sys.exit(0)"], retries=0)


def test_unknown_option_is_refused(backend):
    with pytest.raises(TypeError, match="bogus"):
        run(backend, _tasks.square, [1], bogus=1)


def test_timeout_support_matches_capability(backend):
    from forkjoin.backends.base import backend_class

    if backend_class(backend).capabilities.supports_timeout:
        assert run(backend, _tasks.square, [1, 2], timeout=30) == [1, 4]
    else:
        with pytest.raises(ValueError, match="timeout"):
            run(backend, _tasks.square, [1, 2], timeout=30)


# -- seeds -----------------------------------------------------------------------------------------


def expected_draws(seed, n):
    return [
        [
            int(v)
            for v in np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i,))).integers(
                0, 2**31, size=3
            )
        ]
        for i in range(n)
    ]


@pytest.mark.parametrize("workers,chunksize", [(1, 1), (2, 1), (2, 5), (2, "auto"), (3, 16)])
def test_seed_streams_do_not_depend_on_workers_or_chunks(backend, workers, chunksize):
    out = run(
        backend, _tasks.draw_numbers, range(24), seed=1234, workers=workers, chunksize=chunksize
    )
    assert [draws for draws, _ in out] == expected_draws(1234, 24)


def test_seed_also_seeds_the_global_random_module(backend):
    if backend == "threads":
        pytest.skip(
            "threads share random's global state: under seed= only fj.rng() is per item there "
            "(backends/inline.py run_task_here)"
        )
    first = [r for _, r in run(backend, _tasks.draw_numbers, range(6), seed=5)]
    second = [r for _, r in run(backend, _tasks.draw_numbers, range(6), seed=5, chunksize=2)]
    assert first == second
    # and the same numbers as worker processes draw: backend="inline" reproduces a process run
    in_processes = run("process", _tasks.draw_numbers, range(6), seed=5)
    assert first == [r for _, r in in_processes]


def test_seed_different_seeds_differ(backend):
    a = run(backend, _tasks.draw_numbers, range(4), seed=1)
    b = run(backend, _tasks.draw_numbers, range(4), seed=2)
    assert [d for d, _ in a] != [d for d, _ in b]
    assert len({tuple(d) for d, _ in a}) == 4, "every item gets its own stream"


def test_rng_outside_a_seeded_call_is_an_error(backend):
    message = run(backend, _tasks.rng_outside_task, [0])[0]
    assert "only available inside a task of a call made with seed=" in message
    with pytest.raises(RuntimeError, match="seed="):
        fj.rng()


def test_seeded_submit(backend):
    with fj.Pool(WORKERS, backend, seed=99) as pool:
        first = pool.submit(_tasks.draw_numbers, 0).result(timeout=30)
        second = pool.submit(_tasks.draw_numbers, 0).result(timeout=30)
    # submit indices count up: the n-th submit gets stream n
    assert first[0] == expected_draws(99, 1)[0]
    assert second[0] == expected_draws(99, 2)[1]


# -- Pool ------------------------------------------------------------------------------------------


def test_pool_submit_map_stats(backend):
    with fj.Pool(WORKERS, backend) as pool:
        assert pool.submit(_tasks.add, 1, b=2).result(timeout=30) == 3
        assert list(pool.map(_tasks.square, range(10))) == [x * x for x in range(10)]
        assert pool.map_list(_tasks.square, range(5)) == [0, 1, 4, 9, 16]
        assert pool.map_reduce(_tasks.square, range(5), operator.add) == 30
        failed = pool.submit(_tasks.fail_on_three, 3)
        assert isinstance(failed.exception(timeout=30), ValueError)
        stats = pool.stats()
    assert stats.items_done >= 1 + 10 + 5 + 5
    assert stats.tasks_done >= 4
    assert stats.tasks_submitted >= stats.tasks_done
    assert stats.tasks_failed == 1
    assert stats.worker_crashes == 0 and stats.timeouts == 0
    assert stats.workers_started >= 1
    assert 0 <= stats.busy_seconds < stats.elapsed_seconds * max(1, WORKERS) + 1
    assert stats.as_dict()["items_done"] == stats.items_done


def test_pool_options_are_defaults_per_call(backend):
    with fj.Pool(WORKERS, backend, on_error="collect") as pool:
        out = pool.map_list(_tasks.fail_on_three, range(5))
        assert isinstance(out[3], fj.TaskError)
        with pytest.raises(fj.TaskError):
            pool.map_list(_tasks.fail_on_three, range(5), on_error="raise")


def test_pool_initializer_runs_in_every_worker(backend, monkeypatch):
    monkeypatch.delenv("FORKJOIN_TEST_MARKER", raising=False)
    with fj.Pool(WORKERS, backend, initializer=_tasks.set_marker, initargs=("ready",)) as pool:
        out = pool.map_list(_tasks.read_marker, range(8), chunksize=1)
    assert out == ["ready"] * 8


def test_pool_is_usable_from_several_threads(backend):
    with fj.Pool(WORKERS, backend) as pool:
        results = {}

        def work(k):
            results[k] = pool.map_list(lambda pair: pair[0] + pair[1], [(k, i) for i in range(20)])

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert results == {k: [k + i for i in range(20)] for k in range(4)}


def test_workers_one_without_backend_runs_in_one_worker_process():
    # isolation holds unless backend="inline" is asked for (issue 15): one worker, not the caller
    import os

    pids = fj.map(_tasks.pid_of, range(3), workers=1)
    assert len(set(pids)) == 1 and pids[0] != os.getpid()


def test_default_map_runs_in_other_processes():
    import os

    pids = set(fj.map(_tasks.pid_of, range(8), chunksize=1))
    assert os.getpid() not in pids


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        fj.map(_tasks.square, [1], backend="nope")


def test_time_per_item_is_measured(backend):
    with fj.Pool(WORKERS, backend) as pool:
        pool.map_list(_tasks.sleep_for, [0.05] * 4, chunksize=1)
        records = pool.events.task_records()
    busy = [r.end_time - r.start_time for r in records]
    assert len(busy) == 4
    assert all(0.04 <= b < 5 for b in busy), busy
    assert all(r.submit_time <= r.start_time + 1e-3 <= r.merge_time + 1e-3 for r in records)


def test_progress_true_draws_a_bar(backend, capsys):
    assert run(backend, _tasks.square, range(10), progress=True) == [x * x for x in range(10)]
    err = capsys.readouterr().err
    assert "10/10" in err


def test_wall_time_shows_parallelism(backend):
    if not is_parallel(backend):
        pytest.skip("sequential backend")
    # a fresh pool, start-up included
    start = time.monotonic()
    run(backend, _tasks.sleep_for, [0.5] * (2 * WORKERS), chunksize=1)
    elapsed = time.monotonic() - start
    assert elapsed < 0.5 * 2 * WORKERS - 0.3, f"{2 * WORKERS} x 0.5 s took {elapsed:.2f} s"
