"""One contender of bench_data, run in a fresh interpreter (its peak RSS is the whole tree's):

    python benchmarks/_data_contenders.py CONTENDER WORKLOAD DATA_DIR OUT_DIR WORKERS

Prints one JSON line: seconds (from just before reading to the last file written; imports and
cluster start-up such as ray.init are timed apart as setup_seconds). The parent counts the rows
written and checksums them (``checksum``) once this process has exited, so that every
contender's peak RSS is its job's and the parent can check they all computed the same thing.
Each contender reads Parquet, applies the workload's Python function, and writes Parquet.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import _data_workloads as w  # noqa: E402

BATCH_SIZE = 8192
CLEANUP: list[Callable[[], None]] = []  # run after the measurement (e.g. ray.shutdown)


def columns(workload: str) -> list[str]:
    return w.TEXT_COLUMNS if workload == "text" else w.NUMERIC_COLUMNS


def files(data: str) -> list[str]:
    return sorted(glob.glob(os.path.join(data, "*.parquet")))


# -- contenders: setup() returns run(); run() does the timed work --------------------------------


def load_data_layer(_: int) -> None:
    """Import what a data task needs (pyarrow builds a table: that imports pandas too)."""
    import pyarrow as pa

    import forkjoin.data.execute  # noqa: F401

    pa.table({"x": [1]})


def forkjoin(workload: str, data: str, out: str, workers: int, *, backend: str = "process",
             warm: bool = False) -> Callable[[], None]:  # fmt: skip
    import pyarrow.parquet  # noqa: F401  (the driver's imports, as pandas' row imports pandas)

    import forkjoin as fj
    import forkjoin.data as fd
    import forkjoin.data.execute  # noqa: F401

    # Start the workers, as ray.init does; "warm" also loads pyarrow and pandas in them (what a
    # session's second job finds), the plain row pays for that inside the timed run.
    task = load_data_layer if warm else abs
    fj.map(task, range(4 * workers), workers=workers, backend=backend, chunksize=1)
    fn = w.text_arrow if workload == "text" else w.numeric_arrow

    def run() -> None:
        ds = fd.read_parquet(data, columns=columns(workload))
        ds = ds.map_batches(fn, batch_size=BATCH_SIZE)
        ds.write_parquet(out, workers=workers, backend=backend)

    return run


def forkjoin_warm(workload: str, data: str, out: str, workers: int) -> Callable[[], None]:
    return forkjoin(workload, data, out, workers, warm=True)


def forkjoin_threads(workload: str, data: str, out: str, workers: int) -> Callable[[], None]:
    return forkjoin(workload, data, out, workers, backend="threads")


def pandas_serial(workload: str, data: str, out: str, workers: int) -> Callable[[], None]:
    import pandas as pd

    fn = w.text_pandas if workload == "text" else w.numeric_pandas

    def run() -> None:
        os.makedirs(out, exist_ok=True)
        for i, path in enumerate(files(data)):
            df = pd.read_parquet(path, columns=columns(workload))
            fn(df).to_parquet(os.path.join(out, f"part-{i:05d}.parquet"), index=False)

    return run


def polars_udf(workload: str, data: str, out: str, workers: int) -> Callable[[], None]:
    import polars as pl

    def text(df: Any) -> Any:
        return df.select(
            pl.col("id"),
            pl.col("text")
            .map_batches(
                lambda s: pl.DataFrame(dict(zip(("tokens", "distinct"),
                                                w.text_features(s.to_list()), strict=True)))
                .to_struct(),  # fmt: skip
                return_dtype=pl.Struct({"tokens": pl.Int64, "distinct": pl.Int64}),
            )
            .alias("f"),
        ).unnest("f")

    def numeric(df: Any) -> Any:
        return df.select(
            pl.col("id"),
            pl.struct(["value", "x", "y"])
            .map_batches(
                lambda s: pl.DataFrame(dict(zip(("z", "w"), w.numeric_features(
                    *(s.struct.field(c).to_numpy() for c in ("value", "x", "y"))), strict=True)))
                .to_struct(),  # fmt: skip
                return_dtype=pl.Struct({"z": pl.Float64, "w": pl.Float64}),
            )
            .alias("f"),
        ).unnest("f")

    fn = text if workload == "text" else numeric

    def run() -> None:
        os.makedirs(out, exist_ok=True)
        for i, path in enumerate(files(data)):
            df = pl.read_parquet(path, columns=columns(workload))
            fn(df).write_parquet(os.path.join(out, f"part-{i:05d}.parquet"))

    return run


def hf_datasets(workload: str, data: str, out: str, workers: int) -> Callable[[], None]:
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    cache = os.path.join(out + "-hfcache")
    fn = w.text_dict if workload == "text" else w.numeric_dict

    def run() -> None:
        ds = datasets.Dataset.from_parquet(files(data), columns=columns(workload), cache_dir=cache)
        mapped = ds.map(fn, batched=True, batch_size=1000, num_proc=workers,
                        remove_columns=ds.column_names)  # fmt: skip
        os.makedirs(out, exist_ok=True)
        mapped.to_parquet(os.path.join(out, "part-00000.parquet"))

    return run


def ray_data(workload: str, data: str, out: str, workers: int) -> Callable[[], None]:
    import logging

    import ray

    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR)  # fmt: skip
    CLEANUP.append(ray.shutdown)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    fn = w.text_arrow if workload == "text" else w.numeric_arrow

    def run() -> None:
        ds = ray.data.read_parquet(files(data), columns=columns(workload))
        ds.map_batches(fn, batch_format="pyarrow", batch_size=BATCH_SIZE).write_parquet(out)

    return run


def dask_processes(workload: str, data: str, out: str, workers: int) -> Callable[[], None]:
    import dask
    import dask.dataframe as dd
    import pandas as pd

    dask.config.set(scheduler="processes", num_workers=workers)
    dask.compute(*[dask.delayed(abs)(i) for i in range(4 * workers)])  # start the pool
    fn = w.text_pandas if workload == "text" else w.numeric_pandas
    if workload == "text":
        meta = pd.DataFrame({"id": pd.Series(dtype="int64"), "tokens": pd.Series(dtype="int64"),
                             "distinct": pd.Series(dtype="int64")})  # fmt: skip
    else:
        meta = pd.DataFrame({c: pd.Series(dtype=t) for c, t in
                             (("id", "int64"), ("z", "float64"), ("w", "float64"))})  # fmt: skip

    def run() -> None:
        df = dd.read_parquet(files(data), columns=columns(workload))
        df.map_partitions(fn, meta=meta).to_parquet(out, write_index=False)

    return run


CONTENDERS: dict[str, Callable[[str, str, str, int], Callable[[], None]]] = {
    "forkjoin": forkjoin,
    "forkjoin (warm workers)": forkjoin_warm,
    "forkjoin (threads)": forkjoin_threads,
    "pandas serial": pandas_serial,
    "polars + Python UDF": polars_udf,
    "HF datasets.map": hf_datasets,
    "Ray Data map_batches": ray_data,
    "Dask map_partitions": dask_processes,
}


def checksum(out: str, workload: str) -> tuple[int, float]:
    """Rows and a checksum of the output, read batch by batch (bench_data's process calls it
    once the contender has exited)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    dataset = pads.dataset(
        sorted(glob.glob(os.path.join(out, "**", "*.parquet"), recursive=True)), format="parquet"
    )
    columns = ["tokens", "distinct"] if workload == "text" else ["z"]
    rows, total = 0, 0.0
    for batch in dataset.to_batches(columns=columns):
        rows += batch.num_rows
        total += sum(pc.sum(batch.column(c)).as_py() or 0 for c in columns)
    return rows, float(total)


def main() -> None:
    name, workload, data, out, workers = sys.argv[1:6]
    start = time.perf_counter()
    run = CONTENDERS[name](workload, data, out, int(workers))
    setup = time.perf_counter() - start
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "setup_seconds": setup}), flush=True)
    for cleanup in CLEANUP:
        cleanup()


if __name__ == "__main__":
    main()
