"""Sources: find the files, cut them into partitions, and read one partition in a worker.

::

    paths / globs / directories / fsspec URLs          in-memory rows, DataFrames, Tables
       │  discover(): sorted files, hidden and _underscore names skipped   │
       ▼                                                                    ▼
    plan_parquet   row groups grouped up to target_bytes                 slices of ~target_bytes
    plan_text      whole files, or byte ranges of target_bytes (CSV, JSONL)
       │
       ▼
    Partition (small, picklable: path + row groups or byte range, or a table slice)
       │  sent to a worker with the ReadSpec (columns, filter, schema, on_error)
       ▼
    readers.read_partition() -> (pyarrow.Table, ReadCounts)   DataError names file, row group, line

The caller only reads metadata (Parquet footers, CSV headers, the first block of text files to
infer a schema); the data itself is read by the workers.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from ..errors import DataError
from .files import _open, _stat, discover
from .identity import arrow_digest

# Uncompressed bytes per partition: large enough that per-task overhead (~1 ms) is noise next
# to reading and a Python UDF, small enough that workers x in-flight partitions stay well under
# a quarter of memory on a laptop. Chosen from benchmarks/bench_data.py (16-64 MiB were within
# noise; 32 MiB keeps peak RSS lower).
TARGET_PARTITION_BYTES = 32 * 1024 * 1024
# How much of the first text file is read in the caller to infer the schema (CSV, JSONL).
SCHEMA_SAMPLE_BYTES = 1024 * 1024
# At least this many partitions per usable CPU when the data allows (small inputs, in-memory
# sources): a slow UDF then spreads over every worker, and the last partitions to finish leave
# little idle time (with 3 partitions on 2 workers one worker idles a third of the run).
MIN_PARTITIONS_PER_CPU = 4

PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv")
JSON_SUFFIXES = (".jsonl", ".json", ".ndjson", ".jsonl.gz", ".json.gz")


@dataclass(frozen=True, repr=False)
class Partition:
    """One task's worth of input: a file's row groups or byte range, or an in-memory slice."""

    index: int
    kind: str  # "parquet" | "csv" | "json" | "table"
    path: str = ""
    row_groups: tuple[int, ...] = ()
    start: int = 0
    end: int = -1  # byte range [start, end); -1: the whole file
    rows: int | None = None  # known before reading (Parquet metadata, in-memory)
    nbytes: int = 0
    table: pa.Table | None = field(default=None, compare=False, repr=False)
    mtime_ns: int = 0

    def __repr__(self) -> str:
        return f"<partition {self.index}: {self.describe()}>"

    def describe(self) -> str:
        if self.kind == "table":
            return f"in-memory partition {self.index}"
        if self.kind == "parquet":
            return f"{self.path} (row groups {_ranges(self.row_groups)})"
        if self.end >= 0:
            return f"{self.path} (bytes {self.start}-{self.end})"
        return self.path

    def key(self) -> tuple[Any, ...]:
        """What identifies this input for a plan hash: a file's path, range and mtime; an
        in-memory table's content (hashed: the same rows give the same key in every run)."""
        if self.kind == "table":
            assert self.table is not None
            return ("table", self.index, self.table.num_rows, arrow_digest(self.table).hex())
        return (self.kind, self.path, self.row_groups, self.start, self.end, self.mtime_ns)


@dataclass(frozen=True)
class ReadSpec:
    """How every partition of a source is read (shipped with each task; small)."""

    kind: str
    columns: tuple[str, ...] | None = None
    filter: Any = None  # a pyarrow.compute.Expression (pushed into the reader), or None
    schema: pa.Schema | None = None  # the source's schema, enforced on every partition
    on_error: str = "raise"  # "raise" | "skip"
    filesystem: Any = None  # an fsspec filesystem, or None for local paths
    csv_delimiter: str = ","

    def key(self) -> tuple[Any, ...]:
        return (
            self.kind,
            self.columns,
            str(self.filter),
            str(self.schema),
            self.on_error,
            self.csv_delimiter,
        )


@dataclass
class ReadCounts:
    """What reading one partition met: rows read and what ``on_error="skip"`` dropped."""

    rows_read: int = 0
    rows_skipped: int = 0
    files_skipped: int = 0
    problems: list[str] = field(default_factory=list)

    def add(self, other: ReadCounts) -> None:
        self.rows_read += other.rows_read
        self.rows_skipped += other.rows_skipped
        self.files_skipped += other.files_skipped
        self.problems += other.problems[: max(0, 20 - len(self.problems))]


@dataclass
class SourcePlan:
    spec: ReadSpec
    partitions: list[Partition]
    counts: ReadCounts  # problems met while planning (files skipped with on_error="skip")


def _ranges(values: Sequence[int]) -> str:
    if not values:
        return "-"
    if list(values) == list(range(values[0], values[-1] + 1)) and len(values) > 1:
        return f"{values[0]}-{values[-1]}"
    return ",".join(str(v) for v in values)


def skip_or_raise(spec_on_error: str, counts: ReadCounts, message: str, rows: int = 0) -> None:
    if spec_on_error != "skip":
        raise DataError(message)
    counts.files_skipped += 1
    counts.rows_skipped += rows
    if len(counts.problems) < 20:
        counts.problems.append(message)


# -- planning: Parquet ---------------------------------------------------------------------------


def _schema_difference(expected: pa.Schema, got: pa.Schema) -> str:
    exp = {f.name: str(f.type) for f in expected}
    new = {f.name: str(f.type) for f in got}
    parts = []
    missing = [n for n in exp if n not in new]
    extra = [n for n in new if n not in exp]
    changed = [f"{n} {exp[n]} -> {new[n]}" for n in exp if n in new and exp[n] != new[n]]
    if missing:
        parts.append(f"missing columns {missing}")
    if extra:
        parts.append(f"new columns {extra}")
    if changed:
        parts.append("changed types " + ", ".join(changed))
    return "; ".join(parts) or "different column order"


def plan_parquet(
    paths: Any,
    *,
    columns: Sequence[str] | None,
    filter: Any,
    on_error: str,
    target_bytes: int,
) -> SourcePlan:
    import pyarrow.parquet as pq

    fs, files = discover(paths, PARQUET_SUFFIXES)
    counts = ReadCounts()
    partitions: list[Partition] = []
    schema: pa.Schema | None = None
    found: list[tuple[str, int, Any]] = []  # (path, mtime, metadata) of the readable files
    readable: list[tuple[str, int, Any, pa.Schema]] = []
    for path in files:
        _, mtime = _stat(fs, path)
        try:
            with _open(fs, path) as handle:
                meta = pq.ParquetFile(handle).metadata
                file_schema = meta.schema.to_arrow_schema().remove_metadata()
        except (pa.ArrowException, OSError) as exc:
            skip_or_raise(on_error, counts, f"{path}: not a readable Parquet file ({exc})")
            continue
        readable.append((path, mtime, meta, file_schema))
    # The schema is the first file's that has rows. A file without rows cannot conflict with
    # it and is left out when its schema differs: a sink writes one for a partition that a
    # filter emptied, with the columns from before a map_batches that never ran on it.
    reference = ([e for e in readable if e[2].num_rows > 0] or readable)[:1]
    schema = reference[0][3] if reference else None
    for path, mtime, meta, file_schema in readable:
        if not file_schema.equals(schema):
            if meta.num_rows == 0:
                continue
            skip_or_raise(
                on_error,
                counts,
                f"{path}: schema differs from {reference[0][0]}: "
                f"{_schema_difference(schema, file_schema)}",
                meta.num_rows,
            )
            continue
        found.append((path, mtime, meta))
    wanted = set(columns) if columns else None
    sizes = {
        path: [_row_group_bytes(meta.row_group(rg), wanted) for rg in range(meta.num_row_groups)]
        for path, _, meta in found
    }
    target = effective_target(target_bytes, sum(sum(v) for v in sizes.values()))
    for path, mtime, meta in found:
        group: list[int] = []
        group_bytes = group_rows = 0
        for rg in range(meta.num_row_groups):
            # A group closes before a row group that would take it past the target, so
            # partitions stay at most the target (or one row group), and evenly sized.
            if group and group_bytes + sizes[path][rg] > target:
                partitions.append(
                    Partition(
                        len(partitions), "parquet", path, tuple(group), rows=group_rows,
                        nbytes=group_bytes, mtime_ns=mtime,
                    )
                )  # fmt: skip
                group, group_bytes, group_rows = [], 0, 0
            group.append(rg)
            group_bytes += sizes[path][rg]
            group_rows += meta.row_group(rg).num_rows
        if group:
            partitions.append(
                Partition(
                    len(partitions), "parquet", path, tuple(group), rows=group_rows,
                    nbytes=group_bytes, mtime_ns=mtime,
                )
            )  # fmt: skip
        if meta.num_row_groups == 0:
            partitions.append(
                Partition(len(partitions), "parquet", path, (), rows=0, nbytes=0, mtime_ns=mtime)
            )
    if schema is None:
        schema = pa.schema([])
    _check_columns(schema, columns, "read_parquet")
    spec = ReadSpec(
        "parquet",
        tuple(columns) if columns else None,
        _to_expression(filter),
        schema,
        on_error,
        fs,
    )
    return SourcePlan(spec, partitions, counts)


def _row_group_bytes(row_group: Any, columns: set[str] | None) -> int:
    """Uncompressed bytes of a row group's (projected) columns."""
    if columns is None:
        return int(row_group.total_byte_size)
    total = 0
    for i in range(row_group.num_columns):
        chunk = row_group.column(i)
        if chunk.path_in_schema.split(".", 1)[0] in columns:
            total += chunk.total_uncompressed_size
    return total


def effective_target(target_bytes: int, total_bytes: int) -> int:
    """``target_bytes``, made smaller for a small dataset so that every worker gets a share:
    at least MIN_PARTITIONS_PER_CPU partitions per usable CPU when the data allows."""
    from ..machine import usable_cpu_count

    spread = total_bytes // (MIN_PARTITIONS_PER_CPU * usable_cpu_count())
    return max(1, min(target_bytes, spread))


def _check_columns(schema: pa.Schema, columns: Sequence[str] | None, where: str) -> None:
    if columns and len(schema):
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise DataError(f"{where}: no column(s) {missing}; the input has {schema.names}")


def _to_expression(filter: Any) -> Any:
    """A pyarrow.compute.Expression from an expression or DNF tuples [("x", ">", 5), ...]."""
    if filter is None:
        return None
    import pyarrow.compute as pc

    if isinstance(filter, pc.Expression):
        return filter
    import pyarrow.parquet as pq

    return pq.filters_to_expression(filter)


# -- planning: CSV / JSON Lines ------------------------------------------------------------------


def _read_head(fs: Any, path: str, nbytes: int) -> bytes:
    """The first ``nbytes`` of a file, cut back to the last complete line."""
    with _open(fs, path) as handle:
        data = handle.read(nbytes)
        if len(data) == nbytes:
            cut = data.rfind(b"\n")
            data = data[: cut + 1] if cut >= 0 else data + handle.readline()
    return bytes(data)


def _compressed(path: str) -> bool:
    return path.lower().endswith((".gz", ".bz2", ".zst", ".xz"))


def plan_text(
    paths: Any,
    kind: str,
    *,
    columns: Sequence[str] | None,
    filter: Any,
    on_error: str,
    target_bytes: int,
    schema: pa.Schema | None,
    delimiter: str = ",",
) -> SourcePlan:
    fs, files = discover(paths, CSV_SUFFIXES if kind == "csv" else JSON_SUFFIXES)
    counts = ReadCounts()
    partitions: list[Partition] = []
    header: list[str] | None = None
    stats = {path: _stat(fs, path) for path in files}
    target = effective_target(target_bytes, sum(size for size, _ in stats.values()))
    for path in files:
        size, mtime = stats[path]
        if kind == "csv":
            head = _read_head(fs, path, 64 * 1024) if not _compressed(path) else b""
            names = _csv_names(head, delimiter) if head else None
            if names is not None:
                if header is None:
                    header = names
                elif names != header:
                    skip_or_raise(
                        on_error,
                        counts,
                        f"{path}: header {names} differs from {files[0]}'s {header} "
                        f"(schema changed between files)",
                    )
                    continue
        if schema is None and size > 0 and not _compressed(path):
            schema = _infer_schema(fs, path, kind, delimiter)
        if _compressed(path) or size <= target:
            partitions.append(Partition(len(partitions), kind, path, nbytes=size, mtime_ns=mtime))
            continue
        for start in range(0, size, target):
            end = min(size, start + target)
            partitions.append(
                Partition(len(partitions), kind, path, start=start, end=end, nbytes=end - start,
                          mtime_ns=mtime)
            )  # fmt: skip
    if schema is not None:
        _check_columns(schema, columns, f"read_{kind}")
    spec = ReadSpec(
        kind,
        tuple(columns) if columns else None,
        _to_expression(filter),
        schema,
        on_error,
        fs,
        delimiter,
    )
    return SourcePlan(spec, partitions, counts)


def _csv_names(head: bytes, delimiter: str) -> list[str]:
    import csv

    first = head.split(b"\n", 1)[0].decode("utf-8", errors="replace").rstrip("\r")
    return next(csv.reader([first], delimiter=delimiter), [])


def _infer_schema(fs: Any, path: str, kind: str, delimiter: str) -> pa.Schema:
    head = _read_head(fs, path, SCHEMA_SAMPLE_BYTES)
    try:
        if kind == "csv":
            import pyarrow.csv as pcsv

            table = pcsv.read_csv(
                io.BytesIO(head),
                parse_options=pcsv.ParseOptions(delimiter=delimiter, invalid_row_handler=_skip_row),
            )
        else:
            import pyarrow.json as pjson

            try:
                table = pjson.read_json(io.BytesIO(head))
            except pa.ArrowException:
                from .readers import _json_lines_python

                table = _json_lines_python(head, None, path, 0, "skip", ReadCounts())
    except pa.ArrowException as exc:
        raise DataError(f"{path}: cannot infer a schema from its first block: {exc}") from None
    return table.schema


def _skip_row(row: Any) -> str:
    return "skip"


# -- in-memory sources ---------------------------------------------------------------------------


def plan_table(table: pa.Table, partitions: int | None, target_bytes: int) -> SourcePlan:
    from ..machine import usable_cpu_count

    rows = table.num_rows
    if partitions is None:
        by_bytes = -(-table.nbytes // target_bytes) if table.nbytes else 1
        partitions = max(by_bytes, MIN_PARTITIONS_PER_CPU * usable_cpu_count())
    partitions = max(1, min(partitions, rows)) if rows else 1
    out = []
    for i in range(partitions):
        lo, hi = rows * i // partitions, rows * (i + 1) // partitions
        part = table.slice(lo, hi - lo)
        out.append(Partition(i, "table", rows=hi - lo, nbytes=part.nbytes, table=part))
    return SourcePlan(ReadSpec("table", schema=table.schema), out, ReadCounts())


def table_from_items(items: Iterable[Any]) -> pa.Table:
    rows = list(items)
    if rows and all(isinstance(r, dict) for r in rows):
        return pa.Table.from_pylist(rows)
    return pa.table({"item": rows})
