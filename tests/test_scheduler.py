"""split / merge / options / backpressure: the scheduler's parts, one at a time, then together."""

from __future__ import annotations

import dataclasses
import math
import os
import time

import _tasks
import pytest
from helpers import wait_until

import forkjoin as fj
from forkjoin.engine import chunking, scheduler
from forkjoin.engine.api import shared_pools
from forkjoin.engine.chunking import AutoChunker, take_chunk
from forkjoin.engine.merge import OrderedMerge
from forkjoin.engine.options import RunOptions, options_from
from forkjoin.engine.scheduler import IN_FLIGHT_PER_WORKER

pytestmark = pytest.mark.timeout(60)


# -- AutoChunker -----------------------------------------------------------------------------------


def test_fixed_chunksize_is_used_as_is_and_ignores_measurements():
    chunker = AutoChunker(workers=4, total=10, chunksize=3)
    chunker.observe_compute(3, 100.0)
    chunker.observe_bytes(3, 10**9)
    assert [chunker.next_size() for _ in range(5)] == [3] * 5


def test_warm_up_sends_single_items_until_the_first_measurement():
    # (commit 975adba replaced warm-up doubling by single items: a slow item must not be
    # batched before anything is known about it)
    chunker = AutoChunker(workers=2, total=None)
    assert [chunker.next_size() for _ in range(6)] == [1] * 6
    chunker.observe_bytes(1, 100)  # bytes alone say nothing about time
    assert chunker.next_size() == 1
    chunker.observe_compute(10, 0.01)  # 1 ms per item
    assert chunker.next_size() == round(chunking.TARGET_TASK_SECONDS / 0.001)


def test_chunk_aims_at_target_seconds():
    chunker = AutoChunker(workers=2, total=None)
    chunker.observe_compute(100, 100 * 1e-4)  # 0.1 ms per item
    assert chunker.next_size() == int(chunking.TARGET_TASK_SECONDS / 1e-4)
    slow = AutoChunker(workers=2, total=None)
    slow.observe_compute(1, 5.0)  # one item takes longer than the target
    assert slow.next_size() == 1


def test_measurements_are_smoothed():
    chunker = AutoChunker(workers=2, total=None)
    chunker.observe_compute(10, 0.01)  # 1 ms per item
    chunker.observe_compute(10, 0.11)  # 11 ms per item
    keep = 1 - chunking.SMOOTHING
    expected = (0.01 * keep + 0.11) / (10 * keep + 10)
    assert 0.001 < expected < 0.011
    assert chunker.seconds_per_item == pytest.approx(expected)
    assert chunker.next_size() == int(chunking.TARGET_TASK_SECONDS / expected)


def test_measurements_count_by_items():
    chunker = AutoChunker(workers=2, total=None)
    chunker.observe_compute(1, 1e-5)  # a one-item warm-up task: mostly fixed overhead
    chunker.observe_compute(5000, 5000 * 1e-7)
    assert chunker.seconds_per_item == pytest.approx(1e-7, rel=0.05)  # old EWMA: ~3e-6


def test_empty_observations_are_ignored():
    chunker = AutoChunker(workers=2, total=None)
    chunker.observe_compute(0, 1.0)
    chunker.observe_bytes(0, 100)
    chunker.observe_bytes(5, 0)
    assert chunker.seconds_per_item is None and chunker.bytes_per_item is None


@pytest.mark.parametrize("total,workers", [(1000, 2), (1000, 8), (10, 4), (1, 1), (3, 16)])
def test_known_length_caps_chunks_so_every_worker_gets_several(total, workers):
    chunker = AutoChunker(workers=workers, total=total)
    cap = max(1, math.ceil(total / (workers * chunking.CHUNKS_PER_WORKER)))
    chunker.observe_compute(1000, 1e-6)  # nearly free items: the cap is what limits
    assert chunker.next_size() == cap


def test_unknown_length_caps_at_max_auto_chunksize():
    chunker = AutoChunker(workers=2, total=None)
    chunker.observe_compute(10**6, 1e-9)
    assert chunker.next_size() == chunking.MAX_AUTO_CHUNKSIZE


def test_bytes_cap_limits_large_items():
    chunker = AutoChunker(workers=2, total=None)
    chunker.observe_compute(100, 1e-6)  # fast: timing alone would allow the max
    chunker.observe_bytes(2, 8 * 2**20)  # 4 MiB per item
    assert chunker.next_size() == chunking.TARGET_TASK_BYTES // (4 * 2**20)
    huge = AutoChunker(workers=2, total=None)
    huge.observe_compute(100, 1e-6)
    huge.observe_bytes(1, 64 * 2**20)
    assert huge.next_size() == 1, "an item larger than the byte target still goes, alone"


def test_take_chunk():
    iterator = iter(range(5))
    assert take_chunk(iterator, 2) == [0, 1]
    assert take_chunk(iterator, 10) == [2, 3, 4]
    assert take_chunk(iterator, 3) == []


def test_auto_chunks_grow_on_a_real_run():
    with fj.Pool(2, "process") as pool:
        pool.map_list(_tasks.square, range(20_000))
        sizes = [r.items for r in pool.events.task_records()]
    assert sizes[0] == 1, "warm-up starts with single items"
    assert max(sizes) > 100, "fast items end up in large chunks"
    assert max(sizes) <= math.ceil(20_000 / (2 * chunking.CHUNKS_PER_WORKER))
    assert sum(sizes) == 20_000


def test_timeout_means_one_item_per_task():
    with fj.Pool(2, "process") as pool:
        pool.map_list(_tasks.square, range(30), timeout=10)
        assert {r.items for r in pool.events.task_records()} == {1}


# -- OrderedMerge ----------------------------------------------------------------------------------


def test_ordered_merge_waits_for_the_next_index():
    merge = OrderedMerge()
    merge.add(3, ["d", "e"])
    merge.add(1, ["b"])
    assert merge.pop_ready() == [] and len(merge) == 2
    merge.add(0, ["a"])
    assert merge.pop_ready() == ["a", "b"]
    assert len(merge) == 1 and merge.next_index == 2
    merge.add(2, ["c"])
    assert merge.pop_ready() == ["c", "d", "e"]
    assert len(merge) == 0 and merge.next_index == 5
    assert merge.pop_ready() == []


def test_ordered_merge_handles_split_fragments_in_any_order():
    merge = OrderedMerge()
    out = []
    # a chunk 0..5 split into single items (as after a crash), arriving backwards
    for index in reversed(range(6)):
        merge.add(index, [index * 10])
        out += merge.pop_ready()
    assert out == [0, 10, 20, 30, 40, 50]


def test_ordered_merge_ignores_empty_fragments():
    merge = OrderedMerge()
    merge.add(0, [])
    assert len(merge) == 0 and merge.pop_ready() == []


# -- RunOptions ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options,words",
    [
        ({"workers": 0}, "workers must be a positive integer"),
        ({"workers": -2}, "workers must be a positive integer"),
        ({"workers": 1.5}, "workers must be a positive integer"),
        ({"workers": "2"}, "workers must be a positive integer"),
        ({"chunksize": 0}, "chunksize must be a positive integer"),
        ({"chunksize": "big"}, "chunksize must be a positive integer"),
        ({"chunksize": 2.5}, "chunksize must be a positive integer"),
        ({"retries": -1}, "retries must be an integer >= 0"),
        ({"retries": 1.0}, "retries must be an integer >= 0"),
        ({"timeout": 0}, "timeout must be a positive number"),
        ({"timeout": -3}, "timeout must be a positive number"),
        ({"on_error": "ignore"}, "on_error must be one of"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"seed": 1.5}, "seed must be a non-negative integer"),
        ({"max_in_flight": 0}, "max_in_flight must be >= 1"),
    ],
)
def test_invalid_options_are_refused_with_the_value(options, words):
    with pytest.raises(ValueError, match=words) as info:
        RunOptions(**options)
    assert repr(next(iter(options.values()))) in str(info.value)
    with pytest.raises(ValueError, match=words):  # and before any work starts
        fj.map(_tasks.square, [1, 2], **options)


def test_options_defaults():
    options = RunOptions()
    assert options.workers is None and options.backend is None
    assert options.chunksize == "auto" and options.ordered is True
    assert options.retries == 2 and options.retry_on == ()
    assert options.timeout is None and options.seed is None
    assert options.on_error == "raise" and options.max_in_flight is None


def test_retry_on_is_normalised_to_a_tuple():
    assert RunOptions(retry_on=OSError).retry_on == (OSError,)
    assert RunOptions(retry_on=[OSError, KeyError]).retry_on == (OSError, KeyError)


def test_options_are_frozen_and_replace_validates():
    options = RunOptions(workers=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.workers = 3
    assert options.replace(retries=5).retries == 5 and options.retries == 2
    with pytest.raises(ValueError):
        options.replace(workers=0)


def test_options_from_names_unknown_options():
    with pytest.raises(TypeError, match=r"\['chunk_size'\]") as info:
        options_from(chunk_size=3)
    assert "chunksize" in str(info.value), "the message lists the valid names"
    base = RunOptions(retries=4)
    assert options_from(base) is base
    assert options_from(base, seed=1) == RunOptions(retries=4, seed=1)


# -- backpressure ----------------------------------------------------------------------------------


class CountingSource:
    """An input that counts how far it has been read."""

    def __init__(self, n=None):
        self.n = n
        self.pulled = 0

    def __iter__(self):
        i = 0
        while self.n is None or i < self.n:
            self.pulled += 1
            yield i
            i += 1


def read_ahead_bound(window, chunk, ordered):
    """Items read but not yet consumed, at most: ``window`` tasks submitted and not finished,
    plus (ordered) finished tasks waiting in the reorder buffer for an earlier one, plus the
    chunk being cut and the values of the fragment being handed out."""
    buffered = window * getattr(scheduler, "REORDER_ALLOWANCE", 1) if ordered else 0
    return (window + buffered + 2) * chunk


def default_bound(workers, ordered):
    return read_ahead_bound(IN_FLIGHT_PER_WORKER * workers, chunking.MAX_AUTO_CHUNKSIZE, ordered)


@pytest.mark.parametrize("ordered", [True, False])
def test_two_million_items_stream_with_bounded_read_ahead(ordered):
    n = 2_000_000
    source = CountingSource(n)
    consumed = 0
    total = 0
    worst = 0
    for value in fj.imap(_tasks.identity, source, workers=2, ordered=ordered):
        consumed += 1
        total += value
        if consumed % 10_000 == 0:
            worst = max(worst, source.pulled - consumed)
    assert consumed == n and total == n * (n - 1) // 2
    assert worst <= default_bound(2, ordered), f"read {worst} items ahead of the consumer"


def test_endless_input_read_ahead_stays_bounded():
    source = CountingSource(None)
    results = fj.imap(_tasks.identity, source, workers=2)
    for consumed, value in enumerate(results, 1):
        assert value == consumed - 1
        if consumed == 300_000:
            break
    assert source.pulled - consumed <= default_bound(2, ordered=True)
    results.close()
    pulled = source.pulled
    time.sleep(0.2)
    assert source.pulled == pulled, "a closed imap must stop reading its input"


@pytest.mark.parametrize("ordered", [True, False])
def test_max_in_flight_bounds_read_ahead_exactly(ordered):
    source = CountingSource(2_000)
    worst = 0
    consumed = 0
    for _ in fj.imap(
        _tasks.identity, source, workers=2, ordered=ordered, chunksize=10, max_in_flight=3
    ):
        consumed += 1
        worst = max(worst, source.pulled - consumed)
    assert consumed == 2_000
    bound = read_ahead_bound(3, 10, ordered)
    assert worst <= bound, f"{worst} items read ahead with 3 tasks of 10 in flight"


def test_a_slow_first_item_does_not_let_ordered_results_pile_up():
    """Ordered: while item 0 is slow, finished later items wait in the reorder buffer, which is
    bounded too, so the input is not read further."""
    source = CountingSource(300)
    delays = (1.0 if i == 0 else 0.0 for i in source)
    results = fj.imap(_tasks.sleep_for, delays, workers=2, chunksize=1, max_in_flight=4)
    assert next(results) == 1.0
    bound = read_ahead_bound(4, 1, ordered=True)
    assert source.pulled <= bound, f"read {source.pulled} items while item 0 ran"
    assert sum(1 for _ in results) == 299


class Counted:
    """An input item that counts how many of its kind are alive in this process."""

    live = 0
    peak = 0

    def __init__(self, i):
        self.i = i
        Counted.live += 1
        Counted.peak = max(Counted.peak, Counted.live)

    def __del__(self):
        Counted.live -= 1

    def __reduce__(self):  # travels as a plain int: workers never build a Counted
        return (int, (self.i,))


@pytest.mark.parametrize("ordered", [True, False])
def test_memory_stays_flat(ordered):
    """300k items go through; the caller never holds more of them than the window allows (the
    engine keeps no reference to an item once its result is merged). With the default window the
    same holds at a larger constant: see the read-ahead tests above."""
    Counted.live = Counted.peak = 0
    source = (Counted(i) for i in range(300_000))
    results = fj.imap(
        _tasks.identity, source, workers=2, chunksize=500, max_in_flight=2, ordered=ordered
    )
    assert sum(results) == 300_000 * 299_999 // 2
    assert Counted.peak <= read_ahead_bound(2, 500, ordered), Counted.peak
    assert Counted.live == 0


# -- reuse -----------------------------------------------------------------------------------------


def test_a_second_map_reuses_the_same_workers():
    first = set(fj.map(_tasks.pid_of, range(40), workers=2, chunksize=1))
    backend, _ = shared_pools.get("process", 2)
    shared_pools.release(backend)
    pids = set(backend.worker_pids())
    second = set(fj.map(_tasks.pid_of, range(40), workers=2, chunksize=1))
    assert first <= pids and second <= pids
    assert set(backend.worker_pids()) == pids
    assert os.getpid() not in pids


def test_a_different_worker_count_replaces_the_shared_pool():
    fj.map(_tasks.pid_of, range(4), workers=2)
    old, _ = shared_pools.get("process", 2)
    shared_pools.release(old)
    old_pids = old.worker_pids()
    fj.map(_tasks.pid_of, range(4), workers=1, backend="process")
    new, _ = shared_pools.get("process", 1)
    shared_pools.release(new)
    assert new is not old and not old.alive
    from helpers import pid_gone

    assert wait_until(lambda: all(pid_gone(p) for p in old_pids), 10)


def test_a_shared_pool_in_use_is_not_stopped_by_a_call_of_another_shape():
    lazy = fj.imap(_tasks.square, range(100), workers=2, chunksize=1)
    assert next(lazy) == 0  # a job still running on the 2-worker pool
    assert fj.map(_tasks.square, range(5), workers=1) == [0, 1, 4, 9, 16]  # replaces it
    assert list(lazy) == [x * x for x in range(1, 100)]  # ...which finished this job first


def test_an_explicit_backend_name_selects_the_shared_pool():
    assert fj.map(_tasks.square, [2], backend="threads", workers=2) == [4]
    assert fj.map(_tasks.square, [3], backend="process", workers=2) == [9]
    names = set(shared_pools._pools)
    assert {"threads", "process"} <= names
