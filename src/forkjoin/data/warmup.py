"""Importing this module runs a data task's first-use code once, in memory: a worker that
preloads it (readers.DATA_MODULES, through engine/preload.py) starts its first partition as fast
as its tenth.

Importing pyarrow is not all a first partition pays: pyarrow sets up its pandas shim on the
first table it builds, and the Parquet reader and writer, the memory pool and the numpy
conversions each initialise on first use. Measured here, a fresh worker's first 250k-row
Parquet -> numpy UDF -> Parquet partition took 10-40 ms longer than the next ones; this module
costs ~5 ms. It runs once per process (a module body runs on its first import only)."""

from __future__ import annotations

import io


def warm_up() -> None:
    """One tiny Parquet round trip through the calls a data task makes (no file, no output)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"i": pa.array([1, 2], pa.int64()), "x": [0.5, 1.5], "s": ["a", "b"]})
    sink = io.BytesIO()
    pq.write_table(table, sink, use_dictionary=["s"])
    sink.seek(0)
    back = pq.ParquetFile(sink, pre_buffer=True).read(columns=["i", "x"])
    back.column("x").to_numpy()
    back.slice(0, 1).to_batches()


try:
    warm_up()
except Exception:  # noqa: BLE001 - an optimisation only: a worker that cannot warm up still runs
    pass
