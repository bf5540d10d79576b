"""The kernels under the exchanges. The row hash of the hash exchanges (join, repartition by
key, distinct): both schemes (Polars' native ``hash_rows`` and the numpy SplitMix64) send equal
keys of any type to one bucket, spread keys evenly, agree between processes; a worker with
another Polars version refuses; a resume under another scheme never mixes its buckets with the
old output. The reduce side's sort (Polars' arg_sort_by on the keys + Arrow's take) gives
Acero's order whatever the other columns hold."""

from __future__ import annotations

import decimal
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

import forkjoin as fj
from forkjoin.data import kernels
from forkjoin.data.kernels import KERNEL_ENV, SPLITMIX_SCHEME, hash_scheme
from forkjoin.data.partitioning import hash_buckets
from forkjoin.errors import DataError

POLARS_SCHEME = f"polars-{pl.__version__}"
SCHEMES = [SPLITMIX_SCHEME, POLARS_SCHEME]


def buckets_of(column: pa.Array, scheme: str, buckets: int = 16) -> list[int]:
    return hash_buckets(pa.table({"k": column}), ["k"], buckets, scheme=scheme).tolist()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_equal_keys_of_any_type_share_a_bucket(scheme):
    ints = [0, 1, -7, 2**40, 5]
    as_types = [
        pa.array(ints, pa.int32() if max(map(abs, ints)) < 2**31 else pa.int64()),
        pa.array(ints, pa.int64()),
        pa.array([float(i) for i in ints], pa.float64()),
        pa.array([decimal.Decimal(i) for i in ints], pa.decimal128(20, 2)),
    ]
    expected = buckets_of(as_types[1], scheme)
    assert all(buckets_of(a, scheme) == expected for a in as_types)
    words = ["a", "ß", "日本", "", "a b"]
    expected = buckets_of(pa.array(words), scheme)
    assert buckets_of(pa.array(words, pa.large_string()), scheme) == expected
    assert buckets_of(pa.array(words).dictionary_encode(), scheme) == expected
    nans = np.frombuffer(np.array([0x7FF8000000000001], np.uint64).tobytes(), np.float64)
    floats = buckets_of(pa.array([0.0, -0.0, float("nan"), float(nans[0])]), scheme)
    assert floats[0] == floats[1] and floats[2] == floats[3]
    stamps = pa.array([1_000, 2_000], pa.timestamp("ms"))
    assert buckets_of(stamps, scheme) == buckets_of(stamps.cast(pa.timestamp("ns")), scheme)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_keys_spread_evenly_and_null_keys_are_dealt_round_robin(scheme):
    table = pa.table(
        {
            "a": pa.array(np.arange(200_000) * 8),  # a stride: a weak hash would pile these up
            "b": pa.array([f"u{i % 1000}" for i in range(200_000)]),
        }
    )
    for keys in (["a"], ["a", "b"]):
        counts = np.bincount(hash_buckets(table, keys, 32, scheme=scheme), minlength=32)
        assert counts.min() > 0.95 * counts.mean() and counts.max() < 1.05 * counts.mean()
    nulls = pa.table({"k": pa.array([None] * 64, pa.int64())})
    spread = hash_buckets(nulls, ["k"], 8, spread_nulls=True, scheme=scheme)
    assert np.bincount(spread, minlength=8).tolist() == [8] * 8


def test_the_polars_hash_is_the_same_in_another_process():
    table = pa.table({"k": pa.array(range(1000)), "s": pa.array([f"x{i}" for i in range(1000)])})
    here = hash_buckets(table, ["k", "s"], 64, scheme=POLARS_SCHEME).tolist()
    code = (
        "import pyarrow as pa; from forkjoin.data.partitioning import hash_buckets; "
        "t = pa.table({'k': pa.array(range(1000)), "
        "'s': pa.array([f'x{i}' for i in range(1000)])}); "
        f"print(hash_buckets(t, ['k', 's'], 64, scheme={POLARS_SCHEME!r}).tolist())"
    )
    there = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(there.stdout) == here


def test_the_scheme_follows_the_kernel_choice(monkeypatch):
    monkeypatch.setenv(KERNEL_ENV, "arrow")
    assert hash_scheme() == SPLITMIX_SCHEME
    monkeypatch.setenv(KERNEL_ENV, "auto")
    assert hash_scheme() == POLARS_SCHEME
    monkeypatch.setattr(kernels, "_polars", False)  # as if polars were not installed
    assert hash_scheme() == SPLITMIX_SCHEME
    with pytest.raises(ValueError, match="unknown hash scheme"):
        hash_buckets(pa.table({"k": [1]}), ["k"], 2, scheme="md5")


def join_inputs() -> tuple[fj.data.Dataset, fj.data.Dataset, pd.DataFrame]:
    left = pa.table({"k": [i % 50 for i in range(600)], "x": list(range(600))})
    right = pa.table({"k": pa.array(range(0, 50, 2), pa.int32()), "y": list(range(25))})
    expected = left.to_pandas().merge(right.to_pandas(), on="k")
    ds_left = fj.data.from_pandas(left.to_pandas(), partitions=3)
    ds_right = fj.data.from_pandas(right.to_pandas(), partitions=2)
    return ds_left, ds_right, expected


def test_a_worker_with_another_polars_version_refuses_the_map_task(spill_root, monkeypatch):
    monkeypatch.setenv(KERNEL_ENV, "auto")
    monkeypatch.setattr(kernels, "_installed_polars", lambda: "0.0.1")  # the caller's version
    left, right, _ = join_inputs()
    joined = left.join(right, on="k", broadcast=False)
    with pytest.raises(DataError, match=r"polars 0\.0\.1.*this worker has polars"):
        joined.to_pandas(workers=2, backend="threads")


def test_a_resume_under_another_hash_scheme_refuses_to_mix_buckets(
    spill_root, tmp_path, monkeypatch
):
    left, right, expected = join_inputs()
    out = tmp_path / "out"
    monkeypatch.setenv(KERNEL_ENV, "arrow")  # written with the numpy hash
    left.join(right, on="k", broadcast=False).write_parquet(str(out), workers=2)
    before = json.loads((out / "_manifest.json").read_text())
    monkeypatch.setenv(KERNEL_ENV, "auto")  # now Polars: every key may go to another bucket
    plan = left.join(right, on="k", broadcast=False)
    with pytest.raises(DataError, match="different plan.*changed: .*join"):
        plan.write_parquet(str(out), workers=2)
    assert json.loads((out / "_manifest.json").read_text()) == before  # nothing touched
    stats = plan.write_parquet(str(out), workers=2, mode="overwrite")
    assert stats.partitions_resumed == 0
    written = pd.read_parquet(out).sort_values(["k", "x"]).reset_index(drop=True)
    assert written.equals(expected.sort_values(["k", "x"]).reset_index(drop=True))


def test_the_polars_sort_orders_by_the_keys_only_and_keeps_any_other_column(monkeypatch):
    from forkjoin.data.kernels import stable_sort

    rng = np.random.default_rng(7)
    n = 3000
    keys = pa.array([None if i % 11 == 0 else int(v) for i, v in enumerate(rng.integers(0, 9, n))])
    table = pa.table(
        {
            "k": keys,
            "s": pa.array([f"w{v}" for v in rng.integers(0, 5, n)]),
            "tag": pa.array([f"t{i % 3}" for i in range(n)]).dictionary_encode(),  # Polars-shy
            "nested": pa.array([[i, i + 1] for i in range(n)]),
            "n": pa.array(range(n)),
        }
    )
    chunked = pa.concat_tables([table.slice(i, 250) for i in range(0, n, 250)])  # a bucket
    sort_keys = [("k", "descending"), ("s", "ascending")]
    monkeypatch.setenv(KERNEL_ENV, "arrow")
    expected = table.sort_by(sort_keys)
    monkeypatch.setenv(KERNEL_ENV, "polars")
    got = stable_sort(chunked, sort_keys)
    assert got.schema == table.schema and got.equals(expected)
    frame = table.to_pandas().sort_values(
        ["k", "s"], ascending=[False, True], kind="stable", na_position="last"
    )
    assert got.column("n").to_pylist() == frame.n.tolist()


@pytest.mark.parametrize("descending", [False, True])
@pytest.mark.parametrize("edge_count", [3, 64, 65])  # counted comparisons, then binary search
def test_range_buckets_by_comparison_match_a_binary_search(descending, edge_count):
    from forkjoin.data.partitioning import searchsorted_buckets

    rng = np.random.default_rng(edge_count)
    edges = np.sort(rng.choice(np.arange(-500, 500), edge_count, replace=False)).astype(float)
    if descending:
        edges = edges[::-1]
    values = np.concatenate([rng.integers(-600, 600, 3000).astype(float), edges, [np.nan]])
    column = pa.chunked_array(  # two chunks, a NaN and a null at the end
        [pa.array(values[:1000]), pa.array([*values[1000:].tolist(), None], pa.float64())]
    )
    got = searchsorted_buckets(column, "descending" if descending else "ascending",
                               pa.array(edges))  # fmt: skip
    assert got is not None
    ascending_edges = edges[::-1] if descending else edges
    side = "right" if descending else "left"
    found = np.searchsorted(ascending_edges, values, side=side)
    expected = (edge_count - found) if descending else found
    expected[np.isnan(values)] = edge_count  # NaN and null last
    assert got.tolist() == [*expected.tolist(), edge_count]
    ints = pa.chunked_array([pa.array(values[:-1].astype(np.int64))])
    got_ints = searchsorted_buckets(ints, "descending" if descending else "ascending",
                                    pa.array(edges.astype(np.int64)))  # fmt: skip
    assert got_ints is not None and got_ints.tolist() == expected[:-1].tolist()
