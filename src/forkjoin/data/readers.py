"""Reading one partition, in a worker: Parquet row groups, CSV / JSON Lines byte ranges.

Errors name the file and the row group or line: ``DataError``, or with ``on_error="skip"`` the
bad rows (or row groups) are dropped and counted in ``ReadCounts``. A CSV / JSONL byte range
owns every line that starts inside it, so ranges split anywhere and no line is read twice.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

import pyarrow as pa

from ..errors import BackendUnavailableError, DataError
from .files import _open
from .sources import Partition, ReadCounts, ReadSpec, _compressed

# What a data task imports in a worker: loaded ahead (engine/preload.py) so the first partition
# does not pay for it (~0.4 s per worker, once): a running shared pool imports them while the
# plan is built, a pool that a data job starts imports them as its workers start.
# pandas comes with pyarrow's pandas conversions and batch_format="pandas" (pyarrow imports it
# on the first pa.array/pa.table anyway); forkjoin.data.warmup runs a tiny in-memory Parquet
# round trip so that pyarrow's first-use set-up is done too.
DATA_MODULES = ("pyarrow", "pyarrow.parquet", "pandas", "forkjoin.data.execute",
                "forkjoin.data.warmup")  # fmt: skip

# -- reading one partition (in a worker) ---------------------------------------------------------


def read_partition(part: Partition, spec: ReadSpec) -> tuple[pa.Table, ReadCounts]:
    """Read one partition: columns projected and the filter applied by the reader."""
    if part.kind == "exchange":  # a bucket of an exchange, or a fused broadcast (exchange.py)
        return part.read()  # type: ignore[attr-defined, no-any-return]
    counts = ReadCounts()
    if part.kind == "table":
        assert part.table is not None
        table = part.table
    elif part.kind == "parquet":
        table = _read_parquet(part, spec, counts)
    elif part.kind == "csv":
        table = _read_csv(part, spec, counts)
    else:
        table = _read_json(part, spec, counts)
    counts.rows_read += table.num_rows
    if spec.filter is not None and part.kind != "parquet":
        table = table.filter(spec.filter)
    if spec.kind != "parquet" and spec.columns is not None and part.kind != "table":
        table = table.select(list(spec.columns))
    return table, counts


def _empty(spec: ReadSpec) -> pa.Table:
    schema = spec.schema if spec.schema is not None else pa.schema([])
    table = schema.empty_table()
    if spec.columns is not None and len(schema):
        table = table.select(list(spec.columns))
    return table


def _read_parquet(part: Partition, spec: ReadSpec, counts: ReadCounts) -> pa.Table:
    import pyarrow.parquet as pq

    columns = list(spec.columns) if spec.columns is not None else None
    if spec.filter is not None and columns is not None:
        # The filter may name columns that the projection drops: read them, select after.
        wanted = columns
        columns = list(dict.fromkeys(columns + _expression_fields(spec.filter, spec.schema)))
    else:
        wanted = None
    fast = _read_numbers_with_polars(part, spec)
    if fast is not None:
        return fast
    try:
        with _open(spec.filesystem, part.path) as handle:
            # pre_buffer: the projected columns' byte ranges read in a few coalesced requests
            # rather than one per column chunk and page (half the read time of bench_data's
            # numeric columns here, and fewer round trips on remote storage)
            parquet = pq.ParquetFile(handle, pre_buffer=True)
            # One call for all row groups (one footer read, decoding on Arrow's side); only if
            # that fails are they read one by one, to name (or skip) the bad one.
            try:
                table = parquet.read_row_groups(list(part.row_groups), columns=columns)
            except (pa.ArrowException, OSError):
                table = _row_groups_one_by_one(parquet, part, columns, spec, counts)
    except (pa.ArrowException, OSError) as exc:
        message = f"{part.path}: cannot open ({exc})"
        if spec.on_error != "skip":
            raise DataError(message) from None
        counts.rows_skipped += part.rows or 0
        counts.problems.append(message)
        return _empty(spec)
    if table is None:
        return _empty(spec)
    if spec.filter is not None:
        table = table.filter(spec.filter)
    if wanted is not None:
        table = table.select(wanted)
    return table.replace_schema_metadata(None)


def _plain_number(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_float32(kind) or pa.types.is_float64(kind)


def _read_numbers_with_polars(part: Partition, spec: ReadSpec) -> pa.Table | None:
    """The partition's rows read by Polars' Parquet reader, when the Polars kernel is chosen
    and every projected column is a plain number (no filter, a local file, consecutive row
    groups); else None. Same table as pyarrow's (types cast back to the file's), in ~60% of
    the time on one thread: 24 vs 39 ms for a 1.25 M-row lineitem file of two numeric columns
    in bench_shuffle.py, whose join reads 10 of them on each worker. Strings stay with
    pyarrow (Polars would return views that cost a conversion back). Anything unexpected
    (a corrupt file, a schema that differs from the source's) returns None: pyarrow's path
    then reads it, and reports or skips what is wrong with the file's row groups."""
    if spec.filesystem is not None or spec.filter is not None or spec.columns is None:
        return None
    if spec.schema is None or not part.row_groups or not spec.columns:
        return None
    names = set(spec.schema.names)
    if not all(c in names and _plain_number(spec.schema.field(c).type) for c in spec.columns):
        return None
    groups = list(part.row_groups)
    if groups != list(range(groups[0], groups[-1] + 1)):
        return None
    from .kernels import kernel_name, polars_module

    try:
        if kernel_name() != "polars":
            return None
    except (ValueError, BackendUnavailableError):  # a bad choice: said by the join or sort
        return None
    pl = polars_module()
    import pyarrow.parquet as pq

    columns = list(spec.columns)
    try:
        meta = pq.read_metadata(part.path)
        stored = meta.schema.to_arrow_schema()
        target = pa.schema([stored.field(c) for c in columns])
        if target.types != [spec.schema.field(c).type for c in columns]:
            return None
        offset = sum(meta.row_group(i).num_rows for i in range(groups[0]))
        rows = sum(meta.row_group(i).num_rows for i in groups)
        frame = pl.scan_parquet(part.path, hive_partitioning=False).select(columns)
        table = frame.slice(offset, rows).collect().to_arrow()
    except Exception:  # noqa: BLE001 - any failure: the pyarrow path reads it and says why
        return None
    if table.num_rows != rows or table.column_names != columns:
        return None
    return table if table.schema.equals(target) else table.cast(target)


def _row_groups_one_by_one(parquet: Any, part: Partition, columns: list[str] | None,
                           spec: ReadSpec, counts: ReadCounts) -> pa.Table | None:  # fmt: skip
    tables = []
    for rg in part.row_groups:
        try:
            tables.append(parquet.read_row_group(rg, columns=columns))
        except (pa.ArrowException, OSError) as exc:
            message = f"{part.path}: row group {rg} is corrupt or truncated ({exc})"
            if spec.on_error != "skip":
                raise DataError(message) from None
            counts.rows_skipped += parquet.metadata.row_group(rg).num_rows
            counts.problems.append(message)
    if not tables:
        return None
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def _expression_fields(expression: Any, schema: pa.Schema | None) -> list[str]:
    names = schema.names if schema is not None else []
    text = str(expression)
    return [n for n in names if n in text]


def _range_bytes(part: Partition, spec: ReadSpec) -> tuple[bytes, bytes, int]:
    """(header line or b"", the partition's complete lines, byte offset of its first line).

    A line belongs to the range its first byte falls in: a range starts after the first
    newline at or past ``start - 1`` and ends with the line that contains byte ``end - 1``."""
    with _open(spec.filesystem, part.path) as handle:
        header = handle.readline() if spec.kind == "csv" else b""
        start = part.start
        if start <= len(header):
            start = len(header)
        else:
            handle.seek(start - 1)
            skipped = handle.readline()  # the line started in the previous range, if any
            start = start - 1 + len(skipped)
        if start >= part.end:
            return header, b"", start
        handle.seek(start)
        data = handle.read(part.end - start)
        if data and not data.endswith(b"\n"):
            data += handle.readline()
    return header, data, start


def _line_of(spec: ReadSpec, part: Partition, offset: int) -> int:
    """1-based line number of the line starting at byte ``offset``."""
    lines = 1
    with _open(spec.filesystem, part.path) as handle:
        remaining = offset
        while remaining > 0:
            block = handle.read(min(remaining, 1 << 20))
            if not block:
                break
            lines += block.count(b"\n")
            remaining -= len(block)
    return lines


def _read_csv(part: Partition, spec: ReadSpec, counts: ReadCounts) -> pa.Table:
    import pyarrow.csv as pcsv

    bad: list[tuple[int | None, str]] = []

    def handler(row: Any) -> str:
        bad.append((row.number, row.text))
        return "skip" if spec.on_error == "skip" else "error"

    column_types = {f.name: f.type for f in spec.schema} if spec.schema is not None else None
    convert = pcsv.ConvertOptions(column_types=column_types)
    parse = pcsv.ParseOptions(delimiter=spec.csv_delimiter, invalid_row_handler=handler)
    read = pcsv.ReadOptions(use_threads=False)
    first_line_offset = 0
    try:
        if part.end < 0:
            with _open(spec.filesystem, part.path) as handle:
                source: Any = handle if spec.filesystem is not None else part.path
                if spec.filesystem is None:
                    table = pcsv.read_csv(source, read, parse, convert)
                else:
                    table = pcsv.read_csv(io.BytesIO(handle.read()), read, parse, convert)
        else:
            header, data, first_line_offset = _range_bytes(part, spec)
            if not data:
                return _full_empty(spec)
            table = pcsv.read_csv(io.BytesIO(header + data), read, parse, convert)
    except pa.ArrowException as exc:
        where = part.describe()
        if bad and bad[-1][0] is not None:
            number, text = bad[-1]
            assert number is not None
            line = _data_line(spec, part, first_line_offset, number)
            raise DataError(
                f"{part.path}: line {line}: row does not parse ({exc}): {text[:80]!r}"
            ) from None
        found = re.search(r"Row #(\d+)", str(exc))
        if found:
            line = _data_line(spec, part, first_line_offset, int(found.group(1)))
            where = f"{part.path}: line {line}"
        raise DataError(
            f"{where}: {exc} (column types come from the first block of the first file; "
            f"pass schema= to read_csv to set them)"
        ) from None
    if bad:
        counts.rows_skipped += len(bad)
        for number, text in bad[: 20 - len(counts.problems)]:
            shown = _data_line(spec, part, first_line_offset, number) if number else "?"
            counts.problems.append(f"{part.path}: line {shown} skipped: {text[:80]!r}")
    return table


def _full_empty(spec: ReadSpec) -> pa.Table:
    assert spec.schema is not None
    return spec.schema.empty_table()


def _data_line(spec: ReadSpec, part: Partition, first_line_offset: int, number: int) -> int:
    """File line of pyarrow's row ``number`` (1-based, the header line counted as row 1)."""
    if part.end < 0 or first_line_offset == 0:
        return number
    return _line_of(spec, part, first_line_offset) + number - 2


def _read_json(part: Partition, spec: ReadSpec, counts: ReadCounts) -> pa.Table:
    import pyarrow.json as pjson

    if part.end < 0:
        with _open(spec.filesystem, part.path) as handle:
            if _compressed(part.path) and spec.filesystem is None:
                data = pa.input_stream(part.path, compression="detect").read()
            else:
                data = handle.read()
        offset = 0
    else:
        _, data, offset = _range_bytes(part, spec)
    if not data.strip():
        return _full_empty(spec) if spec.schema is not None else pa.table({})
    parse = pjson.ParseOptions(explicit_schema=spec.schema, unexpected_field_behavior="error")
    try:
        return pjson.read_json(io.BytesIO(data), pjson.ReadOptions(use_threads=False), parse)
    except pa.ArrowException:
        # Find the line at fault (and, with on_error="skip", keep the others) the slow way.
        return _json_lines_python(data, spec.schema, part.path, offset, spec.on_error, counts, spec)


def _json_lines_python(
    data: bytes,
    schema: pa.Schema | None,
    path: str,
    offset: int,
    on_error: str,
    counts: ReadCounts,
    spec: ReadSpec | None = None,
) -> pa.Table:
    rows = []
    first_line: int | None = None
    for number, raw in enumerate(data.split(b"\n")):
        if not raw.strip():
            continue
        problem = ""
        try:
            value = json.loads(raw)
            if not isinstance(value, dict):
                problem = f"expected a JSON object, got {type(value).__name__}"
            elif schema is not None and set(value) - set(schema.names):
                problem = (
                    f"new field(s) {sorted(set(value) - set(schema.names))} not in the schema "
                    f"{schema.names} (schema changed between files?)"
                )
        except ValueError as exc:
            problem = f"not valid JSON ({exc})"
        if problem:
            if first_line is None:
                first_line = 1
                if offset and spec is not None:
                    first_line = _line_of(spec, Partition(0, "json", path), offset)
            line = first_line + number
            message = f"{path}: line {line}: {problem}: {raw[:80]!r}"
            if on_error != "skip":
                raise DataError(message)
            counts.rows_skipped += 1
            if len(counts.problems) < 20:
                counts.problems.append(message)
            continue
        rows.append(value)
    try:
        if schema is None:
            return pa.Table.from_struct_array(pa.array(rows)) if rows else pa.table({})
        return pa.Table.from_pylist(rows, schema=schema)
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise DataError(f"{path}: values do not fit the schema {schema}: {exc}") from None
