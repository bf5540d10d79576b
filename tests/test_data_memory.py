"""Bounded memory: streaming a dataset 4x larger does not raise the peak RSS of the process tree
(caller + workers) by more than a small constant, because at most ``in_flight`` partitions are
held anywhere at once."""

from __future__ import annotations

import threading

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import forkjoin.data as fd

pytestmark = pytest.mark.timeout(120)

ROWS_PER_FILE = 200_000  # ~8 MB of Arrow data per file, 2 row groups
FILES_1X = 4
# The 4x run streams ~98 MB more than the 1x run. Measured on 2 cores: bounded +1 MB; a consumer
# that holds every batch instead of streaming them: +77 MB.
GROWTH_LIMIT_BYTES = 40 * 1024 * 1024


class TreePeak:
    """Peak RSS of this process plus all its children, sampled every 10 ms in a thread."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _sample(self) -> int:
        me = psutil.Process()
        total = me.memory_info().rss
        for child in me.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._sample())

    def __enter__(self) -> TreePeak:
        self.peak = self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def add_length(batch: pa.Table) -> pa.Table:
    return batch.append_column("n", pc.utf8_length(batch["s"]))


def stream(path) -> tuple[int, int]:
    """Rows streamed and the peak RSS of the tree while streaming them."""
    ds = fd.read_parquet(path, target_bytes=1).map_batches(add_length, batch_size=None)
    rows = checksum = 0
    with TreePeak() as peak:
        for batch in ds.iter_batches(workers=2, backend="process", in_flight=2):
            rows += batch.num_rows  # touch the data, as a real consumer would:
            checksum += pc.sum(batch["n"]).as_py() + len(pc.unique(batch["s"]))
    assert checksum > 0
    return rows, peak.peak


def test_peak_rss_does_not_grow_with_dataset_size(tmp_path):
    rng = np.random.default_rng(0)
    table = pa.table(
        {
            "x": rng.integers(0, 1 << 40, ROWS_PER_FILE),
            "f": rng.normal(size=ROWS_PER_FILE),
            "s": pa.array([f"some text {i:08d} here" for i in range(ROWS_PER_FILE)]),
        }
    )
    small, large = tmp_path / "small", tmp_path / "large"
    small.mkdir()
    large.mkdir()
    for i in range(FILES_1X * 4):
        pq.write_table(table, large / f"{i:02d}.parquet", row_group_size=ROWS_PER_FILE // 2)
        if i < FILES_1X:
            pq.write_table(table, small / f"{i:02d}.parquet", row_group_size=ROWS_PER_FILE // 2)
    table_bytes = table.nbytes
    del table
    stream(small)  # warm-up: pool start, imports, allocator arenas
    rows_1x, peak_1x = stream(small)
    rows_4x, peak_4x = stream(large)
    assert rows_4x == 4 * rows_1x == 4 * FILES_1X * ROWS_PER_FILE
    data_growth = 3 * FILES_1X * table_bytes
    assert data_growth > 2 * GROWTH_LIMIT_BYTES  # the test could tell unbounded from bounded
    assert peak_4x - peak_1x < GROWTH_LIMIT_BYTES, (
        f"peak RSS of the process tree grew by {(peak_4x - peak_1x) / 2**20:.0f} MB from the 1x "
        f"(1x peak {peak_1x / 2**20:.0f} MB) to the 4x dataset "
        f"({data_growth / 2**20:.0f} MB more data): memory is not bounded"
    )
