"""forkjoin.data sources: Parquet, CSV and JSON Lines read back equal to pandas (row groups, byte
ranges, projection, filters, globs, fsspec), and bad input reported by file and row group/line,
or skipped and counted with on_error="skip"."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from helpers import BACKENDS

import forkjoin.data as fd
from forkjoin.errors import DataError

pytestmark = pytest.mark.timeout(60)

WORKERS = 2


def frame(n: int, seed: int = 0, start: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "id": np.arange(start, start + n),
            "k": rng.integers(0, 9, n),
            "f": rng.normal(size=n).round(6),
            "s": [f"row {i}, with text" for i in range(start, start + n)],
        }
    )


def same(got: pd.DataFrame, want: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(
        got.reset_index(drop=True), want.reset_index(drop=True), check_dtype=False
    )


@pytest.fixture
def parquet_dir(tmp_path):
    frames = [frame(3000, seed=i, start=3000 * i) for i in range(3)]
    for i, df in enumerate(frames):
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp_path / f"p{i}.parquet",
                       row_group_size=500)  # fmt: skip
    (tmp_path / "_manifest.json").write_text("{}")  # hidden and underscore names are skipped
    (tmp_path / ".staging.parquet.tmp").write_text("x")
    return tmp_path, pd.concat(frames, ignore_index=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_parquet_row_group_partitions_equal_pandas(parquet_dir, backend):
    path, want = parquet_dir
    ds = fd.read_parquet(path, target_bytes=40_000)
    assert ds.num_partitions > 3  # row groups split each file
    assert ds.count() == len(want)  # from metadata
    same(ds.to_pandas(workers=WORKERS, backend=backend), want)
    got = fd.read_parquet(path, columns=["id", "f"], filter=[("k", "==", 3)], target_bytes=40_000)
    same(got.to_pandas(workers=WORKERS, backend=backend), want[want.k == 3][["id", "f"]])
    expr = fd.read_parquet(str(path / "p*.parquet"), filter=pc.field("id") < 10)
    same(expr.to_pandas(backend="inline"), want[want.id < 10])


@pytest.mark.parametrize("target", [1_000, 7_777, 10**9])
def test_csv_byte_ranges_read_every_line_once(tmp_path, target):
    want = pd.concat([frame(700, 1), frame(300, 2, start=700)], ignore_index=True)
    want.iloc[:700].to_csv(tmp_path / "a.csv", index=False)
    want.iloc[700:].to_csv(tmp_path / "b.csv", index=False)
    ds = fd.read_csv(tmp_path, target_bytes=target)
    if target < 10**9:
        assert ds.num_partitions > 2
    same(ds.to_pandas(backend="threads", workers=WORKERS), want)
    assert ds.count(backend="threads", workers=WORKERS) == len(want)
    filtered = fd.read_csv(tmp_path, columns=["id"], filter=pc.field("k") == 2, target_bytes=target)
    same(filtered.to_pandas(backend="inline"), want[want.k == 2][["id"]])


@pytest.mark.parametrize("target", [900, 10**9])
def test_jsonl_byte_ranges_equal_pandas(tmp_path, target):
    want = frame(500, 3)
    want.to_json(tmp_path / "a.jsonl", orient="records", lines=True)
    ds = fd.read_json(tmp_path / "a.jsonl", target_bytes=target)
    same(ds.to_pandas(backend="threads", workers=WORKERS), want)


def test_fsspec_urls(tmp_path):
    want = frame(200)
    pq.write_table(pa.Table.from_pandas(want, preserve_index=False), tmp_path / "a.parquet")
    want.to_csv(tmp_path / "a.csv", index=False)
    same(fd.read_parquet(f"file://{tmp_path}/a.parquet").to_pandas(backend="inline"), want)
    import fsspec

    fs = fsspec.filesystem("memory")
    with fs.open("/fj-test/a.csv", "wb") as handle:
        handle.write(want.to_csv(index=False).encode())
    try:
        got = fd.read_csv("memory://fj-test/", target_bytes=2_000).to_pandas(backend="threads")
        same(got, want)
    finally:
        fs.rm("/fj-test", recursive=True)


def test_missing_input_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="input not found"):
        fd.read_parquet(tmp_path / "nope.parquet")
    with pytest.raises(DataError, match="no files match"):
        fd.read_csv(str(tmp_path / "*.csv"))
    with pytest.raises(DataError, match=r"no column\(s\) \['zz'\]"):
        pq.write_table(pa.table({"a": [1]}), tmp_path / "a.parquet")
        fd.read_parquet(tmp_path, columns=["zz"])


# -- bad input ---------------------------------------------------------------------------------


def test_truncated_parquet_names_the_file_or_is_skipped(tmp_path):
    good = frame(100)
    pq.write_table(pa.Table.from_pandas(good, preserve_index=False), tmp_path / "a.parquet")
    data = (tmp_path / "a.parquet").read_bytes()
    (tmp_path / "b.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"b\.parquet: not a readable Parquet file"):
        fd.read_parquet(tmp_path)
    ds = fd.read_parquet(tmp_path, on_error="skip")
    same(ds.to_pandas(backend="inline"), good)
    assert ds.stats().files_skipped == 1
    assert "b.parquet" in ds.stats().problems[0]


def test_corrupt_row_group_names_file_and_row_group(tmp_path):
    table = pa.table({"x": np.arange(40_000), "s": [f"value {i}" for i in range(40_000)]})
    path = tmp_path / "a.parquet"
    pq.write_table(table, path, row_group_size=10_000, compression="none")
    meta = pq.read_metadata(path)
    column = meta.row_group(2).column(1)
    start = column.data_page_offset
    raw = bytearray(path.read_bytes())
    raw[start : start + 200] = b"\xff" * 200  # garbage over the page header of row group 2
    path.write_bytes(bytes(raw))
    ds = fd.read_parquet(path, target_bytes=1)  # one row group per partition
    with pytest.raises(DataError, match=r"a\.parquet: row group 2 is corrupt"):
        ds.to_arrow(backend="process", workers=WORKERS)
    skipping = fd.read_parquet(path, target_bytes=1, on_error="skip")
    got = skipping.to_arrow(backend="threads", workers=WORKERS)
    assert got.num_rows == 30_000
    assert skipping.stats().rows_skipped == 10_000


def test_schema_change_between_files(tmp_path):
    pq.write_table(pa.table({"a": [1, 2], "b": ["x", "y"]}), tmp_path / "1.parquet")
    pq.write_table(pa.table({"a": [3.5], "c": ["z"]}), tmp_path / "2.parquet")
    with pytest.raises(DataError, match=r"2\.parquet: schema differs .*missing columns \['b'\]"):
        fd.read_parquet(tmp_path)
    ds = fd.read_parquet(tmp_path, on_error="skip")
    assert ds.count(backend="inline") == 2
    assert ds.stats().rows_skipped == 1 and ds.stats().files_skipped == 1
    (tmp_path / "1.csv").write_text("a,b\n1,2\n")
    (tmp_path / "2.csv").write_text("a,c\n1,2\n")
    with pytest.raises(DataError, match=r"2\.csv: header \['a', 'c'\] differs"):
        fd.read_csv(tmp_path)
    (tmp_path / "1.jsonl").write_text('{"a": 1}\n')
    (tmp_path / "2.jsonl").write_text('{"a": 2}\n{"a": 3, "new": 1}\n')
    with pytest.raises(DataError, match=r"2\.jsonl: line 2: new field\(s\) \['new'\]"):
        fd.read_json(tmp_path).to_arrow(backend="inline")


@pytest.mark.parametrize("target", [40, 10**9])
def test_bad_csv_row_names_the_line_or_is_skipped(tmp_path, target):
    lines = ["a,b"] + [f"{i},{i * 2}" for i in range(30)]
    lines[17] = "16,32,extra"  # line 18 of the file
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"d\.csv: line 18: row does not parse"):
        fd.read_csv(tmp_path / "d.csv", target_bytes=target).to_arrow(backend="threads")
    ds = fd.read_csv(tmp_path / "d.csv", target_bytes=target, on_error="skip")
    got = ds.to_pandas(backend="process", workers=WORKERS)
    assert len(got) == 29 and 16 not in got["a"].tolist()
    assert ds.stats().rows_skipped == 1
    assert "line 18" in ds.stats().problems[0]


@pytest.mark.parametrize("target", [50, 10**9])
def test_bad_json_line_names_the_line_or_is_skipped(tmp_path, target):
    lines = [f'{{"a": {i}, "b": "v{i}"}}' for i in range(20)]
    lines[11] = '{"a": 11, "b": '  # line 12, truncated
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"d\.jsonl: line 12: not valid JSON"):
        fd.read_json(tmp_path / "d.jsonl", target_bytes=target).to_arrow(backend="process")
    ds = fd.read_json(tmp_path / "d.jsonl", target_bytes=target, on_error="skip")
    got = ds.to_pandas(backend="threads", workers=WORKERS)
    assert got["a"].tolist() == [i for i in range(20) if i != 11]
    assert ds.stats().rows_skipped == 1


def test_csv_value_of_the_wrong_type_is_a_data_error(tmp_path):
    rows = "\n".join(f"{i},{i}" for i in range(200_000))  # > 1 MiB: "oops" is past the sample
    (tmp_path / "d.csv").write_text(f"a,b\n{rows}\n{200_000},oops\n")
    with pytest.raises(DataError, match=r"d\.csv.*oops"):
        fd.read_csv(tmp_path / "d.csv", target_bytes=100_000).to_arrow(backend="threads")
    schema = pa.schema([("a", pa.int64()), ("b", pa.string())])
    got = fd.read_csv(tmp_path / "d.csv", schema=schema, target_bytes=100_000)
    assert got.to_arrow(backend="threads").column("b")[-1].as_py() == "oops"


def test_discovery_skips_hidden_and_underscore_files(parquet_dir):
    path, want = parquet_dir
    os.makedirs(path / "sub")
    pq.write_table(pa.table({"id": [1]}), path / "sub" / "_ignored.parquet")
    assert fd.read_parquet(path).count() == len(want)
