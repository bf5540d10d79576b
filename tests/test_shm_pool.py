"""The segment pool and its regressions: size classes, reuse of small segments, bounded free
lists, closing an fd exactly once; and what a pool frees when the caller lets go of data."""

from __future__ import annotations

import functools
import gc
import os
import time

import numpy as np
import pytest
from helpers import wait_until

import forkjoin as fj
from forkjoin.backends import shm

MiB = 2**20


def test_size_classes_are_at_most_a_quarter_larger() -> None:
    for size in (1, 4096, 4097, 20_000, 16 * MiB, 16 * MiB + 64, 100 * MiB + 3):
        rounded = shm.size_class(size)
        assert rounded >= size
        assert rounded <= max(shm.SMALLEST_SEGMENT, size * 1.25 + 4096)
        assert shm.size_class(rounded) == rounded  # a class is its own class


def test_small_segments_are_reused() -> None:
    pool = shm.SegmentPool()
    try:
        for _ in range(50):
            segment = pool.acquire(16 * 1024)
            pool.drop(segment)
        assert pool.created == 1 and pool.reused == 49
    finally:
        pool.close()


def test_free_segments_are_bounded_in_count_and_bytes() -> None:
    pool = shm.SegmentPool(keep_bytes=8 * MiB, keep_segments=3)
    closed: list[int] = []
    pool.on_close = closed.append
    try:
        held = [pool.acquire(MiB) for _ in range(6)]
        for segment in held:
            pool.drop(segment)
        assert len(closed) == 3 and pool.free_bytes == 3 * MiB
        big = pool.acquire(16 * MiB)  # larger than the pool keeps: closed when dropped
        pool.drop(big)
        assert closed[-1] == big.segment_id
    finally:
        pool.close()
    assert len(closed) == 7


def test_a_closed_segment_never_closes_its_fd_number_again() -> None:
    pool = shm.SegmentPool(keep_bytes=0)
    segment = pool.acquire(64 * 1024)
    pool.drop(segment)  # closed at once: the pool keeps nothing
    read_end, write_end = os.pipe()  # likely to get the segment's old fd numbers
    try:
        del segment
        gc.collect()  # the segment's finalizer must not close them
        os.write(write_end, b"x")
        assert os.read(read_end, 1) == b"x"
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_fresh_segment_is_written_without_faulting_through_its_mapping() -> None:
    segment = shm.Segment(shm.size_class(MiB + 64))
    try:
        data = np.arange(MiB // 8, dtype=np.float64)
        segment.write(64, memoryview(data).cast("B"))
        assert bytes(segment.view[64 : 64 + MiB]) == data.tobytes()
    finally:
        segment.close()


# -- what a pool frees ----------------------------------------------------------------------------


def mapped_while_running(big: np.ndarray, i: int) -> int:
    assert big[i] == 1.0
    return mapped_segment_bytes()


def mapped_segment_bytes(_: object = None) -> int:
    """Bytes of forkjoin segments mapped in this process (read from /proc/self/maps)."""
    total = 0
    with open("/proc/self/maps") as maps:
        for line in maps:
            if "/memfd:forkjoin " in line or line.rstrip().endswith("/memfd:forkjoin (deleted)"):
                start, end = (int(part, 16) for part in line.split()[0].split("-"))
                total += end - start
    return total


def workers_mapped_bytes(pool: fj.Pool) -> int:
    return max(pool.map_list(mapped_segment_bytes, range(8), chunksize=1))


def test_a_function_carrying_a_big_array_is_dropped_by_workers_after_the_call() -> None:
    with fj.Pool(2, backend="process") as pool:
        baseline = workers_mapped_bytes(pool)
        big = np.ones(32 * MiB // 8)
        fn = functools.partial(mapped_while_running, big)
        mapped = pool.map_list(fn, range(8), chunksize=1)
        assert min(mapped) >= baseline + big.nbytes  # the worker maps the function's array
        assert pool.stats().bytes_shared >= big.nbytes  # copied once, and counted
        del fn, big
        gc.collect()
        assert wait_until(lambda: workers_mapped_bytes(pool) < baseline + 16 * MiB, 10), (
            "workers still map the array of a function from a finished call"
        )


def big_result(i: int) -> np.ndarray:
    return np.full(64 * 1024, i, dtype=np.float64)  # 512 KiB: comes back in a segment


@pytest.mark.timeout(60)
def test_releasing_results_while_submitting_never_loses_a_wake_up() -> None:
    """Dropping a result queues a release and wakes the manager from the dropping thread; a
    wake-up racing with the manager's own must not leave it asleep with work pending."""
    with fj.Pool(2, backend="process") as pool:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for array in pool.imap(big_result, range(100)):
                assert array[0] >= 0
            assert pool.map_list(abs, range(-20, 0), chunksize=1) == list(range(20, 0, -1))
