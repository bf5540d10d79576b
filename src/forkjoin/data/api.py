"""The sources a Dataset starts from: files (Parquet, CSV, JSON Lines) or in-memory data."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa

from .dataset import Dataset
from .readers import DATA_MODULES
from .sources import (
    TARGET_PARTITION_BYTES,
    plan_parquet,
    plan_table,
    plan_text,
    table_from_items,
)

Paths = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]



def _warm_workers() -> None:
    """The running shared process pool's workers import DATA_MODULES while the plan is built
    (issue 18; a pool started later for the job imports them as it starts)."""
    from ..engine.preload import preload_running

    preload_running(DATA_MODULES)


def _inputs(plan: Any) -> list[str]:
    """The input files, as URLs on an fsspec filesystem (a sink refuses to write over them)."""
    fs = plan.spec.filesystem
    paths = sorted({p.path for p in plan.partitions if p.path})
    if fs is None:
        return paths
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return [f"{protocol}://{path}" for path in paths]


def _check_on_error(on_error: str) -> None:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


def read_parquet(
    paths: Paths,
    *,
    columns: Sequence[str] | None = None,
    filter: Any = None,
    on_error: str = "raise",
    target_bytes: int = TARGET_PARTITION_BYTES,
) -> Dataset:
    """Parquet files (paths, globs, directories, fsspec URLs), one partition per group of row
    groups up to ``target_bytes``. ``columns`` and ``filter`` (a ``pyarrow.compute``
    expression or DNF tuples like ``[("x", ">", 3)]``) are pushed into the reader.
    ``on_error="skip"`` skips corrupt files / row groups and counts them in ``stats()``."""
    _check_on_error(on_error)
    _warm_workers()
    plan = plan_parquet(paths, columns=columns, filter=filter, on_error=on_error,
                        target_bytes=target_bytes)  # fmt: skip
    return Dataset(plan, inputs=_inputs(plan))


def read_csv(
    paths: Paths,
    *,
    columns: Sequence[str] | None = None,
    filter: Any = None,
    schema: pa.Schema | None = None,
    delimiter: str = ",",
    on_error: str = "raise",
    target_bytes: int = TARGET_PARTITION_BYTES,
) -> Dataset:
    """CSV files with a header line; large files split into byte ranges. Column types are
    inferred from the first block of the first file (pass ``schema=`` to fix them) and
    enforced on every partition. ``on_error="skip"``: rows that do not parse are skipped and
    counted."""
    _check_on_error(on_error)
    _warm_workers()
    plan = plan_text(paths, "csv", columns=columns, filter=filter, on_error=on_error,
                     target_bytes=target_bytes, schema=schema, delimiter=delimiter)  # fmt: skip
    return Dataset(plan, inputs=_inputs(plan))


def read_json(
    paths: Paths,
    *,
    columns: Sequence[str] | None = None,
    filter: Any = None,
    schema: pa.Schema | None = None,
    on_error: str = "raise",
    target_bytes: int = TARGET_PARTITION_BYTES,
) -> Dataset:
    """JSON Lines files (one object per line); large files split into byte ranges. A line that
    is not valid JSON, or has fields outside the schema, is a DataError naming file and line
    (``on_error="skip"``: skipped and counted)."""
    _check_on_error(on_error)
    _warm_workers()
    plan = plan_text(paths, "json", columns=columns, filter=filter, on_error=on_error,
                     target_bytes=target_bytes, schema=schema)  # fmt: skip
    return Dataset(plan, inputs=_inputs(plan))


def from_arrow(table: pa.Table | Sequence[pa.Table], *, partitions: int | None = None) -> Dataset:
    """An in-memory Arrow table (or several, concatenated), split into ``partitions``."""
    if not isinstance(table, pa.Table):
        table = pa.concat_tables(list(table))
    return Dataset(plan_table(table, partitions, TARGET_PARTITION_BYTES))


def from_pandas(df: Any, *, partitions: int | None = None) -> Dataset:
    """A pandas DataFrame (or a list of them); the index is dropped."""
    frames = df if isinstance(df, (list, tuple)) else [df]
    tables = [pa.Table.from_pandas(f, preserve_index=False) for f in frames]
    return from_arrow(tables, partitions=partitions)


def from_items(items: Iterable[Any], *, partitions: int | None = None) -> Dataset:
    """Rows from dicts, or any values as a column named ``item``."""
    return from_arrow(table_from_items(items), partitions=partitions)
