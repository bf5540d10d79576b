"""forkjoin.data operations give what pandas gives: every operation, on every backend (a core
subset), plus hypothesis-generated small tables on the fast backends."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from helpers import BACKENDS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import forkjoin.data as fd

pytestmark = pytest.mark.timeout(60)

WORKERS = 2


def frame(n: int = 500, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "k": rng.integers(0, 5, n),
            "g": rng.choice(["a", "b", "c"], n),
            "x": rng.integers(-100, 100, n),
            "f": rng.normal(size=n),
            "s": [f"word{i % 13} other{i % 7}" for i in range(n)],
        }
    )


def same(got: pd.DataFrame, want: pd.DataFrame, **kwargs) -> None:
    pd.testing.assert_frame_equal(
        got.reset_index(drop=True), want.reset_index(drop=True), check_dtype=False, **kwargs
    )


# -- UDFs (module level: workers import them by name) ---------------------------------------------


def add_ratio_arrow(batch: pa.Table) -> pa.Table:
    return batch.append_column("r", pc.divide(pc.cast(batch["x"], pa.float64()), 7.0))


def add_ratio_pandas(batch: pd.DataFrame) -> pd.DataFrame:
    return batch.assign(r=batch["x"] / 7.0)


def add_ratio_numpy(batch: dict) -> dict:
    return {**batch, "r": batch["x"] / 7.0}


def tokens(row: dict) -> list[dict]:
    return [{"k": row["k"], "token": t} for t in row["s"].split()]


def keep_positive(row: dict) -> bool:
    return row["x"] > 0


def upper_row(row: dict) -> dict:
    return {**row, "s": row["s"].upper()}


# -- every operation vs pandas, on every backend ---------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_pipeline_equals_pandas(backend):
    df = frame()
    ds = (
        fd.from_pandas(df, partitions=4)
        .map_batches(add_ratio_arrow, batch_size=64)
        .filter(keep_positive)
        .map(upper_row)
        .select_columns(["k", "x", "r", "s"])
        .rename_columns({"x": "value"})
        .add_column("double", lambda b: b["value"] * 2)
    )
    got = ds.to_pandas(workers=WORKERS, backend=backend)
    want = df.assign(r=df["x"] / 7.0)
    want = want[want["x"] > 0].assign(s=lambda d: d["s"].str.upper())[["k", "x", "r", "s"]]
    want = want.rename(columns={"x": "value"}).assign(double=lambda d: d["value"] * 2)
    same(got, want)
    assert ds.stats().partitions == 4
    assert ds.stats().rows_out == len(want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_groupby_agg_equals_pandas(backend):
    df = frame(2000)
    ds = fd.from_pandas(df, partitions=5)
    got = ds.groupby(["k", "g"]).agg({"x": ["sum", "count", "min", "max"], "f": "mean"})
    got_df = got.to_pandas(workers=WORKERS, backend=backend)
    want = df.groupby(["k", "g"]).agg({"x": ["sum", "count", "min", "max"], "f": "mean"})
    want.columns = ["x_sum", "x_count", "x_min", "x_max", "f"]
    same(got_df, want.reset_index(), rtol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_flat_map_sort_limit_equal_pandas(backend):
    df = frame(200)
    run = {"workers": WORKERS, "backend": backend}
    got = fd.from_pandas(df, partitions=3).flat_map(tokens).to_pandas(**run)
    want = pd.DataFrame([t for row in df.to_dict("records") for t in tokens(row)])
    same(got, want)
    ordered = fd.from_pandas(df, partitions=3).sort(["k", "x"], descending=[True, False])
    same(
        ordered.to_pandas(**run), df.sort_values(["k", "x"], ascending=[False, True], kind="stable")
    )
    assert fd.from_pandas(df, partitions=3).take(7, **run) == df.head(7).to_dict("records")
    assert fd.from_pandas(df, partitions=3).filter(keep_positive).count(**run) == int(
        (df.x > 0).sum()
    )


@pytest.mark.parametrize("fmt,fn", [("pandas", add_ratio_pandas), ("numpy", add_ratio_numpy)])
def test_batch_formats(fmt, fn):
    df = frame(300)
    got = fd.from_pandas(df).map_batches(fn, batch_format=fmt, batch_size=50)
    same(got.to_pandas(backend="threads", workers=WORKERS), df.assign(r=df["x"] / 7.0))


def test_custom_reducer_and_named_aggregation():
    df = frame(1000)
    distinct = fd.Reducer(chunk=set, merge=set.union, finalize=len, name="distinct")
    got = (
        fd.from_pandas(df, partitions=6)
        .groupby("g")
        .agg({"k": distinct}, total=("x", "sum"), avg=("f", "mean"))
        .to_pandas(backend="threads", workers=WORKERS)
    )
    want = df.groupby("g").agg(k=("k", "nunique"), total=("x", "sum"), avg=("f", "mean"))
    same(got, want.reset_index(), rtol=1e-9)


def test_groupby_drops_null_keys_and_counts_non_null_like_pandas():
    df = pd.DataFrame({"k": [1, None, 1, 2, 2, None], "x": [1.0, 2.0, None, 4.0, None, 6.0]})
    got = fd.from_pandas(df, partitions=3).groupby("k").agg({"x": ["sum", "count", "mean"]})
    want = df.groupby("k").agg({"x": ["sum", "count", "mean"]})
    want.columns = ["x_sum", "x_count", "x_mean"]
    same(got.to_pandas(backend="inline"), want.reset_index())


def test_repartition_and_iter_batches_keep_order():
    df = frame(1000)
    ds = fd.from_pandas(df, partitions=3).repartition(7)
    batches = list(ds.iter_batches(batch_size=128, backend="threads", workers=WORKERS))
    assert [b.num_rows for b in batches] == [128] * 7 + [104]
    same(pa.concat_tables(batches).to_pandas(), df)
    assert ds.stats().partitions == 3 + 7


def test_count_schema_numpy_and_barrier_then_rowwise():
    df = frame(100)
    ds = fd.from_pandas(df)
    assert ds.count() == 100  # from the partitions' known sizes: nothing runs
    assert ds.schema().names == list(df.columns)
    assert ds.map_batches(add_ratio_arrow).schema().names == [*df.columns, "r"]
    assert np.array_equal(ds.to_numpy("x", backend="inline"), df["x"].to_numpy())
    agg = ds.groupby("k").count().map(lambda r: {**r, "count": r["count"] * 10})
    want = (
        df.groupby("k").size().rename("count").reset_index().assign(count=lambda d: d["count"] * 10)
    )
    same(agg.to_pandas(backend="threads", workers=WORKERS), want)


def test_from_items_and_values():
    assert fd.from_items(range(5)).to_pandas(backend="inline")["item"].tolist() == list(range(5))
    rows = [{"a": i, "b": str(i)} for i in range(10)]
    assert fd.from_items(rows).map(lambda r: {"a": r["a"] + 1}).take(3, backend="inline") == [
        {"a": 1},
        {"a": 2},
        {"a": 3},
    ]


# -- a UDF that returns the wrong thing: the error names the operation and what was expected -----


def returns_list(batch):
    return [1, 2, 3]


def returns_ragged(batch):
    return {"a": [1, 2], "b": [1]}


def wrong_length(df):
    return [1]


@pytest.mark.parametrize("backend", ["inline", "process"])
def test_udf_errors_name_the_operation(backend):
    ds = fd.from_items([{"x": i} for i in range(10)], partitions=2)
    run = {"workers": WORKERS, "backend": backend}
    with pytest.raises(
        TypeError, match=r"map_batches\(returns_list\) returned list; expected a pyarrow.Table"
    ):
        ds.map_batches(returns_list).to_arrow(**run)
    with pytest.raises(ValueError, match=r"returned columns of different lengths"):
        ds.map_batches(returns_ragged).to_arrow(**run)
    with pytest.raises(
        ValueError, match=r"add_column\('y', wrong_length\) returned 1 values for a batch of 5 rows"
    ):
        ds.add_column("y", wrong_length).to_arrow(**run)
    with pytest.raises(TypeError, match=r"map\(.*<lambda>\) returned int; expected a dict"):
        ds.map(lambda r: 1).to_arrow(**run)


def test_bad_arguments_are_refused_up_front():
    ds = fd.from_items(range(3))
    with pytest.raises(ValueError, match="batch_format"):
        ds.map_batches(add_ratio_arrow, batch_format="polars")
    with pytest.raises(ValueError, match="unknown aggregation"):
        ds.groupby("item").agg({"item": "median"})
    with pytest.raises(TypeError, match="unknown option"):
        ds.to_arrow(worker=2)


# -- hypothesis: small random tables, every operation against pandas -----------------------------

tables = st.integers(0, 40).flatmap(
    lambda n: st.fixed_dictionaries(
        {
            "k": st.lists(st.integers(0, 3), min_size=n, max_size=n),
            "x": st.lists(st.integers(-50, 50), min_size=n, max_size=n),
            "f": st.lists(
                st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False), min_size=n, max_size=n
            ),
        }
    )
)
FAST = settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))


@FAST
@given(data=tables, partitions=st.integers(1, 5), threshold=st.integers(-50, 50))
def test_hypothesis_rowwise_ops_equal_pandas(data, partitions, threshold):
    df = pd.DataFrame(data).astype({"k": "int64", "x": "int64", "f": "float64"})
    ds = fd.from_pandas(df, partitions=partitions)
    got = (
        ds.filter(expr=pc.field("x") >= threshold)
        .map_batches(lambda b: b.assign(y=b["x"] * 2 + b["k"]), batch_format="pandas", batch_size=3)
        .to_pandas(backend="inline")
    )
    want = df[df["x"] >= threshold].assign(y=lambda d: d["x"] * 2 + d["k"])
    if len(want):
        same(got, want)
    else:
        assert len(got) == 0
    assert ds.limit(7).count(backend="inline") == min(7, len(df))


@FAST
@given(data=tables, partitions=st.integers(1, 5))
def test_hypothesis_groupby_sort_equal_pandas(data, partitions):
    df = pd.DataFrame(data).astype({"k": "int64", "x": "int64", "f": "float64"})
    ds = fd.from_pandas(df, partitions=partitions)
    got = ds.groupby("k").agg({"x": ["sum", "min", "max", "count"], "f": "mean"})
    got_df = got.to_pandas(backend="threads", workers=WORKERS)
    want = df.groupby("k").agg({"x": ["sum", "min", "max", "count"], "f": "mean"})
    want.columns = ["x_sum", "x_min", "x_max", "x_count", "f"]
    if len(want):
        same(got_df, want.reset_index(), rtol=1e-9, atol=1e-9)
    else:
        assert got_df.empty
    sorted_df = ds.sort(["x", "f"]).to_pandas(backend="inline")
    if len(df):
        same(sorted_df, df.sort_values(["x", "f"], kind="stable"))
