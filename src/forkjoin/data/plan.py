"""The lazy plan: operations recorded by a Dataset, fused into one task per partition.

::

    Dataset.map_batches(f).filter(p).select_columns([...]).groupby("k").agg(...).map(g)
       │
       ▼  split_stages(): row-wise operations fuse; a barrier (repartition, sort, limit,
       │  groupby) ends a stage and its result feeds the next one
    stage 1: [MapBatches(f), Filter(p), Select]  + barrier GroupByAgg   (one task per partition)
    stage 2: [Map(g)]                                                   (one task per partition)

Row-wise operations are applied to a partition's Arrow table in order, in the worker
(``apply_ops``); nothing is materialised between them. Each operation checks what a user
function returns and names itself and what it expected when that is wrong.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from .identity import fingerprint

BATCH_FORMATS = ("pyarrow", "pandas", "numpy")
# Marks, inside an operation's key, a reason its identity is unsure ("\0unsure:why\0").
_UNSURE = "\0unsure:"
_UNSURE_REASONS = re.compile("\0unsure:([^\0]*)\0")


def describe_function(fn: Any) -> str:
    """A stable text for a function (or callable object, class, partial), for plan hashes: its
    name and a fingerprint of everything its output depends on (code, defaults, closure,
    globals, helpers, instance state; see ``identity``). Where the fingerprint cannot be sure,
    the text carries the reasons, which ``plan_identity`` collects."""
    return describe_value(fn, function_name(fn))


def describe_value(value: Any, name: str) -> str:
    """``describe_function`` for any value a plan holds (keyword arguments, constructor args)."""
    found = fingerprint(value, name)
    return f"{name}#{found.digest}" + "".join(f"{_UNSURE}{why}\0" for why in found.unsure)


def function_name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


# -- batches in and out --------------------------------------------------------------------------


def to_format(table: pa.Table, batch_format: str) -> Any:
    if batch_format == "pyarrow":
        return table
    if batch_format == "pandas":
        return table.to_pandas()
    return {name: column.to_numpy(zero_copy_only=False) for name, column in
            zip(table.column_names, table.columns, strict=True)}  # fmt: skip


def from_batch(value: Any, where: str) -> pa.Table:
    """A user function's batch result as an Arrow table, or an error naming ``where``."""
    if isinstance(value, pa.Table):
        return value
    if isinstance(value, pa.RecordBatch):
        return pa.Table.from_batches([value])
    module = type(value).__module__
    if module.startswith("pandas") and hasattr(value, "columns"):
        return pa.Table.from_pandas(value, preserve_index=False)
    if isinstance(value, dict):
        lengths = {name: _length(column) for name, column in value.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(
                f"{where} returned columns of different lengths {lengths}; every column of a "
                f"batch must have the same number of rows"
            )
        try:
            return pa.table({name: _to_array(column) for name, column in value.items()})
        except (pa.ArrowException, TypeError) as exc:
            raise TypeError(
                f"{where} returned a dict whose columns Arrow cannot hold: {exc}"
            ) from None
    raise TypeError(
        f"{where} returned {type(value).__name__}; expected a pyarrow.Table, a "
        f"pandas.DataFrame or a dict of column name -> array"
    )


def _length(column: Any) -> int:
    try:
        return len(column)
    except TypeError:
        return -1


def _to_array(column: Any) -> Any:
    if isinstance(column, (pa.Array, pa.ChunkedArray)):
        return column
    if getattr(column, "ndim", 1) > 1:
        return pa.array(list(column))  # a 2-D array becomes a list column, one row per row
    return pa.array(column)


def rows_to_table(rows: list[Any], where: str, schema: pa.Schema | None = None) -> pa.Table:
    for row in rows:
        if not isinstance(row, dict):
            raise TypeError(f"{where} returned {type(row).__name__}; expected a dict (one row)")
    if not rows:
        return schema.empty_table() if schema is not None else pa.table({})
    try:
        return pa.Table.from_struct_array(pa.array(rows))
    except (pa.ArrowException, TypeError) as exc:
        raise TypeError(f"{where} returned rows that Arrow cannot hold: {exc}") from None


# -- operations ----------------------------------------------------------------------------------


class Op:
    """One recorded operation. Row-wise ones implement ``apply``; barriers do not."""

    barrier = False
    name = "op"

    def apply(self, table: pa.Table) -> pa.Table:
        raise NotImplementedError

    def key(self) -> str:
        return self.name


def check_batching(batch_size: int | None, batch_format: str) -> None:
    """map_batches' batch options (plain and stage, stages.py), refused at plan time."""
    if batch_format not in BATCH_FORMATS:
        raise ValueError(f"batch_format must be one of {BATCH_FORMATS}, got {batch_format!r}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")


def map_in_batches(
    table: pa.Table,
    fn: Callable[..., Any],
    batch_size: int | None,
    batch_format: str,
    fn_kwargs: dict[str, Any],
    where: str,
) -> pa.Table:
    """``fn`` on each ``batch_size`` slice of ``table`` in ``batch_format``, outputs joined
    (zero-copy); an empty partition is passed through: ``fn`` never sees an empty batch."""
    if table.num_rows == 0:
        return table
    size = batch_size or table.num_rows
    outputs = [
        from_batch(fn(to_format(table.slice(lo, size), batch_format), **fn_kwargs), where)
        for lo in range(0, table.num_rows, size)
    ]
    return concat(outputs)


@dataclass
class MapBatches(Op):
    fn: Callable[..., Any]
    batch_size: int | None = 4096
    batch_format: str = "pyarrow"
    fn_kwargs: dict[str, Any] = field(default_factory=dict)
    name = "map_batches"

    def __post_init__(self) -> None:
        check_batching(self.batch_size, self.batch_format)

    def apply(self, table: pa.Table) -> pa.Table:
        where = f"map_batches({function_name(self.fn)})"
        return map_in_batches(table, self.fn, self.batch_size, self.batch_format,
                              self.fn_kwargs, where)  # fmt: skip

    def key(self) -> str:
        kwargs = describe_value(dict(sorted(self.fn_kwargs.items())), "fn_kwargs")
        fn = describe_function(self.fn)
        return f"map_batches({fn},{self.batch_size},{self.batch_format},{kwargs})"


@dataclass
class MapRows(Op):
    fn: Callable[[dict[str, Any]], Any]
    flat: bool = False

    @property
    def name(self) -> str:  # type: ignore[override]
        return "flat_map" if self.flat else "map"

    def apply(self, table: pa.Table) -> pa.Table:
        where = f"{self.name}({function_name(self.fn)})"
        if self.flat:
            rows: list[Any] = []
            for row in table.to_pylist():
                produced = self.fn(row)
                if isinstance(produced, dict) or not isinstance(produced, Iterable):
                    raise TypeError(
                        f"{where} returned {type(produced).__name__}; expected a list (or other "
                        f"iterable) of dicts"
                    )
                rows.extend(produced)
        else:
            rows = [self.fn(row) for row in table.to_pylist()]
        return rows_to_table(rows, where)

    def key(self) -> str:
        return f"{self.name}({describe_function(self.fn)})"


@dataclass
class Filter(Op):
    fn: Callable[[dict[str, Any]], Any] | None = None
    expr: Any = None  # a pyarrow.compute.Expression
    name = "filter"

    def apply(self, table: pa.Table) -> pa.Table:
        if self.expr is not None:
            return table.filter(self.expr)
        assert self.fn is not None
        mask = [bool(self.fn(row)) for row in table.to_pylist()]
        return table.filter(pa.array(mask, type=pa.bool_())) if mask else table

    def key(self) -> str:
        return f"filter({describe_function(self.fn) if self.fn else str(self.expr)})"


@dataclass
class SelectColumns(Op):
    columns: list[str]
    name = "select_columns"

    def apply(self, table: pa.Table) -> pa.Table:
        missing = [c for c in self.columns if c not in table.column_names]
        if missing:
            raise KeyError(
                f"select_columns: no column(s) {missing}; the data has {table.column_names}"
            )
        return table.select(self.columns)

    def key(self) -> str:
        return f"select_columns({self.columns})"


@dataclass
class RenameColumns(Op):
    mapping: dict[str, str]
    name = "rename_columns"

    def apply(self, table: pa.Table) -> pa.Table:
        missing = [c for c in self.mapping if c not in table.column_names]
        if missing:
            raise KeyError(
                f"rename_columns: no column(s) {missing}; the data has {table.column_names}"
            )
        return table.rename_columns([self.mapping.get(c, c) for c in table.column_names])

    def key(self) -> str:
        return f"rename_columns({sorted(self.mapping.items())})"


@dataclass
class AddColumn(Op):
    column: str
    fn: Callable[[Any], Any]
    batch_format: str = "pandas"
    name = "add_column"

    def apply(self, table: pa.Table) -> pa.Table:
        where = f"add_column({self.column!r}, {function_name(self.fn)})"
        values = self.fn(to_format(table, self.batch_format))
        if hasattr(values, "to_numpy") and not isinstance(values, (pa.Array, pa.ChunkedArray)):
            values = values.to_numpy()  # a pandas Series: its values, not its index
        if _length(values) != table.num_rows:
            raise ValueError(
                f"{where} returned {_length(values)} values for a batch of {table.num_rows} rows; "
                f"expected one value per row"
            )
        array = _to_array(values)
        if self.column in table.column_names:
            return table.set_column(table.column_names.index(self.column), self.column, array)
        return table.append_column(self.column, array)

    def key(self) -> str:
        return f"add_column({self.column},{describe_function(self.fn)},{self.batch_format})"


@dataclass
class Limit(Op):
    """Row-wise within a partition (no partition needs more than ``n`` rows) and a barrier
    across partitions (the first ``n`` rows in order)."""

    n: int
    name = "limit"
    barrier = True

    def apply(self, table: pa.Table) -> pa.Table:
        return table.slice(0, self.n)

    def key(self) -> str:
        return f"limit({self.n})"


@dataclass
class Repartition(Op):
    partitions: int
    name = "repartition"
    barrier = True

    def key(self) -> str:
        return f"repartition({self.partitions})"


@dataclass
class Sort(Op):
    keys: list[tuple[str, str]]  # (column, "ascending" | "descending")
    name = "sort"
    barrier = True

    def key(self) -> str:
        return f"sort({self.keys})"


@dataclass
class GroupByAgg(Op):
    keys: list[str]
    aggs: Any  # aggregate.AggSpec
    name = "groupby"
    barrier = True

    def key(self) -> str:
        return f"groupby({self.keys},{self.aggs.key()})"


def concat(tables: Sequence[pa.Table]) -> pa.Table:
    if len(tables) == 1:
        return tables[0]
    try:
        return pa.concat_tables(tables)
    except pa.ArrowInvalid:
        return pa.concat_tables(tables, promote_options="permissive")


def apply_ops(table: pa.Table, ops: Sequence[Op]) -> pa.Table:
    for op in ops:
        table = op.apply(table)
    return table


@dataclass
class Stage:
    """Row-wise operations fused into one task per partition, ended by a barrier (or None)."""

    ops: list[Op]
    barrier: Op | None


def split_stages(ops: Sequence[Op]) -> Iterator[Stage]:
    current: list[Op] = []
    for op in ops:
        if op.barrier:
            if isinstance(op, Limit):
                current.append(op)  # each partition keeps at most n rows before the barrier
            yield Stage(current, op)
            current = []
        else:
            current.append(op)
    yield Stage(current, None)


@dataclass(frozen=True)
class PlanIdentity:
    """What a sink's output depends on: ``digest`` changes whenever the output may change;
    ``parts`` names each piece (the input, each operation) with its own digest, so a refusal
    can say which one changed; ``unsure`` says why the digest cannot be trusted, if it cannot."""

    digest: str
    parts: tuple[tuple[str, str], ...] = ()
    unsure: tuple[str, ...] = ()


def plan_identity(source_keys: Iterable[Any], ops: Sequence[Op], extra: str = "") -> PlanIdentity:
    source = hashlib.sha256()
    for key in source_keys:
        source.update(repr(key).encode())
    parts = [("input", source.hexdigest()[:16])]
    unsure: list[str] = []
    for number, op in enumerate(ops, 1):
        key = op.key()
        unsure += _UNSURE_REASONS.findall(key)
        shown = _UNSURE_REASONS.sub("", key)
        shown = f"{shown.split('#')[0]})" if "#" in shown else shown
        label = f"operation {number}: {shown[:80]}"
        parts.append((label, hashlib.sha256(key.encode()).hexdigest()[:16]))
    parts.append(("output options", hashlib.sha256(extra.encode()).hexdigest()[:16]))
    digest = hashlib.sha256("".join(f"{k}={v};" for k, v in parts).encode()).hexdigest()[:16]
    return PlanIdentity(digest, tuple(parts), tuple(dict.fromkeys(unsure)))


def plan_hash(source_keys: Iterable[Any], ops: Sequence[Op], extra: str = "") -> str:
    return plan_identity(source_keys, ops, extra).digest
