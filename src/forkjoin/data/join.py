"""``ds.join(other, ...)``: a broadcast join when one side is small, else a partitioned hash join.
The join inside a bucket is a library's: Polars' when installed (faster), else Acero's
(``pyarrow.Table.join``), with identical results (kernels.py); forkjoin only moves the rows.

::

    broadcast (other side estimated <= BROADCAST_BYTES from metadata, or broadcast=True):
        other ──collect──> caller ──shipped with every task──> each left partition joins it,
        fused with the row-wise ops before and after: no exchange at all
    hash (otherwise, and always for right/outer joins, where unmatched right rows need a home):
        left  partitions ──hash(left keys)  % N──┐
        right partitions ──hash(right keys) % N──┴──> bucket i: Acero join of the two sides

SQL null semantics: a null key matches nothing. Rows with a null key that the join would drop
anyway are dropped on the map side; those it keeps (the outer side) are dealt round-robin over
the buckets, so a column full of nulls does not pile into one bucket.

Output columns follow ``pandas.merge``: the left columns, then the right ones; a key given as
``on=`` appears once (coalesced for outer joins); ``left_on``/``right_on`` keep both; other
names present on both sides get ``suffixes``. Row order is not defined (as in Spark and SQL).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from .exchange import (
    ExchangeOp,
    ExchangeScope,
    FusedPartition,
    MapTask,
    bucket_partitions,
    choose_buckets,
    estimate_bytes,
)
from .kernels import back_to_arrow, hash_scheme, kernel_name, polars_join_frame
from .plan import Op, plan_hash
from .shuffle import HashSplit, check_columns
from .sources import Partition, ReadSpec

# A side estimated (from file metadata, before running anything) at or below this many bytes may
# be broadcast: collected once and shipped with each task of the other side, which then needs
# no exchange. Spark's default is 10 MiB; a bigger bound is fine here because of the second rule
# below (BROADCAST_MAX_REBUILD).
BROADCAST_BYTES = 32 * 1024 * 1024
# ...but only while the copies of it that tasks build hash tables from (one per left partition)
# add up to no more than this fraction of the left side's bytes: Acero rebuilds the hash table
# in every task, and in bench_shuffle.py (10 M lineitem rows) broadcasting the 2.5 M orders to
# ~40 partitions took 48 s where the hash join's exchange takes a fraction of it.
BROADCAST_MAX_REBUILD = 1.0

HOWS = {
    "inner": "inner",
    "left": "left outer",
    "right": "right outer",
    "outer": "full outer",
    "semi": "left semi",
    "anti": "left anti",
}
_BROADCASTABLE = ("inner", "left", "semi", "anti")
# Which sides keep rows whose key is null (the rest drop them on the map side).
_KEEPS_NULLS = {
    "inner": (False, False),
    "left": (True, False),
    "right": (False, True),
    "outer": (True, True),
    "semi": (False, False),
    "anti": (True, False),
}


@dataclass(frozen=True)
class JoinSpec:
    left_keys: tuple[str, ...]
    right_keys: tuple[str, ...]
    how: str
    suffixes: tuple[str, str]

    @property
    def coalesce(self) -> bool:
        return self.left_keys == self.right_keys

    def __call__(self, tables: list[pa.Table]) -> pa.Table:
        """The join of one bucket (or of a partition and the broadcast side)."""
        left, right, names = self._prepare(tables)
        joined = self._polars_join(left, right, names)
        if joined is not None:
            return back_to_arrow(*joined)
        return self._arrow_join(left, right, names)

    def _polars_join(
        self, left: pa.Table, right: pa.Table, names: list[str]
    ) -> tuple[Any, pa.Schema] | None:
        """The join as a Polars DataFrame and its Arrow schema, where the Polars kernel is
        chosen and gives exactly Acero's result; else None."""
        if kernel_name() != "polars":
            return None
        return polars_join_frame(
            left, right, self.left_keys, self.right_keys, self.how, names, self.coalesce
        )

    def _arrow_join(self, left: pa.Table, right: pa.Table, names: list[str]) -> pa.Table:
        if self.how in ("semi", "anti"):
            right = right.select(list(self.right_keys))
        joined = left.join(
            right,
            keys=list(self.left_keys),
            right_keys=list(self.right_keys),
            join_type=HOWS[self.how],
            left_suffix=self.suffixes[0],
            right_suffix=self.suffixes[1],
            coalesce_keys=self.coalesce,
            use_threads=False,  # one thread per worker, and a deterministic row order
        )
        return joined.select(names)

    def partial(self, tables: list[pa.Table], keys: Sequence[str], aggs: Any) -> tuple[Any, int]:
        """``aggregate.partial(self(tables), keys, aggs)`` and the joined row count: the join
        fused with the ``groupby(keys).agg(aggs)`` right after it. With Polars both run there,
        so the joined rows (the largest table of the job) are never converted back to Arrow
        nor aggregated by a second library: ~20% of a bench_shuffle join's worker CPU."""
        from .aggregate import partial, partial_of_polars

        left, right, names = self._prepare(tables)
        joined = self._polars_join(left, right, names)
        if joined is None:
            table = self._arrow_join(left, right, names)
        else:
            frame, schema = joined
            fused = partial_of_polars(frame, schema, keys, aggs)
            if fused is not None:
                return fused, frame.height
            table = back_to_arrow(frame, schema)
        return partial(table, keys, aggs), table.num_rows

    def _prepare(self, tables: list[pa.Table]) -> tuple[pa.Table, pa.Table, list[str]]:
        left, right = tables
        check_columns(left, self.left_keys, "join (left side)")
        check_columns(right, self.right_keys, "join (right side)")
        left, right = _common_key_types(left, right, self.left_keys, self.right_keys)
        return left, right, self.output_names(left.column_names, right.column_names)

    def output_names(self, left: list[str], right: list[str]) -> list[str]:
        if self.how in ("semi", "anti"):
            return list(left)
        skip = set(self.right_keys) if self.coalesce else set()
        right_rest = [c for c in right if c not in skip]
        both = set(left) & set(right_rest)
        names = [c + self.suffixes[0] if c in both else c for c in left]
        names += [c + self.suffixes[1] if c in both else c for c in right_rest]
        return names


def _common_key_types(
    left: pa.Table, right: pa.Table, left_keys: Sequence[str], right_keys: Sequence[str]
) -> tuple[pa.Table, pa.Table]:
    """Acero joins equal key types only: int32 with int64, or an int with a float, are cast to
    the type both fit (as pandas would compare them)."""
    for lk, rk in zip(left_keys, right_keys, strict=True):
        lt, rt = left.schema.field(lk).type, right.schema.field(rk).type
        if lt == rt:
            continue
        if pa.types.is_null(lt) or pa.types.is_null(rt):
            target = rt if pa.types.is_null(lt) else lt
        else:
            try:
                target = (
                    pa.unify_schemas(
                        [pa.schema([("k", lt)]), pa.schema([("k", rt)])],
                        promote_options="permissive",
                    )
                    .field("k")
                    .type
                )
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise TypeError(
                    f"join keys {lk!r} ({lt}) and {rk!r} ({rt}) have types that cannot be "
                    f"compared; cast one side first (e.g. map_batches or add_column)"
                ) from exc
        left = left.set_column(left.schema.get_field_index(lk), lk, left.column(lk).cast(target))
        right = right.set_column(
            right.schema.get_field_index(rk), rk, right.column(rk).cast(target)
        )
    return left, right


@dataclass(frozen=True)
class BroadcastFinish:
    """Join one processed left partition with the broadcast right side (in a worker)."""

    spec: JoinSpec
    right: pa.Table = field(compare=False)

    def __call__(self, table: pa.Table) -> pa.Table:
        return self.spec([table, self.right])


@dataclass
class Join(ExchangeOp):
    other: Any  # the right Dataset
    spec: JoinSpec
    broadcast: bool | None = None
    name = "join"

    def key(self) -> str:
        source = self.other._source
        other = plan_hash(
            [source.spec.key(), *(p.key() for p in source.partitions)], self.other._ops
        )
        # The hash scheme: the same plan under another Polars version sends rows elsewhere.
        return f"join({other},{self.spec},hash={hash_scheme()})"

    def exchange(
        self, scope: ExchangeScope, parts: Sequence[Partition], spec: ReadSpec, ops: Sequence[Op]
    ) -> list[Partition]:
        right_bytes = estimate_bytes(self.other._source.partitions)
        left_bytes = estimate_bytes(parts)
        if self._use_broadcast(right_bytes, left_bytes, len(parts)):
            right = scope.collect(self.other)
            finish = BroadcastFinish(self.spec, right)
            return [
                FusedPartition(
                    p.index,
                    "exchange",
                    rows=None,
                    nbytes=p.nbytes,
                    inner=p,
                    spec=spec,
                    ops=tuple(ops),
                    finish=finish,
                )
                for p in parts
            ]
        buckets = choose_buckets(
            left_bytes + right_bytes, max(len(parts), len(self.other._source.partitions))
        )
        spill = scope.spill_dir_for(left_bytes + right_bytes)
        keep_left, keep_right = _KEEPS_NULLS[self.spec.how]
        scheme = hash_scheme()
        left_split = HashSplit(
            self.spec.left_keys,
            buckets,
            spread_nulls=True,
            drop_null_keys=not keep_left,
            where="join (left side)",
            scheme=scheme,
        )
        right_split = HashSplit(
            self.spec.right_keys,
            buckets,
            spread_nulls=True,
            drop_null_keys=not keep_right,
            where="join (right side)",
            scheme=scheme,
        )
        left = scope.run_map(parts, spec, ops, MapTask("L", left_split, spill))
        right = scope.run_map_of(self.other, MapTask("R", right_split, spill))
        return bucket_partitions(self.spec, [left, right], buckets)

    def _use_broadcast(self, right_bytes: int, left_bytes: int, left_parts: int) -> bool:
        if self.spec.how not in _BROADCASTABLE:
            if self.broadcast:
                raise ValueError(
                    f"broadcast=True works for how in {_BROADCASTABLE} (the right side is "
                    f"broadcast); a {self.spec.how!r} join needs the hash join: broadcast=None"
                )
            return False
        if self.broadcast is not None:
            return self.broadcast
        rebuilt = right_bytes * max(1, left_parts)
        return (
            right_bytes <= BROADCAST_BYTES
            and rebuilt <= BROADCAST_MAX_REBUILD * max(left_bytes, 1)
            and all(p.kind != "exchange" for p in self.other._source.partitions)
        )


def make_join(
    other: Any,
    on: str | Sequence[str] | None,
    how: str,
    left_on: str | Sequence[str] | None,
    right_on: str | Sequence[str] | None,
    suffixes: Sequence[str],
    broadcast: bool | None,
) -> Join:
    if how not in HOWS:
        raise ValueError(f"how must be one of {list(HOWS)}, got {how!r}")
    if on is not None and (left_on is not None or right_on is not None):
        raise TypeError("join() takes on= or left_on=/right_on=, not both")
    if on is not None:
        left_keys = right_keys = _names(on)
    elif left_on is not None and right_on is not None:
        left_keys, right_keys = _names(left_on), _names(right_on)
    else:
        raise TypeError("join() needs on= (same names on both sides) or left_on= and right_on=")
    if len(left_keys) != len(right_keys) or not left_keys:
        raise ValueError(f"left_on {left_keys} and right_on {right_keys} must be as many keys")
    if len(suffixes) != 2:
        raise ValueError(f"suffixes must be two strings, got {suffixes!r}")
    from .dataset import Dataset

    if not isinstance(other, Dataset):
        raise TypeError(f"join() needs a forkjoin Dataset to join with, got {type(other).__name__}")
    spec = JoinSpec(left_keys, right_keys, how, (str(suffixes[0]), str(suffixes[1])))
    return Join(other, spec, broadcast)


def _names(keys: str | Sequence[str]) -> tuple[str, ...]:
    return (keys,) if isinstance(keys, str) else tuple(keys)
