"""Parquet partitions of plain numbers are read by Polars' reader when the Polars kernel is
chosen (readers._read_numbers_with_polars): the same table as pyarrow's, row-group ranges
included, and anything it cannot read goes back to pyarrow's path and its errors."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import forkjoin as fj
from forkjoin.data import readers
from forkjoin.data.kernels import KERNEL_ENV
from forkjoin.errors import DataError

ROWS = 40_000


def numbers(rows: int = ROWS) -> pa.Table:
    index = np.arange(rows)
    schema = pa.schema(
        [
            pa.field("id", pa.int64(), nullable=False),  # a required column stays "not null"
            pa.field("small", pa.int8()),
            pa.field("u", pa.uint32()),
            pa.field("f", pa.float32()),
            pa.field("x", pa.float64()),
            pa.field("s", pa.string()),
        ]
    )
    return pa.table(
        {
            "id": index,
            "small": pa.array((index % 100).astype(np.int8), mask=index % 7 == 0),
            "u": (index * 3).astype(np.uint32),
            "f": index.astype(np.float32) / 3,
            "x": pa.array(index / 7.0, mask=index % 11 == 0),
            "s": [f"v{i % 13}" for i in index],
        },
        schema=schema,
    )


def partitions_read_by_both(path, columns, monkeypatch):  # type: ignore[no-untyped-def]
    """Each partition read by the Polars path and by pyarrow's: (fast, slow) pairs."""
    ds = fj.data.read_parquet(str(path), columns=columns, target_bytes=1)  # a row group each
    source = ds._source
    monkeypatch.setenv(KERNEL_ENV, "polars")
    fast = [readers._read_numbers_with_polars(p, source.spec) for p in source.partitions]
    monkeypatch.setenv(KERNEL_ENV, "arrow")
    slow = [readers.read_partition(p, source.spec)[0] for p in source.partitions]
    return fast, slow


def test_numbers_read_by_polars_equal_pyarrows_table_per_row_group_range(tmp_path, monkeypatch):
    path = tmp_path / "n.parquet"
    pq.write_table(numbers(), path, row_group_size=10_000)
    columns = ["id", "small", "u", "f", "x"]
    fast, slow = partitions_read_by_both(path, columns, monkeypatch)
    assert len(fast) == 4 and all(t is not None for t in fast)
    for got, want in zip(fast, slow, strict=True):
        assert got.schema == want.schema and got.equals(want)
    assert fast[0].schema.field("id").nullable is False
    monkeypatch.setenv(KERNEL_ENV, "polars")  # end to end, in workers
    got = fj.data.read_parquet(str(path), columns=columns, target_bytes=1).to_arrow(workers=2)
    assert got.equals(pq.read_table(path, columns=columns))


def test_strings_filters_and_other_kernels_stay_with_pyarrow(tmp_path, monkeypatch):
    path = tmp_path / "n.parquet"
    pq.write_table(numbers(1000), path)
    monkeypatch.setenv(KERNEL_ENV, "polars")
    source = fj.data.read_parquet(str(path), columns=["id", "s"])._source
    assert readers._read_numbers_with_polars(source.partitions[0], source.spec) is None
    filtered = fj.data.read_parquet(str(path), columns=["id"], filter=[("id", ">", 5)])._source
    assert readers._read_numbers_with_polars(filtered.partitions[0], filtered.spec) is None
    monkeypatch.setenv(KERNEL_ENV, "arrow")
    plain = fj.data.read_parquet(str(path), columns=["id"])._source
    assert readers._read_numbers_with_polars(plain.partitions[0], plain.spec) is None


def test_a_corrupt_row_group_is_still_named_or_skipped(tmp_path, monkeypatch):
    monkeypatch.setenv(KERNEL_ENV, "polars")
    table = pa.table({"x": np.arange(40_000, dtype=np.int64)})
    path = tmp_path / "a.parquet"
    pq.write_table(table, path, row_group_size=10_000, compression="none", use_dictionary=False)
    start = pq.read_metadata(path).row_group(2).column(0).data_page_offset
    raw = bytearray(path.read_bytes())
    raw[start : start + 200] = b"\xff" * 200  # garbage over the page header of row group 2
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"a\.parquet: row group 2 is corrupt"):
        fj.data.read_parquet(str(path), columns=["x"]).to_arrow(backend="threads", workers=2)
    skipping = fj.data.read_parquet(str(path), target_bytes=1, on_error="skip")
    got = skipping.to_arrow(backend="threads", workers=2)
    assert got.num_rows == 30_000 and skipping.stats().rows_skipped == 10_000
    assert sorted(got.column("x").to_pylist()) == [*range(20_000), *range(30_000, 40_000)]


def test_a_kernel_choice_that_cannot_be_met_leaves_plain_reads_to_pyarrow(tmp_path, monkeypatch):
    """FORKJOIN_DATA_KERNEL=polars without Polars is an error for the join or sort that needs
    it (kernel_name), not for reading numbers."""
    from forkjoin.data import kernels

    path = tmp_path / "n.parquet"
    pq.write_table(numbers(100), path)
    monkeypatch.setenv(KERNEL_ENV, "polars")
    monkeypatch.setattr(kernels, "_polars", False)  # as if Polars were not installed
    ds = fj.data.read_parquet(str(path), columns=["id", "x"])
    assert readers._read_numbers_with_polars(ds._source.partitions[0], ds._source.spec) is None
    assert ds.to_arrow(backend="inline").equals(pq.read_table(path, columns=["id", "x"]))
