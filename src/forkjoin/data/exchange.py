"""The exchange (shuffle): the all-to-all step under join, sort, group-apply, repartition,
random_shuffle and distinct.

::

    stage before the barrier, one task per input partition (fused with its row-wise ops):
        read -> ops -> MapTask: split into N buckets (hash / range / random)
                  │ small exchange: the buckets come back to the caller (zero-copy data plane)
                  │ otherwise:      one spill file per task, buckets back to back (spill.py)
                  ▼
    caller: MapOutput per task (where each bucket is, rows, bytes); nothing else is held
                  │
                  ▼
    next stage, one task per bucket: BucketPartition.read() gathers bucket i from every map
        output and runs the reduce (join / sort / groups / concat: a library's kernel), then the
        next stage's fused row-wise ops and the terminal (collect, write_parquet...).

Faults: each task is an ordinary engine task, so a worker SIGKILLed on either side only loses
that task, which the engine runs again on a fresh worker (``retries``): a map task is recomputed
from its own input partition and writes the same spill file name again (staged, then renamed),
so no bucket is ever counted twice; a reduce task reads the spill files again.
Spill files live in the caller's SpillDir, removed when the plan's generator closes.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from .plan import Op, apply_ops, concat
from .sources import Partition, ReadCounts, ReadSpec
from .spill import Segment, SpillDir, read_segments, write_buckets

# Exchanges whose input is estimated (from metadata) below this many bytes move their buckets
# through the caller and the zero-copy data plane; larger ones spill to local disk, so the
# caller holds only bucket locations. 8 MiB: the in-memory path holds every bucket in the caller
# at once (at 2 M lineitem rows in bench_shuffle.py the sort's caller peaked at 366 MB with a
# 64 MiB line, 150 MB spilled), and spilling (page cache, memory-mapped by the reduce) was as
# fast there. Overridable with FORKJOIN_SPILL_THRESHOLD (bytes).
EXCHANGE_IN_MEMORY_BYTES = 8 * 1024 * 1024
# Bytes per reduce bucket: what one reduce task holds (its input, plus the kernel's output).
# The same 32 MiB as an input partition (sources.TARGET_PARTITION_BYTES).
TARGET_BUCKET_BYTES = 32 * 1024 * 1024
# At most this many buckets from the partition count alone (each map task writes one segment
# per bucket; more buckets than this only when the bytes ask for it).
MAX_BUCKETS_FROM_PARTITIONS = 64

POSITION_PART = "__fj_part"
POSITION_ROW = "__fj_row"


def release_memory() -> None:
    """Give the memory that an exchange task freed back to the OS, at the end of the task (in
    a worker). The allocators keep what a task frees for the next one (Arrow's mimalloc pool,
    glibc's heap), so after a few map and reduce tasks each worker held ~120 MB of freed
    buffers: in bench_shuffle.py's 10 M-row join the process tree peaked at ~875 MB, and at
    ~710 MB with this release (group-apply 805 -> 650 MB), at no measurable cost in time (the
    next task faults its pages in again: a few ms)."""
    pa.default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` (numpy's arrays live in the C heap), or None elsewhere."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


def in_memory_threshold() -> int:
    value = os.environ.get("FORKJOIN_SPILL_THRESHOLD")
    return int(value) if value else EXCHANGE_IN_MEMORY_BYTES


def choose_buckets(estimated_bytes: int, input_partitions: int) -> int:
    """How many reduce buckets: from the data's size and partition count, never the worker
    count, so the output (and a resumed write) is the same on any machine or backend."""
    by_bytes = -(-estimated_bytes // TARGET_BUCKET_BYTES)
    return max(1, by_bytes, min(input_partitions, MAX_BUCKETS_FROM_PARTITIONS))


def estimate_bytes(parts: Sequence[Partition]) -> int:
    return sum(p.nbytes for p in parts)


def with_positions(table: pa.Table, partition: int) -> pa.Table:
    """Columns giving each row's place in the input (partition, row): the tie-breaker that makes
    a sort stable and a group's rows keep their input order."""
    rows = table.num_rows
    table = table.append_column(POSITION_PART, pa.array(np.full(rows, partition, np.int64)))
    return table.append_column(POSITION_ROW, pa.array(np.arange(rows, dtype=np.int64)))


def drop_positions(table: pa.Table) -> pa.Table:
    names = [n for n in table.column_names if n not in (POSITION_PART, POSITION_ROW)]
    return table.select(names)


@dataclass(frozen=True)
class InlineBucket:
    """A bucket that travels with the task results instead of through a file: an Arrow IPC
    stream in a buffer. Not the table itself: a bucket is a slice of its partition, and a
    pickled slice can carry the whole partition's buffers (at 1 M rows a sort's caller held
    1.7 GB instead of 0.6 GB), where IPC writes only the slice's rows."""

    buffer: Any  # pyarrow.Buffer
    rows: int

    @classmethod
    def of(cls, table: pa.Table) -> InlineBucket:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return cls(sink.getvalue(), table.num_rows)

    def read(self) -> pa.Table:
        return pa.ipc.open_stream(self.buffer).read_all()


# -- map side (in a worker) ----------------------------------------------------------------------


@dataclass
class MapOutput:
    """What a map task returns: where each of its buckets is (a spill segment or a table)."""

    index: int
    schema: pa.Schema
    pieces: list[Any]  # per bucket: Segment | InlineBucket | None (empty)
    rows: int
    bytes: int
    spilled: int = 0
    sample: pa.Table | None = None


@dataclass(frozen=True)
class MapTask:
    """Shipped with each map task (as the Terminal's sink): how to split and where to put it.
    ``split(table, partition_index) -> list of bucket tables``."""

    side: str
    split: Callable[[pa.Table, int], list[pa.Table]]
    spill_dir: str | None  # None: return the buckets (a small exchange)

    def run(self, table: pa.Table, index: int) -> MapOutput:
        buckets = self.split(table, index)
        schema = buckets[0].schema if buckets else table.schema
        nbytes = sum(b.nbytes for b in buckets)
        if self.spill_dir is None:
            pieces: list[Any] = [InlineBucket.of(b) if b.num_rows else None for b in buckets]
            return MapOutput(index, schema, pieces, table.num_rows, nbytes)
        path = os.path.join(self.spill_dir, f"map-{self.side}-{index:05d}.arrow")
        segments = write_buckets(path, buckets)
        spilled = sum(s.length for s in segments if s is not None)
        return MapOutput(index, schema, list(segments), table.num_rows, nbytes, spilled)


# -- reduce side ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BucketInput:
    """Bucket i of one side: its pieces from every map task, in map order."""

    schema: pa.Schema
    pieces: tuple[Any, ...]  # Segment | InlineBucket

    def read(self) -> pa.Table:
        tables: list[pa.Table] = []
        segments = [p for p in self.pieces if isinstance(p, Segment)]
        spilled = iter(read_segments(segments))
        for piece in self.pieces:  # keep map order, whatever mix of memory and disk
            if isinstance(piece, Segment):
                tables.append(next(spilled))
            else:
                tables.append(piece.read() if isinstance(piece, InlineBucket) else piece)
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return self.schema.empty_table()
        return concat(tables)


def gather(outputs: Sequence[MapOutput], bucket: int) -> BucketInput:
    schema = _widest_schema(outputs)
    pieces = tuple(o.pieces[bucket] for o in outputs if o.pieces[bucket] is not None)
    return BucketInput(schema, pieces)


def _widest_schema(outputs: Sequence[MapOutput]) -> pa.Schema:
    schemas = [o.schema for o in outputs]
    if not schemas:
        return pa.schema([])
    try:
        return pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return max(schemas, key=len)


@dataclass(frozen=True, repr=False)
class BucketPartition(Partition):
    """A partition of the stage after an exchange: ``reduce(inputs' tables)`` in a worker."""

    reduce: Callable[[list[pa.Table]], pa.Table] | None = field(default=None, compare=False)
    inputs: tuple[BucketInput, ...] = field(default=(), compare=False)

    def describe(self) -> str:
        return f"exchange bucket {self.index}"

    def read(self) -> tuple[pa.Table, ReadCounts]:
        tables = [i.read() for i in self.inputs]
        assert self.reduce is not None
        out = self.reduce(tables)
        return out, ReadCounts(rows_read=sum(t.num_rows for t in tables))

    def read_partial(self, keys: Sequence[str], aggs: Any) -> tuple[Any, int, ReadCounts] | None:
        """``aggregate.partial`` of ``read()``'s table, its row count and the read counts, when
        the reduce can compute it in one step (a join: ``JoinSpec.partial``); else None."""
        fused = getattr(self.reduce, "partial", None)
        if fused is None:
            return None
        tables = [i.read() for i in self.inputs]
        result, rows = fused(tables, keys, aggs)
        return result, rows, ReadCounts(rows_read=sum(t.num_rows for t in tables))


@dataclass(frozen=True, repr=False)
class FusedPartition(Partition):
    """A partition read, processed by the ops before a barrier, then ``finish``ed, in the same
    task as the ops after it: a barrier that moves nothing (a broadcast join)."""

    inner: Partition | None = field(default=None, compare=False)
    spec: ReadSpec | None = field(default=None, compare=False)
    ops: tuple[Op, ...] = field(default=(), compare=False)
    finish: Callable[[pa.Table], pa.Table] | None = field(default=None, compare=False)

    def describe(self) -> str:
        assert self.inner is not None
        return self.inner.describe()

    def read(self) -> tuple[pa.Table, ReadCounts]:
        from .readers import read_partition

        assert self.inner is not None and self.spec is not None and self.finish is not None
        table, counts = read_partition(self.inner, self.spec)
        return self.finish(apply_ops(table, self.ops)), counts


EXCHANGE_SPEC = ReadSpec("exchange")  # the stage after an exchange reads its buckets


def bucket_partitions(
    reduce: Callable[[list[pa.Table]], pa.Table], sides: Sequence[Sequence[MapOutput]], buckets: int
) -> list[Partition]:
    out: list[Partition] = []
    for i in range(buckets):
        inputs = tuple(gather(side, i) for side in sides)
        rows = sum(_piece_rows(p) for inp in inputs for p in inp.pieces)
        nbytes = sum(_piece_bytes(p) for inp in inputs for p in inp.pieces)
        out.append(
            BucketPartition(i, "exchange", rows=rows, nbytes=nbytes, reduce=reduce, inputs=inputs)
        )
    return out


def _piece_rows(piece: Any) -> int:
    return piece.rows if isinstance(piece, (Segment, InlineBucket)) else piece.num_rows


def _piece_bytes(piece: Any) -> int:
    if isinstance(piece, Segment):
        return piece.length
    return piece.buffer.size if isinstance(piece, InlineBucket) else piece.nbytes


# -- the caller's side ---------------------------------------------------------------------------


@dataclass
class ExchangeScope:
    """What the exchanges of one plan run share: the run options, the stats, the spill dir."""

    config: Any  # execute.RunConfig
    stats: Any  # execute.DataStats
    spill: SpillDir = field(default_factory=SpillDir)

    def spill_dir_for(self, estimated_bytes: int) -> str | None:
        return None if estimated_bytes < in_memory_threshold() else self.spill.path

    def run_map(
        self, parts: Sequence[Partition], spec: ReadSpec, ops: Sequence[Op], task: MapTask
    ) -> list[MapOutput]:
        """The map side over partitions of this plan: one task each, fused with ``ops``."""
        from .execute import Terminal, run_partitions

        results = run_partitions(
            parts, spec, ops, Terminal("exchange", sink=task), self.config, self.stats
        )
        return self._collect(r.extra for r in results)

    def run_map_of(self, dataset: Any, task: MapTask) -> list[MapOutput]:
        """The map side over another Dataset's whole plan (the right side of a join)."""
        from .execute import DataStats, Terminal, execute

        inner = DataStats()
        results = execute(
            dataset._source, dataset._ops, Terminal("exchange", sink=task), self.config, inner
        )
        outputs = self._collect(r.extra for r in results)
        self.stats.rows_read += inner.rows_read
        self.stats.bytes_spilled += inner.bytes_spilled
        return outputs

    def collect(self, dataset: Any) -> pa.Table:
        """Another Dataset's result in the caller (a broadcast side)."""
        from .execute import COLLECT, DataStats, combine, execute

        results = execute(dataset._source, dataset._ops, COLLECT, self.config, DataStats())
        return combine([r.table for r in results if r.table is not None])

    def _collect(self, extras: Any) -> list[MapOutput]:
        outputs = sorted(extras, key=lambda o: o.index)
        self.stats.bytes_spilled += sum(o.spilled for o in outputs)
        return outputs

    def close(self) -> None:
        self.spill.close()


class ExchangeOp(Op):
    """A barrier that runs an exchange: ``exchange`` returns the next stage's partitions."""

    barrier = True

    def exchange(
        self, scope: ExchangeScope, parts: Sequence[Partition], spec: ReadSpec, ops: Sequence[Op]
    ) -> list[Partition]:
        raise NotImplementedError
