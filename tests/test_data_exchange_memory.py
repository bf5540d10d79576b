"""Where an exchange's memory goes: spilled buckets are read without a copy (their buffers are
the memory-mapped file's pages, and stay valid once the file is removed), and a task gives the
buffers it freed back to the OS (the allocators would keep them for the next task)."""

from __future__ import annotations

import gc
import os

import numpy as np
import psutil
import pyarrow as pa
import pytest

from forkjoin.data.exchange import release_memory
from forkjoin.data.spill import SpillDir, read_segments, write_buckets


def _mapped_ranges(path: str) -> list[tuple[int, int]]:
    """Address ranges of this process's mappings of ``path`` (also once it is deleted)."""
    ranges = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].strip().removesuffix(" (deleted)") == path:
                start, end = (int(x, 16) for x in fields[0].split("-"))
                ranges.append((start, end))
    return ranges


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc (Linux)")
def test_spilled_buckets_are_read_from_the_mapped_file_and_outlive_it(spill_root):
    spill = SpillDir()
    path = os.path.join(spill.path, "map-R-00000.arrow")
    buckets = [
        pa.table({"x": np.arange(n, dtype=np.int64), "s": [f"row {i}" for i in range(n)]})
        for n in (1000, 0, 2500, 17)
    ]
    try:
        segments = write_buckets(path, buckets)
        assert segments[1] is None  # an empty bucket takes no space
        tables = read_segments([s for s in segments if s is not None])
        ranges = _mapped_ranges(path)
        assert ranges, "the spill file is not memory-mapped"
        for table in tables:
            for column in table.columns:
                for buffer in column.chunk(0).buffers():
                    if buffer is not None and buffer.size:
                        assert any(lo <= buffer.address < hi for lo, hi in ranges), (
                            "a bucket's buffer was copied out of the spill file"
                        )
    finally:
        spill.close()  # removes the file; the tables' mapping stays valid
    assert not os.path.exists(path)
    assert [t.to_pydict() for t in tables] == [b.to_pydict() for b in buckets if b.num_rows]


def test_release_memory_gives_freed_buffers_back_to_the_os():
    process = psutil.Process()
    # Many medium buffers, as a task's takes and splits leave: the allocator keeps them.
    tables = [
        pa.table({"x": np.arange(i, i + 25_000 + i % 7)}).take(pa.array(np.arange(20_000)))
        for i in range(1000)
    ]
    held = pa.total_allocated_bytes()
    assert held > 100 * 2**20
    del tables
    gc.collect()
    kept = process.memory_info().rss
    release_memory()
    released = kept - process.memory_info().rss
    assert released > held / 2, f"{released / 2**20:.0f} MB given back of {held / 2**20:.0f} MB"
