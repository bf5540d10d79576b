"""A hash join followed right away by ``groupby().agg()``: each join bucket is joined and
partially aggregated in one step (``JoinSpec.partial``; in Polars when the kernel is Polars),
so the joined rows never go back to Arrow. The fused partials must be exactly what joining,
converting and aggregating with Acero gives (values, Arrow types, null keys, empty buckets),
and where Polars could differ (float keys, custom reducers, a sum of booleans, ops between the
join and the groupby) the step falls back to the unfused path."""

from __future__ import annotations

import datetime

import pandas as pd
import pyarrow as pa
import pytest

import forkjoin as fj
from forkjoin.data import aggregate, kernels
from forkjoin.data.aggregate import AggSpec, Reducer, partial
from forkjoin.data.join import JoinSpec
from forkjoin.data.kernels import KERNEL_ENV

N = 2000


def sides() -> tuple[pa.Table, pa.Table]:
    """A bucket's two sides, each in several chunks (one per map task), with null keys, null
    values, int32 sums past the int32 range, strings and dates to take the min/max of."""
    left = pa.table(
        {
            "k": pa.array([None if i % 97 == 0 else i % 150 for i in range(N)], pa.int64()),
            "big": pa.array([2**31 - 1 - i % 3 for i in range(N)], pa.int32()),
            "small": pa.array([i % 7 for i in range(N)], pa.uint8()),
            "x": pa.array([None if i % 13 == 0 else i * 0.1 for i in range(N)], pa.float64()),
            "word": pa.array([f"w{(i * 7) % 31}" for i in range(N)]),
            "flag": pa.array([i % 3 == 0 for i in range(N)]),
        }
    )
    right = pa.table(
        {
            "k": pa.array([i % 120 for i in range(300)], pa.int32()),  # cast to int64 to join
            "grp": pa.array([None if i % 41 == 0 else f"g{i % 4}" for i in range(300)]),
            "day": pa.array([datetime.date(2024, 1, 1 + i % 28) for i in range(300)]),
            "y": pa.array([i * 0.5 for i in range(300)], pa.float64()),
        }
    )
    chunks = [left.slice(i, 500) for i in range(0, N, 500)]
    return pa.concat_tables(chunks), pa.concat_tables([right.slice(0, 150), right.slice(150)])


SPEC = AggSpec.parse(
    {"big": "sum", "small": ["sum", "max"], "x": ["sum", "mean", "count", "min"]},
    {"first_word": ("word", "min"), "last_day": ("day", "max"), "flags": ("flag", "count")},
)


def unfused(spec: JoinSpec, tables: list[pa.Table], keys: list[str], aggs: AggSpec) -> pa.Table:
    return partial(spec(tables), keys, aggs).table


def sorted_rows(table: pa.Table, keys: list[str]) -> pa.Table:
    return table.sort_by([(k, "ascending") for k in keys])


@pytest.mark.parametrize("how", ["inner", "left", "right", "outer"])
@pytest.mark.parametrize("keys", [["grp"], ["grp", "day"], ["k"]])
def test_a_fused_partial_equals_join_then_acero_aggregate(monkeypatch, how, keys):
    """Bit for bit, float sums included, against the same Polars join converted to Arrow and
    aggregated by Acero (against Acero's join, sums may differ in the last bit: the joins give
    rows in another order, as they may)."""
    monkeypatch.setenv(KERNEL_ENV, "polars")
    spec = JoinSpec(("k",), ("k",), how, ("_x", "_y"))
    expected = unfused(spec, list(sides()), keys, SPEC)
    calls: list[object] = []
    real = kernels.polars_partial
    monkeypatch.setattr(kernels, "polars_partial", lambda *a: calls.append(a) or real(*a))
    got, rows = spec.partial(list(sides()), keys, SPEC)
    assert calls and not got.custom  # it did run in Polars
    assert rows == spec(list(sides())).num_rows
    assert got.table.schema == expected.schema  # Acero's types: int64 sums, string min...
    assert sorted_rows(got.table, keys).equals(sorted_rows(expected, keys))
    assert None not in got.table.column(keys[0]).to_pylist()  # null keys dropped


def test_an_empty_bucket_gives_an_empty_typed_partial(monkeypatch):
    left, right = sides()
    spec = JoinSpec(("k",), ("k",), "inner", ("_x", "_y"))
    monkeypatch.setenv(KERNEL_ENV, "arrow")
    expected = unfused(spec, [left.slice(0, 0), right], ["grp"], SPEC)
    monkeypatch.setenv(KERNEL_ENV, "polars")
    got, rows = spec.partial([left.slice(0, 0), right], ["grp"], SPEC)
    assert rows == 0 and got.table.num_rows == 0 and got.table.schema == expected.schema


@pytest.mark.parametrize(
    "keys, aggs",
    [
        (["y"], AggSpec.parse({"big": "sum"}, {})),  # a float key: -0.0 and NaN group apart
        (["grp"], AggSpec.parse({"flag": "sum"}, {})),  # Polars counts booleans as u32
        (["grp"], AggSpec.parse({"x": "max"}, {})),  # NaN: Polars and Acero may differ
        (["grp"], AggSpec.parse({"y": Reducer(sum, lambda a, b: a + b)}, {})),  # Python code
    ],
)
def test_what_polars_might_aggregate_differently_falls_back(monkeypatch, keys, aggs):
    spec = JoinSpec(("k",), ("k",), "inner", ("_x", "_y"))
    monkeypatch.setenv(KERNEL_ENV, "polars")
    expected = partial(spec(list(sides())), keys, aggs)
    monkeypatch.setattr(kernels, "polars_partial", _refuse_unless_declined(kernels.polars_partial))
    got, _ = spec.partial(list(sides()), keys, aggs)
    assert sorted_rows(got.table, keys).equals(sorted_rows(expected.table, keys))
    assert got.custom == expected.custom


def _refuse_unless_declined(real):  # type: ignore[no-untyped-def]
    def check(*args):  # type: ignore[no-untyped-def]
        result = real(*args)
        assert result is None, "Polars aggregated what it should have left to Acero"
        return result

    return check


def test_a_missing_column_still_says_which(monkeypatch):
    monkeypatch.setenv(KERNEL_ENV, "polars")
    spec = JoinSpec(("k",), ("k",), "inner", ("_x", "_y"))
    with pytest.raises(KeyError, match=r"no column\(s\) \['nope'\]"):
        spec.partial(list(sides()), ["grp"], AggSpec.parse({"nope": "sum"}, {}))


@pytest.mark.parametrize("kernel, backend", [("polars", "process"), ("arrow", "process"),
                                             ("polars", "threads")])  # fmt: skip
def test_join_then_groupby_in_workers_matches_pandas(spill_root, monkeypatch, kernel, backend):
    """End to end with spilled buckets, both kernels; on the threads backend (in this process,
    where it can be watched) every bucket went through the fused Polars step."""
    monkeypatch.setenv(KERNEL_ENV, kernel)
    monkeypatch.setenv("FORKJOIN_SPILL_THRESHOLD", "1")  # spill every bucket
    fused: list[int] = []  # buckets aggregated in Polars
    arrow: list[int] = []  # joined tables aggregated by Acero (rows > 0: not a type probe)
    real_fused, real_arrow = kernels.polars_partial, aggregate.partial
    monkeypatch.setattr(kernels, "polars_partial", lambda *a: fused.append(1) or real_fused(*a))
    monkeypatch.setattr(
        aggregate, "partial", lambda t, *a: arrow.append(t.num_rows) or real_arrow(t, *a)
    )
    left, right = sides()
    lf, rf = left.to_pandas(), right.to_pandas()
    joined = fj.data.from_pandas(lf, partitions=3).join(
        fj.data.from_pandas(rf, partitions=2), on="k", broadcast=False
    )
    agg = joined.groupby("grp").agg({"x": ["sum", "count"], "big": "sum"})
    got = agg.to_pandas(workers=2, backend=backend).set_index("grp")
    frame = lf.dropna(subset=["k"]).merge(rf.astype({"k": "int64"}), on="k")
    want = frame.groupby("grp").agg(x_sum=("x", "sum"), x_count=("x", "count"), big=("big", "sum"))
    assert got.index.tolist() == want.index.tolist()
    assert got.x_count.tolist() == want.x_count.tolist()
    assert got.big.tolist() == want.big.tolist()  # past int32: summed in 64 bits
    pd.testing.assert_series_equal(got.x_sum, want.x_sum, check_names=False, rtol=1e-12)
    assert agg.stats().bytes_spilled > 0
    if backend == "threads":
        assert fused and not any(arrow)
