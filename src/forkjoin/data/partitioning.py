"""Which bucket each row goes to: by a hash of its key (joins, group-apply, repartition), by the
range its key falls in (global sort), or by a seeded random number (random_shuffle).

The hash must agree between processes, runs and the two sides of a join whose key columns have
different types (int32 on one side, int64 or float64 on the other): numbers are hashed as their
float64 value, dates and timestamps as integers of one unit. Two schemes (``kernels.hash_scheme``,
chosen once by the caller and carried by every map task): Polars' native ``hash_rows`` over
those canonical columns (-0.0/0.0 and every NaN hash alike there too), or, without Polars, a
numpy SplitMix64 with strings by pandas' ``hash_array`` (SipHash with a fixed key; Python's
``hash()`` of a str changes per process).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .kernels import SPLITMIX_SCHEME, polars_for_scheme

_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a cheap, well-mixed 64-bit hash of 64-bit integers."""
    with np.errstate(over="ignore"):
        x = x + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * _MIX1
        x = (x ^ (x >> np.uint64(27))) * _MIX2
        return x ^ (x >> np.uint64(31))


def _column_hash(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    kind = array.type
    if pa.types.is_dictionary(kind):
        array = array.dictionary_decode()
        kind = array.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        floats = array.cast(pa.float64(), safe=False)
        values = (pc.fill_null(floats, 0.0) if floats.null_count else floats).to_numpy()
        if not pa.types.is_integer(kind):  # integers have neither -0.0 nor NaN
            values = values + 0.0  # -0.0 becomes 0.0: equal keys, equal hashes
            values[np.isnan(values)] = np.nan  # one NaN bit pattern
        return _splitmix(values.view(np.uint64))
    if pa.types.is_boolean(kind):
        return _splitmix(
            pc.fill_null(array, False).to_numpy(zero_copy_only=False).astype(np.uint64)
        )
    if pa.types.is_date(kind):
        return _splitmix(
            pc.fill_null(array.cast(pa.date32()).cast(pa.int32()), 0).to_numpy().astype(np.uint64)
        )
    if pa.types.is_timestamp(kind) or pa.types.is_duration(kind) or pa.types.is_time(kind):
        unit_type = (
            pa.timestamp("ns")
            if pa.types.is_timestamp(kind)
            else pa.duration("ns")
            if pa.types.is_duration(kind)
            else pa.time64("ns")
        )
        ints = array.cast(unit_type).cast(pa.int64())
        return _splitmix(pc.fill_null(ints, 0).to_numpy().view(np.uint64))
    import pandas as pd

    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind):
        values = array.to_numpy(zero_copy_only=False)
    else:  # nested or unusual types: hash a canonical text of the value
        values = np.array([repr(v) for v in array.to_pylist()], dtype=object)
    if len(values) and array.null_count:
        values = values.copy()
        values[array.is_null().to_numpy(zero_copy_only=False)] = ""
    hashed: np.ndarray = pd.util.hash_array(values, categorize=False)
    return hashed


def key_nulls(table: pa.Table, keys: Sequence[str]) -> np.ndarray:
    """True where any key column is null (such a row matches nothing in a join)."""
    mask = np.zeros(table.num_rows, dtype=bool)
    for key in keys:
        column = table.column(key)
        if column.null_count:
            mask |= column.is_null().to_numpy(zero_copy_only=False)
    return mask


def hash_buckets(
    table: pa.Table,
    keys: Sequence[str],
    buckets: int,
    spread_nulls: bool = False,
    scheme: str = SPLITMIX_SCHEME,
) -> np.ndarray:
    """Bucket (0..buckets-1) of each row by a hash of its key columns (``scheme``: see
    ``kernels.hash_scheme``). With ``spread_nulls`` rows whose key is null (they match
    nothing) are dealt round-robin instead of all landing in one bucket."""
    if scheme == SPLITMIX_SCHEME:
        out = _splitmix_buckets(table, keys, buckets)
    elif scheme.startswith("polars-"):
        out = _polars_buckets(table, keys, buckets, polars_for_scheme(scheme))
    else:
        raise ValueError(
            f"unknown hash scheme {scheme!r} (this forkjoin knows splitmix64-v1 "
            f"and polars-<version>); was the plan made by another forkjoin?"
        )
    if spread_nulls:
        nulls = key_nulls(table, keys)
        if nulls.any():
            out[nulls] = np.arange(int(nulls.sum())) % buckets
    return out


def _splitmix_buckets(table: pa.Table, keys: Sequence[str], buckets: int) -> np.ndarray:
    combined = np.zeros(0, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for i, key in enumerate(keys):
            hashed = _column_hash(table.column(key))
            # combined * 31 + hashed, where combined starts at 0: the first key skips the sum
            combined = _splitmix(hashed if i == 0 else combined * np.uint64(31) + hashed)
    out: np.ndarray = (combined % np.uint64(buckets)).astype(np.int64)
    return out


def _canonical(column: pa.ChunkedArray) -> pa.ChunkedArray | pa.Array:
    """``column`` as the values that equal keys of either side of a join share: numbers as
    float64, dates as int32 days, times as int64 nanoseconds, strings and binaries as they are,
    anything else as a canonical text."""
    kind = column.type
    if pa.types.is_dictionary(kind):
        column = column.cast(kind.value_type)
        kind = column.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        return column.cast(pa.float64(), safe=False)
    if pa.types.is_boolean(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return column
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return column
    if pa.types.is_date(kind):
        return column.cast(pa.date32()).cast(pa.int32())
    if pa.types.is_timestamp(kind) or pa.types.is_duration(kind) or pa.types.is_time(kind):
        unit = (
            pa.timestamp("ns", kind.tz)
            if pa.types.is_timestamp(kind)
            else pa.duration("ns")
            if pa.types.is_duration(kind)
            else pa.time64("ns")
        )
        return column.cast(unit).cast(pa.int64())
    return pa.array([None if v is None else repr(v) for v in column.to_pylist()], pa.string())


def _polars_buckets(table: pa.Table, keys: Sequence[str], buckets: int, pl: Any) -> np.ndarray:
    canonical = pa.table({f"k{i}": _canonical(table.column(k)) for i, k in enumerate(keys)})
    hashed = pl.from_arrow(canonical, rechunk=False).hash_rows(seed=0x5EED).to_numpy()
    # Lemire's multiply-shift instead of a modulo: the high 32 bits scaled to [0, buckets)
    # (half the cost of `%`, and of Polars' cast + copy back to numpy).
    high = hashed >> np.uint64(32)
    out: np.ndarray = (high * np.uint64(buckets)) >> np.uint64(32)
    return out.astype(np.uint16 if buckets <= 1 << 16 else np.int64)


def random_keys(seed: int, partition: int, rows: int) -> np.ndarray:
    """A reproducible random 64-bit number per row, from (seed, partition, row): the same
    whatever the number of workers, and independent of other partitions."""
    rng = np.random.default_rng([seed, partition])
    keys: np.ndarray = rng.integers(0, 2**63 - 1, size=rows, dtype=np.int64)
    return keys


def split_by_bucket(table: pa.Table, bucket_of_row: np.ndarray, buckets: int) -> list[pa.Table]:
    """``table`` cut into ``buckets`` tables (rows keep their relative order): one stable
    argsort and one take, then zero-copy slices. The bucket numbers are narrowed to 16 bits
    first, where numpy's stable argsort is a radix sort: O(rows), ~30x faster than sorting
    int64 (it was the largest cost of a join's map side)."""
    if buckets == 1:
        return [table]
    narrow = np.uint8 if buckets <= 256 else np.uint16 if buckets <= 65536 else np.int64
    order = np.argsort(bucket_of_row.astype(narrow, copy=False), kind="stable")
    counts = np.bincount(bucket_of_row, minlength=buckets)
    taken = table.take(pa.array(order)) if table.num_rows else table
    out, start = [], 0
    for count in counts.tolist():
        out.append(taken.slice(start, count))
        start += count
    return out


# -- ranges (global sort, group-apply) ----------------------------------------------------------

MARKER = "__fj_boundary"


def split_by_ranges(
    table: pa.Table, sort_keys: list[tuple[str, str]], boundaries: pa.Table
) -> list[pa.Table]:
    """``table`` sorted by ``sort_keys`` and cut at ``boundaries`` (sorted rows of the key
    columns; bucket i takes rows <= boundary i, the last bucket the rest). The cut is found by
    sorting the boundary rows in with the data (Acero's sort, so nulls, descending keys and
    ties follow exactly the order the reduce side sorts by): a row's bucket is the number of
    boundary rows before it."""
    names = [k for k, _ in sort_keys]
    keyed = table.select(names).append_column(MARKER, pa.array(np.zeros(table.num_rows, np.int8)))
    marks = boundaries.select(names).cast(keyed.select(names).schema, safe=False)
    marks = marks.append_column(MARKER, pa.array(np.ones(marks.num_rows, np.int8)))
    both = pa.concat_tables([keyed, marks], promote_options="permissive")
    order = pc.sort_indices(both, sort_keys=[*sort_keys, (MARKER, "ascending")])
    is_mark = pc.take(both.column(MARKER), order).to_numpy().astype(bool)
    order_np = order.to_numpy()
    data_rows = order_np[~is_mark]
    bucket_of_sorted = np.cumsum(is_mark)[~is_mark]
    counts = np.bincount(bucket_of_sorted, minlength=boundaries.num_rows + 1)
    taken = table.take(pa.array(data_rows))
    out, start = [], 0
    for count in counts.tolist():
        out.append(taken.slice(start, count))
        start += count
    return out


def choose_boundaries(
    samples: pa.Table, sort_keys: list[tuple[str, str]], buckets: int
) -> pa.Table:
    """``buckets - 1`` rows at even quantiles of the sorted samples."""
    if buckets <= 1 or samples.num_rows == 0:
        return samples.slice(0, 0)
    ordered = samples.sort_by(sort_keys)
    picks = [
        min(ordered.num_rows - 1, (i * ordered.num_rows) // buckets) for i in range(1, buckets)
    ]
    return ordered.take(pa.array(picks, type=pa.int64()))


# Up to this many boundaries a row's range is the count of boundaries before it, one vectorised
# comparison per boundary (uint8 counts): 10 ms instead of np.searchsorted's 37 ms for 1.25 M
# floats and 40 boundaries (a binary search over unsorted values mispredicts every branch).
COMPARE_MAX_EDGES = 64


def _count_edges_before(values: np.ndarray, edges: np.ndarray, descending: bool) -> np.ndarray:
    """Bucket of each value: ascending, the number of edges < value (bucket i holds values
    <= edges[i]); descending, the number of edges > value (bucket i holds values >= edges[i]).
    NaN compares false: the caller sends it to the last bucket."""
    if len(edges) > COMPARE_MAX_EDGES:
        if descending:
            out = len(edges) - np.searchsorted(edges[::-1], values, side="right")
        else:
            out = np.searchsorted(edges, values, side="left")
        return out.astype(np.int64)
    counts = np.zeros(len(values), dtype=np.uint8)
    for edge in edges:
        np.add(counts, (values < edge) if descending else (values > edge), out=counts,
               casting="unsafe")  # fmt: skip
    return counts


def searchsorted_buckets(
    column: pa.ChunkedArray, direction: str, bounds: pa.Array
) -> np.ndarray | None:
    """Each row's range by a binary search over the boundaries of the first sort key, when that
    key is numeric and its boundary values are strictly ordered (no sort needed on the map
    side); None otherwise (split_by_ranges then sorts). Every row of one key value lands in one
    bucket, which is all a global sort or a group-apply needs; the position tie-breaker in
    split_by_ranges is only there to cut a key that fills several buckets."""
    kind = column.type
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_date(kind)):
        return None
    if bounds.null_count or len(bounds) == 0:
        return None
    physical = pa.int64() if pa.types.is_date(kind) else kind
    if pa.types.is_date(kind):
        column = column.cast(pa.date32()).cast(pa.int32())
        bounds = bounds.cast(pa.date32()).cast(pa.int32())
    edges = bounds.cast(physical if not pa.types.is_date(kind) else pa.int32()).to_numpy()
    steps = np.diff(edges)
    descending = direction == "descending"
    if not (np.all(steps < 0) if descending else np.all(steps > 0)):
        return None
    array = column.combine_chunks()
    nulls = array.is_null().to_numpy(zero_copy_only=False) if array.null_count else None
    values = pc.fill_null(array, 0).to_numpy() if nulls is not None else array.to_numpy()
    out = _count_edges_before(values, edges, descending)
    if pa.types.is_floating(kind):
        out[np.isnan(values)] = len(edges)  # NaN sorts after every number, either direction
    if nulls is not None:
        out[nulls] = len(edges)  # nulls last
    return out
