"""Range exchanges: a global ``sort`` that never collects, and ``groupby().map_groups()``.

::

    1. sample   each input partition (read, fused ops) sends back ~SAMPLE_ROWS_PER_PARTITION
                rows of its keys and their positions. Cheap inputs (files, in-memory slices, no
                user function before the sort) are read again with only the key columns;
                otherwise the processed partition is kept (spilled) so no function runs twice.
    2. boundaries  N-1 rows at even quantiles of the samples, in the caller
    3. map      each partition sorted and cut at the boundaries (partitioning.split_by_ranges)
    4. reduce   bucket i sorted (kernels.stable_sort: Polars or Acero) or cut into groups and
                given to fn (map_groups); buckets come out in key order, so the output
                partitions are in order.

The sort is stable: ties keep their input order. On the map side every row carries its position
(partition, row) as the last sort key, which splits a key that fills half the data across as
many buckets as its rows need, so a skewed key finishes in bounded memory. The positions are not
shipped: a bucket's pieces are read in partition order, each in row order, so a stable sort by
the keys alone puts ties in input order. ``map_groups``
must keep a group in one bucket, so it cuts by key only; one group must fit a worker.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .exchange import (
    EXCHANGE_SPEC,
    POSITION_PART,
    POSITION_ROW,
    BucketInput,
    BucketPartition,
    ExchangeOp,
    ExchangeScope,
    MapOutput,
    MapTask,
    bucket_partitions,
    choose_buckets,
    drop_positions,
    estimate_bytes,
    with_positions,
)
from .kernels import stable_sort
from .partitioning import (
    choose_boundaries,
    key_nulls,
    searchsorted_buckets,
    split_by_bucket,
    split_by_ranges,
)
from .plan import BATCH_FORMATS, Op, concat, describe_function, from_batch, function_name
from .plan import to_format as _to_format
from .shuffle import check_columns, concat_reduce
from .sources import Partition, ReadSpec

# Rows of keys each input partition contributes to choosing the range boundaries: with about as
# many buckets as partitions, ~200 samples per bucket keep buckets within ~10% of each other.
SAMPLE_ROWS_PER_PARTITION = 200
_POSITIONS = [(POSITION_PART, "ascending"), (POSITION_ROW, "ascending")]
_CHEAP_KINDS = ("parquet", "csv", "json", "table")


@dataclass(frozen=True)
class Sampler:
    """Evenly spaced rows of the key columns (with their positions), from one partition."""

    keys: tuple[str, ...]
    where: str

    def __call__(self, table: pa.Table, index: int) -> pa.Table:
        check_columns(table, self.keys, self.where)
        rows = table.num_rows
        take = (
            np.unique(
                np.linspace(0, rows - 1, min(rows, SAMPLE_ROWS_PER_PARTITION)).astype(np.int64)
            )
            if rows
            else np.zeros(0, np.int64)
        )
        sample = table.select(list(self.keys)).take(pa.array(take))
        sample = sample.append_column(POSITION_PART, pa.array(np.full(len(take), index, np.int64)))
        return sample.append_column(POSITION_ROW, pa.array(take))


@dataclass(frozen=True)
class SampleTask:
    """A map task that only samples (``keep``: also keep the processed partition)."""

    sampler: Sampler
    keep: MapTask | None = None

    def run(self, table: pa.Table, index: int) -> MapOutput:
        sample = self.sampler(table, index)
        if self.keep is not None:
            out = self.keep.run(table, index)
        else:
            out = MapOutput(index, table.schema, [], table.num_rows, table.nbytes)
        out.sample = sample
        return out


def _whole(table: pa.Table, index: int) -> list[pa.Table]:
    return [table]


@dataclass(frozen=True)
class RangeSplit:
    sort_keys: tuple[tuple[str, str], ...]
    boundaries: pa.Table = field(compare=False)
    positions: bool
    drop_null_keys: bool = False

    def __call__(self, table: pa.Table, index: int) -> list[pa.Table]:
        first, direction = self.sort_keys[0]
        fast = None
        if self.boundaries.num_rows:
            bounds = self.boundaries.column(first)
            fast = searchsorted_buckets(table.column(first), direction, bounds)
        if fast is not None or self.boundaries.num_rows == 0:
            # No positions needed: every row of a key lands in one bucket (they only break
            # ties between a key's rows cut over several buckets by split_by_ranges). Not
            # adding them halves the map side's take (measured: 83 vs 189 ms on a 1.25 M-row
            # lineitem partition).
            if self.drop_null_keys:
                nulls = key_nulls(table, [k for k, _ in self.sort_keys])
                if nulls.any():
                    table = table.filter(pa.array(~nulls))
                    fast = fast[~nulls] if fast is not None else None
            if fast is None:
                return [table]
            return split_by_bucket(table, fast, self.boundaries.num_rows + 1)
        table = with_positions(table, index)
        if self.drop_null_keys:
            nulls = key_nulls(table, [k for k, _ in self.sort_keys])
            if nulls.any():
                table = table.filter(pa.array(~nulls))
        keys = [*self.sort_keys, *(_POSITIONS if self.positions else [])]
        buckets = split_by_ranges(table, keys, self.boundaries)
        # Positions are not shipped: a bucket is read in (partition, row) order, so a stable
        # sort by the keys alone gives the same order (and 16 bytes a row less to move).
        return [drop_positions(b) for b in buckets]


@dataclass(frozen=True)
class SortReduce:
    sort_keys: tuple[tuple[str, str], ...]

    def __call__(self, tables: list[pa.Table]) -> pa.Table:
        return stable_sort(tables[0], self.sort_keys)


def range_exchange(
    scope: ExchangeScope,
    parts: Sequence[Partition],
    spec: ReadSpec,
    ops: Sequence[Op],
    sort_keys: list[tuple[str, str]],
    positions: bool,
    reduce: Callable[[list[pa.Table]], pa.Table],
    where: str,
    drop_null_keys: bool = False,
) -> list[Partition]:
    keys = tuple(k for k, _ in sort_keys)
    sampler = Sampler(keys, where)
    cheap = not ops and all(p.kind in _CHEAP_KINDS for p in parts)
    if cheap:
        projected = dataclasses.replace(spec, columns=keys) if spec.kind != "table" else spec
        samples = scope.run_map(parts, projected, (), SampleTask(sampler))  # type: ignore[arg-type]
        estimated = estimate_bytes(parts)
        inputs, input_spec = list(parts), spec
    else:  # keep each processed partition (spilled if large) so no user function runs twice
        keep = MapTask("P", _whole, scope.spill_dir_for(estimate_bytes(parts)))
        samples = scope.run_map(parts, spec, ops, SampleTask(sampler, keep))  # type: ignore[arg-type]
        estimated = sum(o.bytes for o in samples)
        inputs = [_kept_partition(o) for o in samples]
        input_spec = EXCHANGE_SPEC
        ops = ()
    buckets = choose_buckets(estimated, len(parts))
    sample_table = (
        concat(
            [o.sample for o in samples if o.sample is not None and o.sample.num_rows]
            or [samples[0].sample]
        )
        if samples
        else None
    )
    if sample_table is None:
        return []
    if drop_null_keys:
        nulls = key_nulls(sample_table, keys)
        sample_table = sample_table.filter(pa.array(~nulls)) if nulls.any() else sample_table
    split_keys = [*sort_keys, *(_POSITIONS if positions else [])]
    boundaries = choose_boundaries(sample_table, split_keys, buckets)
    buckets = boundaries.num_rows + 1
    if not positions:
        boundaries = boundaries.select(list(keys))
    split = RangeSplit(tuple(sort_keys), boundaries, positions, drop_null_keys)
    task = MapTask("R", split, scope.spill_dir_for(estimated))
    outputs = scope.run_map(inputs, input_spec, ops, task)
    return bucket_partitions(reduce, [outputs], buckets)


def _kept_partition(output: MapOutput) -> Partition:
    pieces = tuple(p for p in output.pieces if p is not None)
    return BucketPartition(
        output.index,
        "exchange",
        rows=output.rows,
        nbytes=output.bytes,
        reduce=concat_reduce,
        inputs=(BucketInput(output.schema, pieces),),
    )


@dataclass
class GlobalSort(ExchangeOp):
    """``ds.sort(keys, descending=)``: range-partitioned, stable, nulls last."""

    keys: list[tuple[str, str]]
    name = "sort"

    def key(self) -> str:
        return f"sort({self.keys})"

    def exchange(
        self, scope: ExchangeScope, parts: Sequence[Partition], spec: ReadSpec, ops: Sequence[Op]
    ) -> list[Partition]:
        return range_exchange(
            scope, parts, spec, ops, self.keys, True, SortReduce(tuple(self.keys)), "sort"
        )


# -- group-apply ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupsReduce:
    """Bucket rows sorted by key (input order within a group), cut into groups, ``fn`` on each."""

    keys: tuple[str, ...]
    fn: Callable[..., Any]
    batch_format: str
    fn_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __call__(self, tables: list[pa.Table]) -> pa.Table:
        table = tables[0]
        if not table.num_rows:
            return table.slice(0, 0)
        table = stable_sort(table, [(k, "ascending") for k in self.keys])
        starts = _group_starts(table, self.keys)
        where = f"map_groups({function_name(self.fn)})"
        outputs = []
        for lo, hi in zip(starts, [*starts[1:], table.num_rows], strict=True):
            group = _to_format(table.slice(lo, hi - lo), self.batch_format)
            outputs.append(from_batch(self.fn(group, **self.fn_kwargs), where))
        outputs = [o for o in outputs if o.num_columns]
        return concat(outputs) if outputs else pa.table({})


def _group_starts(table: pa.Table, keys: Sequence[str]) -> list[int]:
    """Row indexes where a new group begins, in a table sorted by ``keys`` (no null keys)."""
    rows = table.num_rows
    change = np.zeros(rows, dtype=bool)
    change[0] = True
    for key in keys:
        column = table.column(key)
        differs = pc.not_equal(column.slice(1), column.slice(0, rows - 1))
        change[1:] |= pc.fill_null(differs, True).to_numpy(zero_copy_only=False)
    return np.flatnonzero(change).tolist()


@dataclass
class MapGroups(ExchangeOp):
    """``ds.groupby(keys).map_groups(fn)``: rows with a null key are dropped (pandas'
    ``dropna=True``); groups come out in key order."""

    keys: list[str]
    fn: Callable[..., Any]
    batch_format: str = "pandas"
    fn_kwargs: dict[str, Any] = field(default_factory=dict)
    name = "map_groups"

    def __post_init__(self) -> None:
        if self.batch_format not in BATCH_FORMATS:
            raise ValueError(
                f"batch_format must be one of {BATCH_FORMATS}, got {self.batch_format!r}"
            )

    def key(self) -> str:
        return (
            f"map_groups({self.keys},{describe_function(self.fn)},{self.batch_format},"
            f"{sorted(self.fn_kwargs.items())!r})"
        )

    def exchange(
        self, scope: ExchangeScope, parts: Sequence[Partition], spec: ReadSpec, ops: Sequence[Op]
    ) -> list[Partition]:
        sort_keys = [(k, "ascending") for k in self.keys]
        reduce = GroupsReduce(tuple(self.keys), self.fn, self.batch_format, dict(self.fn_kwargs))
        return range_exchange(
            scope, parts, spec, ops, sort_keys, False, reduce, "map_groups", drop_null_keys=True
        )
