"""Group-by aggregation as partial aggregates per partition, merged in the caller.

::

    partition 0 ──> partial(): group_by(keys): sum, count, min, max; Reducer.chunk ──┐
    partition 1 ──> partial()                                                     ├─> merge()
    ...                                                                           │
    partition n ──> partial()                                                     ┘
    merge(): sums of sums, min of mins, mean = sum / count, Reducer.merge, finalize

Workers send back one small table per partition (a row per group), never the rows themselves.
Results match ``pandas.DataFrame.groupby(keys).agg(...)``: rows with a null key are dropped,
groups come sorted by key, ``sum`` of an empty group is 0, ``count`` counts non-null values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from .plan import describe_function

BUILTIN = ("sum", "count", "mean", "min", "max")
# What each built-in needs computed per partition, and how partials are merged.
_PARTIALS = {"sum": ("sum",), "count": ("count",), "mean": ("sum", "count"), "min": ("min",),
             "max": ("max",)}  # fmt: skip
_MERGE = {"sum": "sum", "count": "sum", "min": "min", "max": "max"}


@dataclass(frozen=True)
class Reducer:
    """A custom aggregation: ``chunk(values)`` turns one group's values in one partition (a
    list) into a partial result, ``merge(a, b)`` combines two partials, ``finalize(partial)``
    gives the group's value (identity when omitted). Like Dask's ``Aggregation``."""

    chunk: Callable[[list[Any]], Any]
    merge: Callable[[Any, Any], Any]
    finalize: Callable[[Any], Any] | None = None
    name: str = "custom"

    def key(self) -> str:
        parts = (self.chunk, self.merge, self.finalize)
        return f"Reducer({self.name}," + ",".join(describe_function(f) for f in parts if f) + ")"


@dataclass(frozen=True)
class AggSpec:
    """The output columns: (output name, input column, "sum"|... or a Reducer)."""

    outputs: tuple[tuple[str, str, Any], ...]

    @classmethod
    def parse(cls, spec: Mapping[str, Any] | None, named: Mapping[str, Any]) -> AggSpec:
        """``{"x": "sum", "y": ["min", "max"], "z": Reducer(...)}`` (pandas' dict form: a single
        aggregation keeps the column's name, a list names them ``y_min``, ``y_max``) and/or
        named aggregations ``total=("x", "sum")``."""
        outputs: list[tuple[str, str, Any]] = []
        for column, how in (spec or {}).items():
            if isinstance(how, (list, tuple)):
                for one in how:
                    outputs.append((f"{column}_{_agg_name(one)}", column, _check(one)))
            else:
                outputs.append((column, column, _check(how)))
        for out, pair in named.items():
            if not (isinstance(pair, tuple) and len(pair) == 2):
                raise TypeError(
                    f"named aggregation {out}= must be (column, aggregation), got {pair!r}"
                )
            outputs.append((out, pair[0], _check(pair[1])))
        if not outputs:
            raise ValueError("agg() needs at least one aggregation, e.g. agg({'x': 'sum'})")
        names = [o[0] for o in outputs]
        if len(set(names)) != len(names):
            raise ValueError(f"agg() would produce duplicate output columns {names}")
        return cls(tuple(outputs))

    def columns(self) -> list[str]:
        return list(dict.fromkeys(column for _, column, _ in self.outputs))

    def partial_columns(self) -> list[tuple[str, str]]:
        """Unique (column, built-in partial) pairs, in a fixed order."""
        pairs: list[tuple[str, str]] = []
        for _, column, how in self.outputs:
            if isinstance(how, str):
                pairs += [(column, p) for p in _PARTIALS[how] if (column, p) not in pairs]
        return pairs

    def key(self) -> str:
        return repr([(o, c, h if isinstance(h, str) else h.key()) for o, c, h in self.outputs])


def _agg_name(how: Any) -> str:
    return how if isinstance(how, str) else getattr(how, "name", "custom")


def _check(how: Any) -> Any:
    if isinstance(how, Reducer) or how in BUILTIN:
        return how
    raise ValueError(f"unknown aggregation {how!r}; use one of {BUILTIN} or a Reducer(...)")


@dataclass
class Partial:
    """One partition's aggregates: built-ins as a table, custom reducers as a dict by key."""

    table: pa.Table
    custom: dict[tuple[Any, ...], list[Any]]


def _options(fn: str) -> Any:
    import pyarrow.compute as pc

    if fn == "sum":
        return pc.ScalarAggregateOptions(min_count=0)
    if fn == "count":
        return pc.CountOptions(mode="only_valid")
    return None


def _drop_null_keys(table: pa.Table, keys: Sequence[str]) -> pa.Table:
    import pyarrow.compute as pc

    for key in keys:
        if table.column(key).null_count:
            table = table.filter(pc.is_valid(table.column(key)))
    return table


def partial(table: pa.Table, keys: Sequence[str], spec: AggSpec) -> Partial:
    """Aggregates of one partition (runs in a worker)."""
    missing = [c for c in [*keys, *spec.columns()] if c not in table.column_names]
    if missing and table.num_rows:
        raise KeyError(f"groupby: no column(s) {missing}; the data has {table.column_names}")
    if missing:  # an empty partition without the columns: contributes nothing
        return Partial(pa.table({}), {})
    table = _drop_null_keys(table, keys)
    pairs = spec.partial_columns()
    renamed = {f"__p{i}": table.column(col) for i, (col, _) in enumerate(pairs)}
    work = pa.table({**{k: table.column(k) for k in keys}, **renamed})
    aggs = [(f"__p{i}", fn, _options(fn)) for i, (_, fn) in enumerate(pairs)]
    built = work.group_by(list(keys), use_threads=False).aggregate(aggs)
    built = built.rename_columns(
        [c if not c.startswith("__p") else c.rsplit("_", 1)[0] for c in built.column_names]
    )
    custom: dict[tuple[Any, ...], list[Any]] = {}
    reducers = [(col, how) for _, col, how in spec.outputs if isinstance(how, Reducer)]
    if reducers:
        lists = table.group_by(list(keys), use_threads=False).aggregate(
            [(col, "list") for col, _ in reducers]
        )
        key_rows = zip(*(lists.column(k).to_pylist() for k in keys), strict=True)
        value_columns = [lists.column(f"{col}_list").to_pylist() for col, _ in reducers]
        for i, key in enumerate(key_rows):
            custom[key] = [how.chunk(values[i]) for (_, how), values in
                           zip(reducers, value_columns, strict=True)]  # fmt: skip
    return Partial(built, custom)


def partial_of_polars(frame: Any, schema: pa.Schema, keys: Sequence[str],
                      spec: AggSpec) -> Partial | None:  # fmt: skip
    """``partial`` of a Polars DataFrame (standing for an Arrow table of ``schema``) computed in
    Polars, with the same table as ``partial`` would give; None where it cannot (custom
    reducers, a missing column, types Polars might aggregate differently): then convert and
    call ``partial``."""
    from .kernels import polars_partial

    names = set(schema.names)
    if any(isinstance(how, Reducer) for _, _, how in spec.outputs) or not all(
        c in names for c in [*keys, *spec.columns()]
    ):
        return None
    target = partial(schema.empty_table(), keys, spec).table.schema  # Acero's output types
    table = polars_partial(frame, schema, keys, spec.partial_columns(), target)
    return None if table is None else Partial(table, {})


def merge(partials: Sequence[Partial], keys: Sequence[str], spec: AggSpec,
          schema: pa.Schema | None = None) -> pa.Table:  # fmt: skip
    """Merge the partitions' partials into the final table, sorted by key (in the caller)."""
    import pyarrow.compute as pc

    pairs = spec.partial_columns()
    tables = [p.table for p in partials if p.table.num_columns]
    if tables:
        stacked = pa.concat_tables(tables, promote_options="permissive")
        aggs = [(f"__p{i}", _MERGE[fn], _options(_MERGE[fn])) for i, (_, fn) in enumerate(pairs)]
        merged = stacked.group_by(list(keys), use_threads=False).aggregate(aggs)
        merged = merged.rename_columns(
            [c if not c.startswith("__p") else c.rsplit("_", 1)[0] for c in merged.column_names]
        )
    else:
        merged = pa.table(
            {
                **{k: pa.array([], type=_key_type(schema, k)) for k in keys},
                **{f"__p{i}": pa.array([], type=pa.int64()) for i in range(len(pairs))},
            }
        )
    custom: dict[tuple[Any, ...], list[Any]] = {}
    reducers = [how for _, _, how in spec.outputs if isinstance(how, Reducer)]
    for part in partials:
        for key, values in part.custom.items():
            if key in custom:
                custom[key] = [
                    r.merge(a, b) for r, a, b in zip(reducers, custom[key], values, strict=True)
                ]
            else:
                custom[key] = list(values)
    if not merged.num_rows and custom:
        merged = pa.Table.from_pylist([dict(zip(keys, k, strict=True)) for k in custom])
    merged = merged.sort_by([(k, "ascending") for k in keys])
    index = {name: i for i, name in enumerate(merged.column_names)}
    out: dict[str, Any] = {k: merged.column(k) for k in keys}
    key_rows = list(zip(*(merged.column(k).to_pylist() for k in keys), strict=True))
    reducer_position = 0
    for name, column, how in spec.outputs:
        if isinstance(how, Reducer):
            r = reducer_position
            values = [custom[k][r] if k in custom else None for k in key_rows]
            if how.finalize is not None:
                values = [how.finalize(v) if v is not None else None for v in values]
            out[name] = pa.array(values)
            reducer_position += 1
            continue

        def col(fn: str, column: str = column) -> Any:
            return merged.column(index[f"__p{pairs.index((column, fn))}"])

        if how == "mean":
            total = pc.cast(col("sum"), pa.float64())
            count = col("count")
            out[name] = pc.if_else(
                pc.equal(count, 0), None, pc.divide(total, pc.cast(count, pa.float64()))
            )
        else:
            out[name] = col(how)
    return pa.table(out)


def _key_type(schema: pa.Schema | None, key: str) -> pa.DataType:
    if schema is not None and key in schema.names:
        return schema.field(key).type
    return pa.null()
