"""Exchanges that only move rows: ``repartition(n, keys=)`` (by a hash of the key),
``random_shuffle(seed=)``, and ``distinct()`` (hash by every column, then Acero's group-by per
bucket). Each is a barrier op (``exchange.ExchangeOp``) plus a splitter and a reduce that are
small picklable records, shipped with the tasks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .exchange import (
    ExchangeOp,
    ExchangeScope,
    MapTask,
    bucket_partitions,
    choose_buckets,
    estimate_bytes,
)
from .kernels import SPLITMIX_SCHEME, hash_scheme
from .partitioning import hash_buckets, random_keys, split_by_bucket
from .plan import Op, concat
from .sources import Partition, ReadSpec

RANDOM_KEY = "__fj_random"


def check_columns(table: pa.Table, columns: Sequence[str], where: str) -> None:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise KeyError(f"{where}: no column(s) {missing}; the data has {table.column_names}")


@dataclass(frozen=True)
class HashSplit:
    keys: tuple[str, ...]
    buckets: int
    spread_nulls: bool = False
    drop_null_keys: bool = False
    where: str = "repartition"
    scheme: str = SPLITMIX_SCHEME  # the caller's kernels.hash_scheme(), the same in every task

    def __call__(self, table: pa.Table, index: int) -> list[pa.Table]:
        check_columns(table, self.keys, self.where)
        if self.drop_null_keys:
            from .partitioning import key_nulls

            nulls = key_nulls(table, self.keys)
            if nulls.any():
                table = table.filter(pa.array(~nulls))
        return split_by_bucket(
            table,
            hash_buckets(table, self.keys, self.buckets, self.spread_nulls, self.scheme),
            self.buckets,
        )


@dataclass(frozen=True)
class RandomSplit:
    seed: int
    buckets: int

    def __call__(self, table: pa.Table, index: int) -> list[pa.Table]:
        keys = random_keys(self.seed, index, table.num_rows)
        table = table.append_column(RANDOM_KEY, pa.array(keys))
        return split_by_bucket(table, keys % self.buckets, self.buckets)


def concat_reduce(tables: list[pa.Table]) -> pa.Table:
    return concat(tables) if len(tables) > 1 else tables[0]


def random_reduce(tables: list[pa.Table]) -> pa.Table:
    """Rows of the bucket in the order of their random keys (ties: input order)."""
    table = tables[0]
    if table.num_rows:
        table = table.sort_by([(RANDOM_KEY, "ascending")])
    return table.drop_columns([RANDOM_KEY])


@dataclass(frozen=True)
class DistinctReduce:
    columns: tuple[str, ...] | None

    def __call__(self, tables: list[pa.Table]) -> pa.Table:
        table = tables[0]
        columns = list(self.columns or table.column_names)
        if not table.num_rows:
            return table.select(columns)
        unique = table.select(columns).group_by(columns, use_threads=False).aggregate([])
        return unique.sort_by([(c, "ascending") for c in columns])


@dataclass
class HashRepartition(ExchangeOp):
    partitions: int
    keys: list[str]
    name = "repartition"

    def key(self) -> str:
        return f"repartition({self.partitions},keys={self.keys},hash={hash_scheme()})"

    def exchange(
        self, scope: ExchangeScope, parts: Sequence[Partition], spec: ReadSpec, ops: Sequence[Op]
    ) -> list[Partition]:
        split = HashSplit(tuple(self.keys), self.partitions, scheme=hash_scheme())
        task = MapTask("H", split, scope.spill_dir_for(estimate_bytes(parts)))
        outputs = scope.run_map(parts, spec, ops, task)
        return bucket_partitions(concat_reduce, [outputs], self.partitions)


@dataclass
class RandomShuffle(ExchangeOp):
    seed: int
    name = "random_shuffle"

    def key(self) -> str:
        return f"random_shuffle({self.seed})"

    def exchange(
        self, scope: ExchangeScope, parts: Sequence[Partition], spec: ReadSpec, ops: Sequence[Op]
    ) -> list[Partition]:
        estimated = estimate_bytes(parts)
        buckets = choose_buckets(estimated, len(parts))
        task = MapTask("S", RandomSplit(self.seed, buckets), scope.spill_dir_for(estimated))
        outputs = scope.run_map(parts, spec, ops, task)
        return bucket_partitions(random_reduce, [outputs], buckets)


@dataclass
class Distinct(ExchangeOp):
    columns: list[str] | None
    name = "distinct"

    def key(self) -> str:
        return f"distinct({self.columns},hash={hash_scheme()})"

    def exchange(
        self, scope: ExchangeScope, parts: Sequence[Partition], spec: ReadSpec, ops: Sequence[Op]
    ) -> list[Partition]:
        estimated = estimate_bytes(parts)
        buckets = choose_buckets(estimated, len(parts))
        columns = tuple(self.columns) if self.columns is not None else None
        split = _DistinctSplit(columns, buckets, hash_scheme())
        task = MapTask("D", split, scope.spill_dir_for(estimated))
        outputs = scope.run_map(parts, spec, ops, task)
        return bucket_partitions(DistinctReduce(columns), [outputs], buckets)


@dataclass(frozen=True)
class _DistinctSplit:
    """Hash by the distinct columns, after removing duplicates inside the partition (the
    map-side combine: fewer rows cross the exchange)."""

    columns: tuple[str, ...] | None
    buckets: int
    scheme: str

    def __call__(self, table: pa.Table, index: int) -> list[pa.Table]:
        columns = list(self.columns or table.column_names)
        check_columns(table, columns, "distinct")
        table = table.select(columns)
        if table.num_rows:
            table = table.group_by(columns, use_threads=False).aggregate([])
        buckets = hash_buckets(table, columns, self.buckets, scheme=self.scheme)
        return split_by_bucket(table, buckets, self.buckets)


def new_seed() -> int:
    return int(np.random.default_rng().integers(0, 2**31 - 1))
