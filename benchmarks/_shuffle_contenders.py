"""One contender of bench_shuffle.py, run in a fresh interpreter:

    python _shuffle_contenders.py NAME WORKLOAD DATA OUT WORKERS

Prints one JSON line: seconds (the workload, from reading to its result), setup_seconds
(imports, starting a cluster), the result (small: aggregates, coefficients; the sort writes
Parquet under OUT and returns its file list), and spill_bytes where the contender reports it.

Workloads: join_agg (lineitem JOIN orders on the order key, then sum of l_extendedprice per
o_orderpriority), sort (lineitem by l_extendedprice, written as Parquet), groups (a
least-squares fit of l_extendedprice on l_quantity for each of 1,000 l_suppkey groups),
broadcast (join_agg with the 10,000-row orders_small).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _shuffle_workloads import fit_line  # noqa: E402

CLEANUP: list[Callable[[], None]] = []
Run = Callable[[], Any]


def paths(data: str, workload: str) -> tuple[str, str]:
    right = "orders_small" if workload == "broadcast" else "orders"
    return os.path.join(data, "lineitem"), os.path.join(data, right)


def agg_result(keys: Any, sums: Any) -> dict[str, float]:
    return {str(k): float(v) for k, v in zip(keys, sums, strict=True)}


def groups_result(keys: Any, a: Any, b: Any) -> dict[str, list[float]]:
    return {str(int(k)): [float(x), float(y)] for k, x, y in zip(keys, a, b, strict=True)}


def fit_numpy(batch: dict[str, Any]) -> dict[str, Any]:
    a, b = fit_line(batch["l_quantity"], batch["l_extendedprice"])
    return {"l_suppkey": [batch["l_suppkey"][0]], "a": [a], "b": [b]}


def fit_pandas(frame: Any) -> Any:
    import pandas as pd

    a, b = fit_line(frame["l_quantity"].to_numpy(), frame["l_extendedprice"].to_numpy())
    return pd.DataFrame({"l_suppkey": [frame["l_suppkey"].iloc[0]], "a": [a], "b": [b]})


GROUP_COLUMNS = ["l_suppkey", "l_quantity", "l_extendedprice"]
JOIN_LEFT = ["l_orderkey", "l_extendedprice"]
JOIN_RIGHT = ["o_orderkey", "o_orderpriority"]


def load_data_layer(in_worker: int) -> None:
    """The imports a forkjoin data job needs, done before timing (as the peers' are): the data
    layer, pyarrow's compute and Acero, and in the workers the reduce side's kernel library
    (Polars; the caller never runs a kernel, so it does not load it: ~25 MB of RSS)."""
    import pandas  # noqa: F401
    import pyarrow.acero  # noqa: F401
    import pyarrow.compute  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    import forkjoin.data.aggregate  # noqa: F401
    import forkjoin.data.join  # noqa: F401
    import forkjoin.data.readers  # noqa: F401
    import forkjoin.data.sinks  # noqa: F401
    import forkjoin.data.sort  # noqa: F401

    if in_worker:
        from forkjoin.data.kernels import kernel_name

        kernel_name()


# -- forkjoin ------------------------------------------------------------------------------------


def forkjoin(workload: str, data: str, out: str, workers: int, backend: str = "process") -> Run:
    import forkjoin as fj

    # The shared pool started and the data layer imported in its workers, as the peers' imports
    # are done before timing too. The caller's data layer first: a shared pool started after it
    # imports pyarrow/pandas as its workers start (engine/preload.py), so each read_parquet of
    # the timed run sends no import tasks to it (with the pool started first, each call sent
    # 2 x workers tasks of >= 0.1 s: ~0.4 s of a 10 M-row join's ~1.7 s, before any map task).
    # The pool is started with the data layer's preload list, as a data job's own pool would
    # be: a pool started without it got 2 x workers import tasks of >= 0.1 s from the first
    # read_parquet of the timed run (engine/preload.py): 0.21 s before a 10 M-row sort's first
    # task.
    from forkjoin.data.readers import DATA_MODULES

    run_options = {"workers": workers, "backend": backend}
    load_data_layer(0)  # the caller merges aggregates and collects: its imports too
    fj.map(load_data_layer, [1] * (8 * workers), preload=DATA_MODULES, **run_options)
    left, right = paths(data, workload)
    stats: dict[str, Any] = {}

    def run() -> Any:
        if workload in ("join_agg", "broadcast"):
            ds = fj.data.read_parquet(left, columns=JOIN_LEFT).join(
                fj.data.read_parquet(right, columns=JOIN_RIGHT),
                left_on="l_orderkey",
                right_on="o_orderkey",
            )
            agg = ds.groupby("o_orderpriority").agg({"l_extendedprice": "sum"})
            frame = agg.to_pandas(**run_options)
            stats["spill_bytes"] = ds.stats().bytes_spilled + agg.stats().bytes_spilled
            return agg_result(frame.o_orderpriority, frame.l_extendedprice)
        if workload == "sort":
            ds = fj.data.read_parquet(left).sort("l_extendedprice")
            result = ds.write_parquet(out, **run_options)
            stats["spill_bytes"] = result.bytes_spilled
            return None
        ds = fj.data.read_parquet(left, columns=GROUP_COLUMNS).groupby("l_suppkey")
        grouped = ds.map_groups(fit_numpy, batch_format="numpy")
        frame = grouped.to_pandas(**run_options)
        stats["spill_bytes"] = grouped.stats().bytes_spilled
        return groups_result(frame.l_suppkey, frame.a, frame.b)

    run.stats = stats  # type: ignore[attr-defined]
    return run


# -- pandas --------------------------------------------------------------------------------------


def pandas_serial(workload: str, data: str, out: str, workers: int) -> Run:
    import pandas as pd

    left, right = paths(data, workload)

    def run() -> Any:
        if workload in ("join_agg", "broadcast"):
            joined = pd.read_parquet(left, columns=JOIN_LEFT).merge(
                pd.read_parquet(right, columns=JOIN_RIGHT),
                left_on="l_orderkey",
                right_on="o_orderkey",
            )
            sums = joined.groupby("o_orderpriority")["l_extendedprice"].sum()
            return agg_result(sums.index, sums.values)
        if workload == "sort":
            frame = pd.read_parquet(left).sort_values("l_extendedprice", kind="stable")
            os.makedirs(out)
            frame.to_parquet(os.path.join(out, "part-0.parquet"), index=False)
            return None
        frame = pd.read_parquet(left, columns=GROUP_COLUMNS)
        fits = frame.groupby("l_suppkey")[GROUP_COLUMNS].apply(fit_pandas)
        return groups_result(fits.l_suppkey, fits.a, fits.b)

    return run


# -- Polars (lazy, streaming engine) -------------------------------------------------------------


def polars_streaming(workload: str, data: str, out: str, workers: int) -> Run:
    os.environ["POLARS_MAX_THREADS"] = str(workers)
    import polars as pl

    left, right = paths(data, workload)
    lf = pl.scan_parquet(os.path.join(left, "*.parquet"))

    def run() -> Any:
        if workload in ("join_agg", "broadcast"):
            rf = pl.scan_parquet(os.path.join(right, "*.parquet"))
            result = (
                lf.select(JOIN_LEFT)
                .join(rf.select(JOIN_RIGHT), left_on="l_orderkey", right_on="o_orderkey")
                .group_by("o_orderpriority")
                .agg(pl.col("l_extendedprice").sum())
                .collect(engine="streaming")
            )
            return agg_result(result["o_orderpriority"], result["l_extendedprice"])
        if workload == "sort":
            os.makedirs(out)
            lf.sort("l_extendedprice", maintain_order=True).sink_parquet(
                os.path.join(out, "part-0.parquet"), engine="streaming"
            )
            return None
        frame = lf.select(GROUP_COLUMNS).collect(engine="streaming")
        fits = frame.group_by("l_suppkey").map_groups(
            lambda g: pl.DataFrame(fit_numpy({c: g[c].to_numpy() for c in GROUP_COLUMNS}))
        )
        return groups_result(fits["l_suppkey"], fits["a"], fits["b"])

    return run


# -- DuckDB --------------------------------------------------------------------------------------


def duckdb_sql(workload: str, data: str, out: str, workers: int) -> Run:
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET threads={workers}")
    CLEANUP.append(con.close)
    left, right = paths(data, workload)
    lsrc = f"read_parquet('{left}/*.parquet')"
    rsrc = f"read_parquet('{right}/*.parquet')"

    def run() -> Any:
        if workload in ("join_agg", "broadcast"):
            rows = con.execute(
                f"SELECT o_orderpriority, sum(l_extendedprice) FROM {lsrc} JOIN {rsrc} "
                f"ON l_orderkey = o_orderkey GROUP BY o_orderpriority"
            ).fetchall()
            return agg_result([r[0] for r in rows], [r[1] for r in rows])
        if workload == "sort":
            os.makedirs(out)
            target = os.path.join(out, "part-0.parquet")
            con.execute(
                f"COPY (SELECT * FROM {lsrc} ORDER BY l_extendedprice) TO '{target}' "
                f"(FORMAT parquet)"
            )
            return None
        # SQL's own least-squares aggregates: what a DuckDB user writes (no Python per group)
        rows = con.execute(
            f"SELECT l_suppkey, regr_slope(l_extendedprice, l_quantity), "
            f"regr_intercept(l_extendedprice, l_quantity) FROM {lsrc} GROUP BY l_suppkey"
        ).fetchall()
        return groups_result([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])

    return run


# -- Dask DataFrame (distributed, 2 worker processes) --------------------------------------------


def dask_dataframe(workload: str, data: str, out: str, workers: int) -> Run:
    import dask.dataframe as dd
    import pandas as pd
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        host="127.0.0.1",
    )
    client = Client(cluster)
    CLEANUP.extend([client.close, cluster.close])
    left, right = paths(data, workload)

    def run() -> Any:
        if workload in ("join_agg", "broadcast"):
            lf = dd.read_parquet(left, columns=JOIN_LEFT)
            if workload == "broadcast":
                rf: Any = pd.read_parquet(right, columns=JOIN_RIGHT)  # a pandas frame: broadcast
            else:
                rf = dd.read_parquet(right, columns=JOIN_RIGHT)
            joined = lf.merge(rf, left_on="l_orderkey", right_on="o_orderkey")
            sums = joined.groupby("o_orderpriority")["l_extendedprice"].sum().compute()
            return agg_result(sums.index, sums.values)
        if workload == "sort":
            dd.read_parquet(left).sort_values("l_extendedprice").to_parquet(out, write_index=False)
            return None
        meta = pd.DataFrame(
            {
                "l_suppkey": pd.Series(dtype="int64"),
                "a": pd.Series(dtype="float64"),
                "b": pd.Series(dtype="float64"),
            }
        )
        # pandas >= 3 leaves the grouping column out of the frame apply passes (hence the
        # KeyError this row used to fail with): select it back, as the pandas contender does.
        fits = (
            dd.read_parquet(left, columns=GROUP_COLUMNS)
            .groupby("l_suppkey")[GROUP_COLUMNS]
            .apply(fit_pandas, meta=meta)
            .compute()
        )
        return groups_result(fits.l_suppkey, fits.a, fits.b)

    return run


# -- Ray Data ------------------------------------------------------------------------------------


def ray_data(workload: str, data: str, out: str, workers: int) -> Run:
    import logging

    import ray

    ray.init(
        num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR
    )
    CLEANUP.append(ray.shutdown)
    ray.data.DataContext.get_current().enable_progress_bars = False
    left, right = paths(data, workload)

    def run() -> Any:
        if workload in ("join_agg", "broadcast"):  # Ray Data has no broadcast join: a hash join
            lf = ray.data.read_parquet(left, columns=JOIN_LEFT)
            rf = ray.data.read_parquet(right, columns=JOIN_RIGHT)
            joined = lf.join(
                rf,
                join_type="inner",
                num_partitions=16,
                on=("l_orderkey",),
                right_on=("o_orderkey",),
            )
            frame = joined.groupby("o_orderpriority").sum("l_extendedprice").to_pandas()
            return agg_result(frame.o_orderpriority, frame["sum(l_extendedprice)"])
        if workload == "sort":
            ray.data.read_parquet(left).sort("l_extendedprice").write_parquet(out)
            return None
        fits = (
            ray.data.read_parquet(left, columns=GROUP_COLUMNS)
            .groupby("l_suppkey")
            .map_groups(fit_numpy, batch_format="numpy")
            .to_pandas()
        )
        return groups_result(fits.l_suppkey, fits.a, fits.b)

    return run


# -- Daft ----------------------------------------------------------------------------------------


def daft_native(workload: str, data: str, out: str, workers: int) -> Run:
    import daft

    daft.set_runner_native(num_threads=workers)
    left, right = paths(data, workload)

    def run() -> Any:
        if workload in ("join_agg", "broadcast"):
            lf = daft.read_parquet(os.path.join(left, "*.parquet")).select(*JOIN_LEFT)
            rf = daft.read_parquet(os.path.join(right, "*.parquet")).select(*JOIN_RIGHT)
            joined = lf.join(rf, left_on="l_orderkey", right_on="o_orderkey")
            frame = (
                joined.groupby("o_orderpriority").agg(daft.col("l_extendedprice").sum()).to_pandas()
            )
            return agg_result(frame.o_orderpriority, frame.l_extendedprice)
        if workload == "sort":
            daft.read_parquet(os.path.join(left, "*.parquet")).sort(
                "l_extendedprice"
            ).write_parquet(out)
            return None
        import numpy as np

        @daft.udf(return_dtype=daft.DataType.python())
        def fit(keys: Any, x: Any, y: Any) -> Any:
            a, b = fit_line(x.to_arrow().to_numpy(), y.to_arrow().to_numpy())
            return [(int(keys.to_pylist()[0]), a, b)]

        df = daft.read_parquet(os.path.join(left, "*.parquet")).select(*GROUP_COLUMNS)
        fits = (
            df.groupby("l_suppkey")
            .map_groups(fit(df["l_suppkey"], df["l_quantity"], df["l_extendedprice"]).alias("fit"))
            .to_pydict()
        )
        triples = np.array([t for t in fits["fit"] if t is not None], dtype=object)
        return groups_result(triples[:, 0], triples[:, 1], triples[:, 2])

    return run


def forkjoin_threads(workload: str, data: str, out: str, workers: int) -> Run:
    """forkjoin with backend="threads": one process (the kernels release the GIL), so the
    peak RSS of one interpreter instead of three."""
    return forkjoin(workload, data, out, workers, backend="threads")


CONTENDERS: dict[str, Callable[[str, str, str, int], Run]] = {
    "forkjoin": forkjoin,
    "forkjoin threads": forkjoin_threads,
    "pandas": pandas_serial,
    "Polars streaming": polars_streaming,
    "DuckDB": duckdb_sql,
    "Dask DataFrame": dask_dataframe,
    "Ray Data": ray_data,
    "Daft": daft_native,
}


def main() -> None:
    name, workload, data, out, workers = sys.argv[1:6]
    start = time.perf_counter()
    run = CONTENDERS[name](workload, data, out, int(workers))
    setup = time.perf_counter() - start
    start = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - start
    stats = getattr(run, "stats", {})
    print(
        json.dumps(
            {
                "seconds": seconds,
                "setup_seconds": setup,
                "result": result,
                "spill_bytes": stats.get("spill_bytes"),
            }
        ),
        flush=True,
    )
    for cleanup in CLEANUP:
        try:
            cleanup()
        except Exception:  # noqa: BLE001 - a peer's shutdown noise must not hide its result
            pass


if __name__ == "__main__":
    main()
