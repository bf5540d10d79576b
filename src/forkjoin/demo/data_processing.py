"""Demo section 2: a Python UDF over a generated Parquet dataset, serially and with forkjoin.data.

Serial: a plain loop, file by file (read a Parquet file, apply the UDF, write a Parquet file), as
one would write it with pyarrow or pandas. Parallel, on the demo's shared pool:
``read_parquet(...).map_batches(text_features).write_parquet(...)`` (partitions processed and
committed by the workers, a manifest written last), then ``groupby().agg()`` as partial
aggregates merged in the caller. Both ways must give identical results.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from typing import Any

from .runner import DemoContext, SectionReport, Step, format_bytes, format_count, format_seconds

# Rows in a default run (~200 MB of Parquet-bound Arrow data, ~20 s of serial work on one core)
# and in a --quick one (~0.5 s).
DEFAULT_ROWS = 800_000
QUICK_ROWS = 40_000
ROWS_PER_FILE = 100_000
ROW_GROUP_ROWS = 25_000

_TOKEN = re.compile(r"[a-z0-9]+")


def text_features(batch: Any) -> Any:
    """Per row: lower-case, split into tokens, count tokens and distinct tokens (pure Python)."""
    import pyarrow as pa

    counts, distinct = [], []
    for text in batch.column("text").to_pylist():
        tokens = _TOKEN.findall(text.lower())
        counts.append(len(tokens))
        distinct.append(len(set(tokens)))
    return pa.table(
        {
            "id": batch.column("id"),
            "category": batch.column("category"),
            "tokens": pa.array(counts, pa.int64()),
            "distinct": pa.array(distinct, pa.int64()),
        }
    )


def make_dataset(directory: str, rows: int, seed: int) -> int:
    """Parquet files of (id, category, value, text); returns the bytes of Arrow data written.

    Texts are joined from pre-built fragments (fast to generate: ~1 s per million rows) of
    random words with capitals and punctuation, ~200 characters a row."""
    import random

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choices(letters, k=rng.randint(2, 9))) for _ in range(3000)]
    words = [w.capitalize() if i % 7 == 0 else w + "," if i % 11 == 0 else w
             for i, w in enumerate(words)]  # fmt: skip
    fragments = [" ".join(rng.choices(words, k=rng.randint(6, 14))) for _ in range(4000)]
    nprng = np.random.default_rng(seed)
    total = 0
    for number, start in enumerate(range(0, rows, ROWS_PER_FILE)):
        n = min(ROWS_PER_FILE, rows - start)
        picks = nprng.integers(0, len(fragments), (n, 3)).tolist()
        texts = [f"{fragments[a]}. {fragments[b]}; {fragments[c]}!" for a, b, c in picks]
        table = pa.table(
            {
                "id": np.arange(start, start + n, dtype=np.int64),
                "category": nprng.integers(0, 50, n),
                "value": nprng.normal(size=n),
                "text": texts,
            }
        )
        total += table.nbytes
        pq.write_table(table, os.path.join(directory, f"part-{number:04d}.parquet"),
                       row_group_size=ROW_GROUP_ROWS)  # fmt: skip
    return total


def serial_run(source: str, out: str) -> None:
    """The plain loop: file by file, read, apply, write."""
    import pyarrow.parquet as pq

    os.makedirs(out, exist_ok=True)
    for name in sorted(os.listdir(source)):
        table = pq.read_table(os.path.join(source, name), columns=["id", "category", "text"])
        pq.write_table(text_features(table), os.path.join(out, name))


def serial_groupby(out: str) -> Any:
    import pyarrow.parquet as pq

    table = pq.read_table(out)
    result = table.group_by("category").aggregate([("tokens", "sum"), ("distinct", "mean")])
    return result.sort_by("category").to_pandas()


def _load_arrow(_: int) -> None:
    """Import what a worker needs for Arrow tables (a little wait, so every worker gets one)."""
    import time

    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    time.sleep(0.05)


class DataProcessing:
    name = "data-processing"
    title = "Data processing: a Python UDF over a Parquet dataset (forkjoin.data), write + groupby"

    def run(self, ctx: DemoContext) -> SectionReport:
        import pyarrow.parquet as pq

        import forkjoin.data as fd

        rows = ctx.size(DEFAULT_ROWS, QUICK_ROWS)
        root = tempfile.mkdtemp(prefix="fj-demo-data-")
        try:
            source = os.path.join(root, "in")
            os.makedirs(source)
            nbytes, seconds = ctx.timed(make_dataset, source, rows, ctx.seed)
            files = len(os.listdir(source))
            ctx.say(
                f"    data      {format_count(rows)} rows of text + numbers in {files} Parquet "
                f"files, {format_bytes(nbytes)} in memory ({format_seconds(seconds)})"
            )
            _, serial_map = ctx.timed(serial_run, source, os.path.join(root, "serial"))
            serial_agg, serial_group = ctx.timed(serial_groupby, os.path.join(root, "serial"))
            ctx.say(
                f"    serial    UDF loop {format_seconds(serial_map)} "
                f"({format_count(rows / serial_map)} rows/s), "
                f"groupby {format_seconds(serial_group)}"
            )

            # The serial loop's process has pyarrow and pandas loaded already; give the workers
            # the same start (a worker's first table costs ~0.5-2 s of imports), timed apart.
            _, warm = ctx.timed(
                ctx.pool.map_list, _load_arrow, range(4 * ctx.workers), chunksize=1
            )
            ctx.say(f"    workers   load pyarrow + pandas once: {format_seconds(warm)}")
            meter = ctx.meter()
            out = os.path.join(root, "parallel")
            ds = fd.read_parquet(source, columns=["id", "category", "text"])
            stats, parallel_map = ctx.timed(
                ds.map_batches(text_features, batch_size=4096).write_parquet, out, pool=ctx.pool
            )
            grouped = fd.read_parquet(out).groupby("category")
            agg = grouped.agg(tokens_sum=("tokens", "sum"), distinct_mean=("distinct", "mean"))
            parallel_agg, parallel_group = ctx.timed(agg.to_pandas, pool=ctx.pool)
            ctx.say(
                f"    parallel  UDF {format_seconds(parallel_map)} "
                f"({format_count(rows / parallel_map)} rows/s, {stats.partitions} partitions, "
                f"{stats.files_written} files committed), groupby {format_seconds(parallel_group)}"
            )

            serial_table = pq.read_table(os.path.join(root, "serial")).sort_by("id")
            parallel_table = fd.read_parquet(out).to_arrow(pool=ctx.pool).sort_by("id")
            same_rows = serial_table.equals(parallel_table.select(serial_table.column_names))
            same_agg = (
                serial_agg["category"].tolist() == parallel_agg["category"].tolist()
                and serial_agg["tokens_sum"].tolist() == parallel_agg["tokens_sum"].tolist()
                and all(
                    abs(a - b) <= 1e-9 * max(1.0, abs(a))
                    for a, b in zip(serial_agg["distinct_mean"], parallel_agg["distinct_mean"],
                                    strict=True)  # fmt: skip
                )
            )
            report = SectionReport(self.name, self.title)
            report.checks = [
                (f"write_parquet output == serial loop's ({format_count(rows)} rows)", same_rows),
                (f"groupby().agg() == pyarrow on the whole table ({len(serial_agg)} groups)",
                 same_agg),  # fmt: skip
            ]
            total_tokens = int(serial_agg["tokens_sum"].sum())
            report.findings = [
                f"{format_count(total_tokens)} tokens in {format_count(rows)} rows; "
                f"{format_count(rows / serial_map)} rows/s serial -> "
                f"{format_count(rows / parallel_map)} rows/s on {ctx.workers} worker(s)",
                f"_manifest.json lists {stats.files_written} committed files; rerunning the same "
                f"plan would skip them (resume)",
            ]
            workers = ctx.workers
            report.steps = [
                Step("map_batches(text_features) -> Parquet", rows, serial_map, parallel_map,
                     workers),  # fmt: skip
                Step("groupby(category).agg", rows, serial_group, parallel_group, workers),
            ]
            report.pool = meter.figures(parallel_map + parallel_group)
            return report
        finally:
            shutil.rmtree(root, ignore_errors=True)
