"""The exchange operations of forkjoin.data (issue 17) give what pandas gives: join (every how,
broadcast and hash), global sort, groupby().map_groups(), distinct/unique, random_shuffle,
repartition(keys=), on tables with nulls, duplicates, empty sides, one giant key and unicode;
small exchanges through memory and large ones through spill files, none of which is left."""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import forkjoin as fj  # noqa: E402
from forkjoin.data import spill  # noqa: E402
from forkjoin.data.kernels import KERNEL_ENV  # noqa: E402

pytestmark = pytest.mark.timeout(120)

HOWS = ["inner", "left", "right", "outer", "semi", "anti"]


# -- helpers -------------------------------------------------------------------------------------


def norm(value: Any) -> Any:
    """One spelling per value: NaN and None are None, 3.0 is 3 (pandas turns int columns with
    nulls into floats)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def rows(frame: Any) -> list[tuple[Any, ...]]:
    return [tuple(norm(v) for v in row) for row in frame.astype(object).itertuples(index=False)]


def same_rows(got: Any, expected: Any) -> None:
    assert list(got.columns) == list(expected.columns)
    assert Counter(rows(got)) == Counter(rows(expected))


def expected_join(left: Any, right: Any, how: str, lk: str, rk: str) -> Any:
    """pandas.merge with SQL null semantics (pandas matches NaN keys with each other)."""
    ln, rn = left[left[lk].notna()], right[right[rk].notna()]
    if how in ("semi", "anti"):
        keys = set(rn[rk].map(norm))
        hit = left[lk].map(lambda v: norm(v) is not None and norm(v) in keys)
        mask = hit.astype(bool).to_numpy()
        return left[mask] if how == "semi" else left[~mask]
    if lk == rk:
        merged = ln.merge(rn, on=lk, how=how)
    else:
        merged = ln.merge(rn, left_on=lk, right_on=rk, how=how)
    both = (set(left.columns) & set(right.columns)) - ({lk} if lk == rk else set())
    extra = []  # the outer side's rows with a null key, named as the merge names them
    if how in ("left", "outer"):
        extra.append(left[left[lk].isna()].rename(columns={c: c + "_x" for c in both}))
    if how in ("right", "outer"):
        extra.append(right[right[rk].isna()].rename(columns={c: c + "_y" for c in both}))
    extra = [e for e in extra if len(e)]
    if extra:
        merged = pd.concat([merged, *extra], ignore_index=True)[list(merged.columns)]
    return merged


@pytest.fixture(params=["polars", "arrow"])
def kernel(request, monkeypatch):  # type: ignore[no-untyped-def]
    """The reduce side's kernel (kernels.py): each equality test runs with both."""
    monkeypatch.setenv(KERNEL_ENV, request.param)
    return request.param


def force_spill(on: bool) -> None:
    if on:
        os.environ["FORKJOIN_SPILL_THRESHOLD"] = "0"
    else:
        os.environ.pop("FORKJOIN_SPILL_THRESHOLD", None)


# -- hypothesis tables ---------------------------------------------------------------------------

unicode_keys = st.one_of(st.none(), st.sampled_from(["a", "ß", "é", "日本", "🙂", "", "a b"]))
int_keys = st.one_of(st.none(), st.integers(-3, 12))


@st.composite
def tables(draw: Any, key_type: str, value: str, max_rows: int = 40) -> Any:
    giant = draw(st.booleans()) and draw(st.booleans())  # a quarter: one key for every row
    n = draw(st.integers(0, max_rows))
    keys_strategy = unicode_keys if key_type == "str" else int_keys
    if giant:
        keys = [draw(keys_strategy.filter(lambda v: v is not None))] * n
    else:
        keys = [draw(keys_strategy) for _ in range(n)]
    values = [draw(st.one_of(st.none(), st.integers(-100, 100))) for _ in range(n)]
    key_arrow = pa.string() if key_type == "str" else pa.int64()
    return pa.table(
        {
            "k": pa.array(keys, key_arrow),
            value: pa.array(values, pa.int64()),
            "n": pa.array(range(n), pa.int64()),
        }
    )


def dataset(table: Any, partitions: int = 3) -> Any:
    """An in-memory dataset cut into several partitions (a table of n rows into min(n, 3))."""
    from forkjoin.data.api import Dataset
    from forkjoin.data.sources import plan_table

    return Dataset(plan_table(table, partitions, 1 << 30))


RUN = {"workers": 2, "backend": "threads"}
FAST = settings(
    max_examples=15,  # per kernel (the equality tests run with Polars and with Acero)
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FAST
@given(
    data=st.data(),
    how=st.sampled_from(HOWS),
    key_type=st.sampled_from(["int", "str"]),
    spilled=st.booleans(),
    broadcast=st.sampled_from([None, False]),
)
def test_join_equals_pandas_merge(spill_root, kernel, data, how, key_type, spilled, broadcast):
    left = data.draw(tables(key_type, "x"))
    right = data.draw(tables(key_type, "y", max_rows=25))
    force_spill(spilled)
    try:
        got = dataset(left).join(dataset(right), on="k", how=how, broadcast=broadcast)
        got = got.to_pandas(**RUN)
    finally:
        force_spill(False)
    same_rows(got, expected_join(left.to_pandas(), right.to_pandas(), how, "k", "k"))


@FAST
@given(data=st.data(), how=st.sampled_from(["inner", "left", "right", "outer"]))
def test_join_left_on_right_on_keeps_both_keys_and_suffixes(spill_root, kernel, data, how):
    left = data.draw(tables("int", "v"))
    right = data.draw(tables("int", "v", max_rows=20)).rename_columns(["rk", "v", "n"])
    got = (
        dataset(left)
        .join(dataset(right), left_on="k", right_on="rk", how=how, broadcast=False)
        .to_pandas(**RUN)
    )
    expected = expected_join(left.to_pandas(), right.to_pandas(), how, "k", "rk")
    assert list(got.columns) == ["k", "v_x", "n_x", "rk", "v_y", "n_y"]
    same_rows(got, expected)


@FAST
@given(
    data=st.data(),
    key_type=st.sampled_from(["int", "str"]),
    spilled=st.booleans(),
    descending=st.lists(st.booleans(), min_size=2, max_size=2),
)
def test_sort_equals_pandas_stable_sort(spill_root, kernel, data, key_type, spilled, descending):
    table = data.draw(tables(key_type, "x", max_rows=60))
    force_spill(spilled)
    try:
        got = dataset(table, 4).sort(["k", "x"], descending=descending).to_pandas(**RUN)
    finally:
        force_spill(False)
    expected = table.to_pandas().sort_values(
        ["k", "x"], ascending=[not d for d in descending], kind="stable", na_position="last"
    )
    assert rows(got) == rows(expected)


def summarize(group: Any) -> Any:
    return pd.DataFrame(
        {
            "k": [group["k"].iloc[0]],
            "rows": [len(group)],
            "first_n": [group["n"].iloc[0]],
            "total": [group["x"].sum()],
        }
    )


@FAST
@given(data=st.data(), key_type=st.sampled_from(["int", "str"]), spilled=st.booleans())
def test_map_groups_equals_pandas_groupby_apply(spill_root, kernel, data, key_type, spilled):
    table = data.draw(tables(key_type, "x", max_rows=60))
    force_spill(spilled)
    try:
        got = dataset(table, 4).groupby("k").map_groups(summarize).to_pandas(**RUN)
    finally:
        force_spill(False)
    frame = table.to_pandas()
    if frame["k"].notna().any():
        expected = frame.groupby("k")[["k", "x", "n"]].apply(summarize).reset_index(drop=True)
        assert rows(got) == rows(expected)  # groups in key order, rows in input order
    else:
        assert len(got) == 0


@FAST
@given(data=st.data(), key_type=st.sampled_from(["int", "str"]))
def test_unique_and_distinct(spill_root, data, key_type):
    table = data.draw(tables(key_type, "x", max_rows=60))
    ds = dataset(table, 4)
    values = ds.unique("k", **RUN)
    expected = set(norm(v) for v in table.column("k").to_pylist())
    assert len(values) == len(expected) and set(values) == expected
    assert values[-1:] == [None] or None not in expected  # sorted, None last
    got = ds.distinct(["k", "x"]).to_pandas(**RUN)
    assert Counter(rows(got)) == Counter(set(rows(table.select(["k", "x"]).to_pandas())))


# -- every backend, composed with the rest of the data layer -------------------------------------


def add_one(batch: Any) -> Any:
    return batch.append_column("x1", pa.compute.add(batch.column("x"), 1))


def keep_even(row: dict[str, Any]) -> bool:
    return (row["n"] or 0) % 2 == 0  # right-only rows of a join have no n


def fixture_tables() -> tuple[Any, Any]:
    left = pa.table(
        {
            "k": [i % 50 if i % 13 else None for i in range(600)],
            "x": list(range(600)),
            "n": list(range(600)),
        }
    )
    right = pa.table({"k": [i % 70 for i in range(140)], "y": [float(i) for i in range(140)]})
    return left, right


@pytest.mark.parametrize("backend", ["inline", "threads", "process"])
@pytest.mark.parametrize("spilled", [False, True])
def test_every_operation_on_a_backend(backend, spilled, spill_root, monkeypatch):
    if spilled:
        monkeypatch.setenv("FORKJOIN_SPILL_THRESHOLD", "0")
    left, right = fixture_tables()
    run = {"workers": 2, "backend": backend}
    lp, rp = left.to_pandas(), right.to_pandas()
    for how in HOWS:  # fused with a map_batches before and a filter after
        got = (
            dataset(left, 5)
            .map_batches(add_one)
            .join(dataset(right, 2), on="k", how=how, broadcast=False)
            .filter(keep_even)
            .to_pandas(**run)
        )
        expected = expected_join(lp.assign(x1=lp.x + 1), rp, how, "k", "k")
        same_rows(got, expected[expected.n.fillna(0) % 2 == 0])
    got = dataset(left, 5).sort("k", descending=True).to_pandas(**run)
    expected = lp.sort_values("k", ascending=False, kind="stable", na_position="last")
    assert rows(got) == rows(expected)
    shuffled = dataset(left, 5).random_shuffle(seed=7).to_pandas(**run)
    assert rows(shuffled) == rows(dataset(left, 5).random_shuffle(seed=7).to_pandas(workers=1))
    assert rows(shuffled) != rows(lp) and sorted(shuffled.n) == list(range(600))
    parts = (
        dataset(left, 5)
        .repartition(4, keys="k")
        .map_batches(
            lambda b: {"nkeys": [len(set(b.column("k").to_pylist()))], "rows": [b.num_rows]},
            batch_size=None,
        )
        .to_pandas(**run)
    )
    assert parts.rows.sum() == 600 and parts.nkeys.sum() == 51  # a key in one partition only


def test_broadcast_is_chosen_for_a_small_side_and_matches_the_hash_join(spill_root, monkeypatch):
    monkeypatch.setenv("FORKJOIN_SPILL_THRESHOLD", "0")
    left, right = fixture_tables()
    joined = dataset(left, 4).join(dataset(right), on="k")
    broadcast = joined.to_pandas(workers=2, backend="threads")
    assert joined.stats().bytes_spilled == 0  # nothing was exchanged
    hashed = dataset(left, 4).join(dataset(right), on="k", broadcast=False)
    by_hash = hashed.to_pandas(workers=2, backend="threads")
    assert hashed.stats().bytes_spilled > 0
    same_rows(broadcast, by_hash)
    # A right side as large as the left one: broadcasting it to every partition would build
    # its hash table once per partition, so the hash join is chosen.
    self_join = dataset(left, 4).join(dataset(left), on="n")
    assert len(self_join.to_pandas(workers=2, backend="threads")) == 600
    assert self_join.stats().bytes_spilled > 0
    with pytest.raises(ValueError, match="broadcast=True"):
        dataset(left).join(dataset(right), on="k", how="outer", broadcast=True).count()


def test_join_keys_of_different_int_and_float_types_match(spill_root):
    left = pa.table({"k": pa.array([1, 2, 3], pa.int32()), "x": [1, 2, 3]})
    right = pa.table({"k": pa.array([2.0, 3.0, 4.5]), "y": ["b", "c", "d"]})
    got = dataset(left).join(dataset(right), on="k", broadcast=False).to_pandas(**RUN)
    assert sorted(zip(got.x, got.y, strict=True)) == [(2, "b"), (3, "c")]


def test_bad_arguments_say_what_to_do():
    ds = fj.data.from_items([{"k": 1}])
    with pytest.raises(ValueError, match="how must be one of"):
        ds.join(ds, on="k", how="cross")
    with pytest.raises(TypeError, match="on= or left_on="):
        ds.join(ds, on="k", left_on="k", right_on="k")
    with pytest.raises(TypeError, match="needs on="):
        ds.join(ds)
    with pytest.raises(fj.errors.TaskError, match="no column"):
        ds.join(ds, on="missing", broadcast=False).to_arrow(backend="inline")
    with pytest.raises(ValueError, match="batch_format"):
        ds.groupby("k").map_groups(summarize, batch_format="torch")


def test_sort_with_a_giant_key_spreads_over_buckets(spill_root, monkeypatch):
    """One value in half the rows: the position tie-breaker cuts it into several buckets."""
    monkeypatch.setenv("FORKJOIN_SPILL_THRESHOLD", "0")
    monkeypatch.setattr("forkjoin.data.exchange.TARGET_BUCKET_BYTES", 4096)
    n = 4000
    table = pa.table({"k": [7 if i % 2 else i for i in range(n)], "n": list(range(n))})
    ds = dataset(table, 4).sort("k")
    sizes = ds.map_batches(lambda b: {"rows": [b.num_rows]}, batch_size=None).to_pandas(**RUN)
    assert sizes.rows.sum() == n and sizes.rows.max() < n / 4  # no bucket holds the giant key
    expected = table.to_pandas().sort_values("k", kind="stable")
    assert rows(ds.to_pandas(**RUN)) == rows(expected)


def test_sort_and_join_write_parquet_and_resume(spill_root, tmp_path, monkeypatch):
    monkeypatch.setenv("FORKJOIN_SPILL_THRESHOLD", "0")
    left, right = fixture_tables()
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        pq.write_table(left.slice(i * 200, 200), src / f"p{i}.parquet", row_group_size=50)
    ds = fj.data.read_parquet(str(src)).join(dataset(right), on="k", how="left").sort(["n"])
    out = tmp_path / "out"
    stats = ds.write_parquet(str(out), workers=2)
    expected = expected_join(left.to_pandas(), right.to_pandas(), "left", "k", "k")
    assert stats.rows_out == len(expected) and stats.bytes_spilled > 0
    written = pq.read_table(out).to_pandas()
    assert list(written.n) == sorted(expected.n)  # part files in order: a global sort
    same_rows(written, expected)
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["complete"] and manifest["rows"] == len(expected)
    again = ds.write_parquet(str(out), workers=2)  # the same plan: everything already committed
    assert again.partitions_resumed == len(manifest["files"]) and again.files_written == 0


def failing_group(group: Any) -> Any:
    raise ValueError("bad group")


def test_a_failing_reduce_leaves_no_spill_file(spill_root, monkeypatch):
    monkeypatch.setenv("FORKJOIN_SPILL_THRESHOLD", "0")
    left, _ = fixture_tables()
    with pytest.raises(fj.errors.TaskError, match="bad group"):
        dataset(left, 4).groupby("k").map_groups(failing_group).to_arrow(workers=2)
    # spill_root's teardown asserts the directory is empty


def test_stopping_early_removes_spill_files(spill_root, monkeypatch):
    monkeypatch.setenv("FORKJOIN_SPILL_THRESHOLD", "0")
    left, _ = fixture_tables()
    batches = dataset(left, 4).sort("n").iter_batches(workers=2, backend="threads")
    first = next(batches)
    assert first.column("n").to_pylist()[0] == 0
    assert any(p.startswith(spill.SPILL_PREFIX) for p in os.listdir(spill_root))
    batches.close()
    assert os.listdir(spill_root) == []


def test_stale_spill_directories_are_cleaned_only_when_their_owner_is_gone(tmp_path):
    live = spill.SpillDir(str(tmp_path))
    live_path = live.path
    dead = tmp_path / f"{spill.SPILL_PREFIX}999999-deadbeef"
    dead.mkdir()
    (dead / spill.OWNER_FILE).write_text("")
    (dead / "map-L-00000.arrow").write_bytes(b"x" * 100)
    removed = spill.clean_stale(str(tmp_path))
    assert removed == [str(dead)] and os.path.isdir(live_path)
    live.close()
    assert os.listdir(tmp_path) == []


# -- the reduce side's kernels (kernels.py): Polars and Acero give the same tables --------------


def kernel_tables() -> tuple[Any, Any]:
    import datetime

    left = pa.table(
        {
            "k": pa.array([1, 2, None, 2, 5], pa.int32()),
            "s": ["a", "ß", None, "日本", ""],
            "d": pa.array([datetime.date(2024, 1, i) for i in range(1, 6)], pa.date32()),
            "t": pa.array([1, 2, 3, None, 5], pa.timestamp("ms", tz="UTC")),
            "v": [1.5, None, 2.5, 3.5, 4.5],
        }
    )
    right = pa.table(
        {
            "k": pa.array([2, 2, 1, None, 7], pa.int64()),
            "s": ["x", "y", "z", "w", "v"],
            "b": [True, False, None, True, False],
        }
    )
    return left, right


@pytest.mark.parametrize("how", HOWS)
def test_polars_and_acero_joins_give_the_same_table(how, monkeypatch):
    from forkjoin.data.join import JoinSpec
    from forkjoin.data.kernels import polars_module

    assert polars_module() is not None, "polars is in the test extra"
    left, right = kernel_tables()
    spec = JoinSpec(("k",), ("k",), how, ("_l", "_r"))
    out = {}
    for kernel in ("polars", "arrow"):
        monkeypatch.setenv(KERNEL_ENV, kernel)
        out[kernel] = spec([left, right])
    assert out["polars"].schema == out["arrow"].schema
    key = [(c, "ascending") for c in out["arrow"].column_names if c != "t"]
    assert out["polars"].sort_by(key).equals(out["arrow"].sort_by(key))
    # a dictionary column is not one Polars gives back exactly: Acero joins it
    coded = left.set_column(1, "s", left.column("s").dictionary_encode())
    monkeypatch.setenv(KERNEL_ENV, "polars")
    assert spec([coded, right]).schema.field(1).type == coded.schema.field("s").type


def test_polars_sort_keeps_acero_order_for_nulls_ties_and_nan(monkeypatch):
    from forkjoin.data.kernels import stable_sort

    table = pa.table(
        {
            "k": [3.0, None, 1.0, 3.0, 2.0, None, 1.0],
            "s": ["b", "a", None, "a", "c", "b", "a"],
            "n": list(range(7)),
        }
    )
    keys = [("k", "descending"), ("s", "ascending")]
    monkeypatch.setenv(KERNEL_ENV, "polars")
    fast = stable_sort(table, keys)
    monkeypatch.setenv(KERNEL_ENV, "arrow")
    assert fast.equals(stable_sort(table, keys))
    assert fast.column("n").to_pylist() == [3, 0, 4, 6, 2, 1, 5]  # nulls last, ties in order
    with_nan = table.set_column(0, "k", pa.array([3.0, None, float("nan"), 3.0, 2.0, None, 1.0]))
    monkeypatch.setenv(KERNEL_ENV, "polars")  # NaN: Acero's order (after numbers), not Polars'
    assert stable_sort(with_nan, keys).column("n").to_pylist() == [3, 0, 4, 6, 2, 1, 5]


def test_kernel_choice_from_the_environment(monkeypatch):
    from forkjoin.data import kernels

    monkeypatch.setenv(KERNEL_ENV, "arrow")
    assert kernels.kernel_name() == "arrow"
    monkeypatch.setenv(KERNEL_ENV, "auto")
    assert kernels.kernel_name() == "polars"
    monkeypatch.setenv(KERNEL_ENV, "duckdb")
    with pytest.raises(ValueError, match="FORKJOIN_DATA_KERNEL"):
        kernels.kernel_name()
    monkeypatch.setattr(kernels, "_polars", False)  # as if polars were not installed
    monkeypatch.setenv(KERNEL_ENV, "auto")
    assert kernels.kernel_name() == "arrow"
    monkeypatch.setenv(KERNEL_ENV, "polars")
    with pytest.raises(fj.BackendUnavailableError, match="pip install"):
        kernels.kernel_name()
