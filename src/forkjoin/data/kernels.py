"""The local kernels of the exchange's reduce side: the join of one bucket and the sort of one
range. Polars where it is installed and measurably faster, pyarrow's Acero otherwise; both give
the same table (columns, names, Arrow types, null semantics, row order of a sort).

Why two: per bucket of bench_shuffle.py's join (250 k x 62 k rows, one thread) Polars' hash join
is ~2-3x faster than Acero's, and its stable one-key sort ~2-3x faster than Acero's. Polars is
optional (``pip install "forkjoin[data]"`` brings it); without it Acero does everything.

Choice: ``FORKJOIN_DATA_KERNEL`` = ``auto`` (default: Polars if importable), ``polars`` (error if
it is missing) or ``arrow``. Tables cross between the two with ``pl.from_arrow`` /
``DataFrame.to_arrow`` (zero-copy for fixed-width columns); the result is cast back to the Arrow
types Acero would have produced. Columns of types Polars does not round-trip exactly
(dictionaries, nested, null-typed, extension types...) and float sort keys holding NaN (Polars
puts NaN first in a descending sort, Arrow last) go to Acero.

In a forkjoin worker Polars gets as many threads as the worker's share of the cores
(``OMP_NUM_THREADS``, set by the engine; 1 otherwise), read once when Polars is first imported.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import BackendUnavailableError

KERNEL_ENV = "FORKJOIN_DATA_KERNEL"
KERNELS = ("auto", "polars", "arrow")

_polars: Any = None


def kernel_name() -> str:
    """``"polars"`` or ``"arrow"``: what the reduce side uses in this process."""
    choice = os.environ.get(KERNEL_ENV, "auto").strip().lower() or "auto"
    if choice not in KERNELS:
        raise ValueError(f"{KERNEL_ENV} must be one of {KERNELS}, got {choice!r}")
    if choice == "arrow":
        return "arrow"
    if polars_module() is not None:
        return "polars"
    if choice == "polars":
        raise BackendUnavailableError(
            f'{KERNEL_ENV}=polars but polars is not installed: pip install "forkjoin[data]" '
            f"(or polars), or set {KERNEL_ENV}=auto"
        )
    return "arrow"


SPLITMIX_SCHEME = "splitmix64-v1"


def hash_scheme() -> str:
    """The row hash that this process's hash exchanges (join, repartition by key, distinct)
    send rows to buckets by: ``"polars-<version>"`` (Polars' ``hash_rows``, native, ~5x faster
    than the numpy one on numbers and ~14x on strings) when the Polars kernel is chosen, else
    ``"splitmix64-v1"`` (numpy; stable forever). Polars promises the same hash only within one
    version, so the version is part of the name: it goes into the plan's identity (a resume
    under another version refuses to mix its buckets with the old output) and into every map
    task (a worker with another version refuses to run it). Read without importing Polars."""
    choice = os.environ.get(KERNEL_ENV, "auto").strip().lower() or "auto"
    if choice == "arrow":
        return SPLITMIX_SCHEME
    version = _installed_polars() if _polars is not False else None
    if version is None:
        kernel_name()  # raises the error that says what to install if polars was asked for
        return SPLITMIX_SCHEME
    return f"polars-{version}"


@functools.lru_cache(maxsize=1)
def _installed_polars() -> str | None:
    if importlib.util.find_spec("polars") is None:
        return None
    return importlib.metadata.version("polars")


def polars_for_scheme(scheme: str) -> Any:
    """The polars module that computes ``scheme``'s hash, or a ``DataError`` when this process
    has another version (the other map tasks of the exchange hash with the scheme's version:
    mixing two would send equal keys to different buckets)."""
    from ..errors import DataError

    pl = polars_module()
    version = scheme.removeprefix("polars-")
    if pl is None or pl.__version__ != version:
        have = f"polars {pl.__version__}" if pl is not None else "no polars"
        raise DataError(
            f"this exchange hashes rows with polars {version} (chosen by the caller) but this "
            f"worker has {have}: install the same polars version on every worker, or set "
            f"{KERNEL_ENV}=arrow for a version-independent hash"
        )
    return pl


def polars_module() -> Any:
    """The polars module, or None. In a worker its thread pool is capped first."""
    global _polars
    if _polars is None:
        if os.environ.get("FORKJOIN_WORKER_DEPTH", "0") != "0":
            os.environ.setdefault("POLARS_MAX_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
        try:
            import polars
        except ImportError:
            _polars = False
        else:
            _polars = polars
    return _polars or None


# Arrow types that go to Polars and come back as the same values (then cast to the same type).
def _round_trips(kind: pa.DataType) -> bool:
    return (
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        and not pa.types.is_float16(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
        or pa.types.is_date32(kind)
        or pa.types.is_timestamp(kind)
        or pa.types.is_duration(kind)
    )


def polars_can(*schemas: pa.Schema) -> bool:
    return all(_round_trips(f.type) for schema in schemas for f in schema)


def back_to_arrow(frame: Any, target: pa.Schema) -> pa.Table:
    table = frame.to_arrow()
    if table.schema.equals(target):
        return table
    return table.cast(target)


# -- join ----------------------------------------------------------------------------------------

_POLARS_HOW = {
    "inner": ("inner", "left"),
    "left": ("left", "left"),
    "right": ("right", "right"),
    "outer": ("full", "left_right"),
    "semi": ("semi", "left"),
    "anti": ("anti", "left"),
}


def polars_join_frame(
    left: pa.Table,
    right: pa.Table,
    left_keys: Sequence[str],
    right_keys: Sequence[str],
    how: str,
    names: Sequence[str],
    coalesce: bool,
) -> tuple[Any, pa.Schema] | None:
    """The join with Polars, columns named ``names`` (left columns, then the right ones, as
    ``JoinSpec.output_names`` says), as a Polars DataFrame and the Arrow schema it stands for
    (``back_to_arrow`` converts it; ``polars_partial`` aggregates it in Polars first); or None
    when Polars cannot give exactly Acero's result."""
    pl = polars_module()
    if (
        pl is None
        or not polars_can(left.schema, right.schema)
        or len(set(names)) != len(names)
        or len(set(right_keys)) != len(right_keys)
    ):
        return None
    semi = how in ("semi", "anti")
    left_names = list(names[: left.num_columns])
    if semi:
        right = right.select(list(right_keys))
    # Rename both sides to their output names first: Polars suffixes only the right side.
    right_out = iter(names[left.num_columns :])
    right_names, join_right_keys = [], list(right_keys)
    for name in right.column_names:
        if (coalesce or semi) and name in right_keys:
            temp = f"__fj_rk{list(right_keys).index(name)}"
            right_names.append(temp)
            join_right_keys[list(right_keys).index(name)] = temp
        else:
            out = next(right_out)
            right_names.append(out)
            if name in right_keys:
                join_right_keys[list(right_keys).index(name)] = out
    join_left_keys = [left_names[left.column_names.index(k)] for k in left_keys]
    # Rechunked: a gathered bucket has a chunk per map task, and Polars joins one contiguous
    # chunk about 2x faster than 12 (47 vs 96 ms for an 833 k x 208 k bench_shuffle bucket).
    lf = pl.from_arrow(left.rename_columns(left_names), rechunk=True)
    rf = pl.from_arrow(right.rename_columns(right_names), rechunk=True)
    polars_how, order = _POLARS_HOW[how]
    joined = lf.join(
        rf,
        left_on=join_left_keys,
        right_on=join_right_keys,
        how=polars_how,
        coalesce=coalesce,
        maintain_order=order,
        nulls_equal=False,  # SQL: a null key matches nothing (polars >= 1.25)
    )
    # A coalesced right join keeps the right side's key names: give them the left ones.
    keep = {r: lk for r, lk in zip(join_right_keys, join_left_keys, strict=True)}
    renames = {r: lk for r, lk in keep.items() if r in joined.columns and lk not in joined.columns}
    if renames:
        joined = joined.rename(renames)
    types = dict(zip(left_names, left.schema.types, strict=True))
    types.update(zip(right_names, right.schema.types, strict=True))
    target = pa.schema([(name, types[name]) for name in names])
    return joined.select(list(names)), target


# -- sort ----------------------------------------------------------------------------------------


def stable_sort(table: pa.Table, sort_keys: Sequence[tuple[str, str]]) -> pa.Table:
    """``table`` sorted by ``sort_keys`` (nulls last, NaN after numbers, ties in input order):
    Polars' stable ``arg_sort_by`` over the key columns only, then Arrow's ``take`` of the whole
    table (no round trip of the other columns through Polars: 19 vs 28 ms for a 250 k-row
    lineitem bucket), when Polars gives the same order; else Acero's ``sort_by``."""
    if table.num_rows < 2:
        return table
    names = [k for k, _ in sort_keys]
    keys = table.select(names)
    if kernel_name() == "polars" and polars_can(keys.schema) and not _has_nan(table, sort_keys):
        pl = polars_module()
        order = pl.from_arrow(keys.rename_columns([f"k{i}" for i in range(len(names))]))
        order = order.select(
            pl.arg_sort_by(
                [f"k{i}" for i in range(len(names))],
                descending=[d == "descending" for _, d in sort_keys],
                nulls_last=True,
                maintain_order=True,
            )
        )
        return table.take(order.to_series().to_arrow())
    return table.sort_by(list(sort_keys))  # Arrow's sort is stable too


def _has_nan(table: pa.Table, sort_keys: Sequence[tuple[str, str]]) -> bool:
    for key, _ in sort_keys:
        column = table.column(key)
        if pa.types.is_floating(column.type) and pc.any(pc.is_nan(column)).as_py():
            return True
    return False


# -- group-by partial aggregate (a join fused with the groupby().agg() after it) ------------------


def _groups_alike(kind: pa.DataType) -> bool:
    """Key types Polars groups exactly as Acero does (not floats: -0.0 and NaN)."""
    return _round_trips(kind) and not pa.types.is_floating(kind)


def _aggregates_alike(fn: str, kind: pa.DataType) -> bool:
    """Whether Polars' ``fn`` over ``kind`` gives Acero's values (then cast to Acero's type):
    sums of integers and doubles, counts of anything, min/max of what has one total order."""
    if fn == "count":
        return True
    if fn == "sum":
        return pa.types.is_integer(kind) or pa.types.is_float64(kind)
    return _groups_alike(kind) and not pa.types.is_boolean(kind)


def polars_partial(
    frame: Any,
    schema: pa.Schema,
    keys: Sequence[str],
    pairs: Sequence[tuple[str, str]],
    target: pa.Schema,
) -> pa.Table | None:
    """``aggregate.partial``'s table of built-in partials for ``frame`` (a Polars DataFrame
    standing for an Arrow table of ``schema``), computed in Polars and typed as ``target``:
    the keys, then ``__p{i}`` = ``fn(column)`` for each ``(column, fn)`` of ``pairs``; rows
    with a null key are dropped. None when Polars might not give Acero's values."""
    pl = polars_module()
    types = dict(zip(schema.names, schema.types, strict=True))
    if (
        pl is None
        or not all(k in types and _groups_alike(types[k]) for k in keys)
        or not all(c in types and _aggregates_alike(fn, types[c]) for c, fn in pairs)
        or len(set(keys)) != len(keys)
    ):
        return None
    valid = [pl.col(k).is_not_null() for k in keys]
    if any(frame[k].null_count() for k in keys):
        frame = frame.filter(*valid)
    exprs = []
    for i, (column, fn) in enumerate(pairs):
        expr = pl.col(column)
        if fn == "sum" and pa.types.is_integer(types[column]):  # Acero sums in 64 bits
            expr = expr.cast(pl.UInt64 if pa.types.is_unsigned_integer(types[column]) else pl.Int64)
        exprs.append(getattr(expr, fn)().alias(f"__p{i}"))
    grouped = frame.group_by(list(keys)).agg(exprs)
    return back_to_arrow(grouped.select(target.names), target)
