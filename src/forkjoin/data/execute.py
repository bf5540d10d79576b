"""Streaming execution of a plan on any forkjoin backend, a bounded number of partitions at once.

::

    partitions ──> fj.imap(process_partition, ..., chunksize=1, max_in_flight=window)
                     │  one task per partition; at most `window` partitions read, processed or
                     │  waiting to be merged at any time: memory does not grow with the dataset
                     ▼
    worker:  read_partition -> fused row-wise ops -> terminal:
                collect   the Arrow table comes back           (to_arrow, iter_batches, take...)
                count     only the row count comes back        (count)
                partial   a group-by partial aggregate         (groupby().agg())
                write     the worker writes and commits a file (write_parquet/csv/json)
                     │
                     ▼
    caller:  PartResult stream (in partition order, or as finished for sinks), stats

A barrier (limit, repartition, sort, groupby) runs the stage before it to completion and feeds
its (moderate-sized) result to the next stage as in-memory partitions.
The engine is used only through ``fj.imap`` / ``Pool.imap``, so every backend works.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from ..errors import DataError, TaskError
from .plan import GroupByAgg, Limit, Op, Repartition, Sort, apply_ops, concat, split_stages
from .readers import DATA_MODULES, read_partition
from .sources import Partition, ReadCounts, ReadSpec, SourcePlan, plan_table

EXCHANGE_SPEC = ReadSpec("exchange")  # the stage after an exchange reads its buckets

# Partitions in flight per worker (submitted and not yet merged): 2 keeps each worker busy while
# the previous result travels back; more only adds memory (benchmarks/bench_data.py).
IN_FLIGHT_PER_WORKER = 2

RUN_OPTIONS = ("workers", "backend", "pool", "in_flight", "progress", "profile", "ordered")


@dataclass(frozen=True)
class RunConfig:
    """Where a Dataset runs: ``workers``/``backend`` go to ``fj.imap`` (or ``pool``'s imap)."""

    workers: int | None = None
    backend: str | None = "process"
    pool: Any = None  # a forkjoin.Pool to run on instead of the shared one
    in_flight: int | None = None  # partitions in flight; None: IN_FLIGHT_PER_WORKER per worker
    progress: Any = None  # a callable(PartResult) called as each partition finishes
    profile: bool | str = False  # fj.imap's profile=: the stages' functions across workers
    ordered: bool = True  # False: results stream as they finish (stages.py, issue 18)

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> RunConfig:
        unknown = set(kwargs) - set(RUN_OPTIONS)
        if unknown:
            raise TypeError(f"unknown option(s) {sorted(unknown)}; valid: {list(RUN_OPTIONS)}")
        config = cls(**kwargs)
        if config.in_flight is not None and config.in_flight < 1:
            raise ValueError(f"in_flight must be >= 1, got {config.in_flight!r}")
        return config

    def window(self) -> int:
        if self.in_flight is not None:
            return self.in_flight
        if self.pool is not None:
            workers = self.pool.workers
        else:
            from ..machine import usable_cpu_count

            workers = self.workers or usable_cpu_count()
        return IN_FLIGHT_PER_WORKER * max(1, workers)


@dataclass
class Terminal:
    """What a worker does with a processed partition."""

    kind: str  # "collect" | "count" | "partial" | "write" | "exchange"
    keys: tuple[str, ...] = ()
    aggs: Any = None  # aggregate.AggSpec
    sink: Any = None  # sinks.SinkSpec


COLLECT = Terminal("collect")
COUNT = Terminal("count")


@dataclass
class PartResult:
    index: int
    table: pa.Table | None
    rows: int
    counts: ReadCounts
    seconds: float
    extra: Any = None  # a Partial (groupby) or a FileInfo (write)


@dataclass
class DataStats:
    """What the last execution of a Dataset did."""

    partitions: int = 0
    rows_read: int = 0
    rows_out: int = 0
    rows_skipped: int = 0
    files_skipped: int = 0
    partitions_resumed: int = 0
    files_written: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    busy_seconds: float = 0.0
    bytes_spilled: int = 0  # written to spill files by exchanges (join, sort, ...)
    problems: list[str] = field(default_factory=list)

    @property
    def rows_per_second(self) -> float:
        return self.rows_read / self.seconds if self.seconds > 0 else 0.0

    def add_counts(self, counts: ReadCounts) -> None:
        self.rows_read += counts.rows_read
        self.rows_skipped += counts.rows_skipped
        self.files_skipped += counts.files_skipped
        self.problems += counts.problems[: max(0, 20 - len(self.problems))]

    def __str__(self) -> str:
        text = (
            f"{self.partitions} partitions, {self.rows_read:,} rows read, {self.rows_out:,} out "
            f"in {self.seconds:.2f} s ({self.rows_per_second:,.0f} rows/s)"
        )
        if self.rows_skipped or self.files_skipped:
            text += f"; skipped {self.rows_skipped:,} rows and {self.files_skipped} files"
        if self.files_written or self.partitions_resumed:
            text += (
                f"; {self.files_written} files written ({self.bytes_written:,} bytes), "
                f"{self.partitions_resumed} partitions already committed"
            )
        return text


def process_partition(
    part: Partition, spec: ReadSpec, ops: Sequence[Op], terminal: Terminal
) -> PartResult:
    """One task (runs in a worker): read, apply the fused operations, finish as asked."""
    start = time.perf_counter()
    if terminal.kind == "partial" and not ops and hasattr(part, "read_partial"):
        # A join bucket aggregated right away: join and partial aggregate in one step.
        fused = part.read_partial(terminal.keys, terminal.aggs)
        if fused is not None:
            extra, rows, counts = fused
            from .exchange import release_memory

            release_memory()
            return PartResult(part.index, None, rows, counts, time.perf_counter() - start, extra)
    table, counts = read_partition(part, spec)
    table = apply_ops(table, ops)
    extra = None
    out: pa.Table | None = None
    if terminal.kind == "collect":
        out = table
    elif terminal.kind == "partial":
        from .aggregate import partial

        extra = partial(table, terminal.keys, terminal.aggs)
    elif terminal.kind == "write":
        from .sinks import write_partition

        extra = write_partition(table, part.index, terminal.sink)
    elif terminal.kind == "exchange":  # the map side of an exchange: split into buckets
        extra = terminal.sink.run(table, part.index)
    rows = table.num_rows
    if terminal.kind == "exchange" or part.kind == "exchange":
        from .exchange import release_memory

        del table  # a map task's input, a reduce task's bucket: not needed any more
        release_memory()
    return PartResult(part.index, out, rows, counts, time.perf_counter() - start, extra)


def run_partitions(
    parts: Sequence[Partition],
    spec: ReadSpec,
    ops: Sequence[Op],
    terminal: Terminal,
    config: RunConfig,
    stats: DataStats,
    *,
    ordered: bool = True,
) -> Generator[PartResult, None, None]:
    """Results of one stage as they are merged; DataError from a worker is raised as itself."""
    if not parts:
        return
    ordered = ordered and config.ordered
    from .stages import has_stages

    if has_stages(ops):  # stages on workers of their own, streaming into each other
        from .pipeline import run_pipeline

        yield from run_pipeline(parts, spec, ops, terminal, config, stats, ordered)
        return
    if not ops and terminal.kind == "collect" and all(p.kind == "table" for p in parts):
        for part in parts:  # already in memory, nothing to do: no need to ship it anywhere
            assert part.table is not None
            counts = ReadCounts(rows_read=part.table.num_rows)
            result = PartResult(part.index, part.table, part.table.num_rows, counts, 0.0)
            _account(stats, result, config)
            yield result
        return
    if not ordered:  # the largest first: the run does not end on one worker finishing a big one
        parts = sorted(parts, key=lambda p: -p.nbytes)
    fn = functools.partial(process_partition, spec=spec, ops=tuple(ops), terminal=terminal)
    options: dict[str, Any] = {"chunksize": 1, "ordered": ordered, "max_in_flight": config.window(),
               "progress": False}  # fmt: skip
    if config.pool is not None:
        results = config.pool.imap(fn, parts, **options)
    else:
        import forkjoin as fj

        if config.profile:
            options["profile"] = config.profile
        results = fj.imap(fn, parts, workers=config.workers, backend=config.backend,
                          preload=DATA_MODULES, **options)  # fmt: skip
    watch = _dashboard_watch(ops, terminal, len(parts), config)
    try:
        for result in results:
            _account(stats, result, config)
            if watch is not None:
                watch[1].partition_done(result.counts.rows_read, result.rows)
            yield result
    except TaskError as exc:
        if isinstance(exc.original, DataError):
            raise exc.original.with_traceback(None) from exc.__cause__
        raise
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()
        if watch is not None:
            watch[0].stop_data_stage(watch[1])


def _dashboard_watch(
    ops: Sequence[Op], terminal: Terminal, partitions: int, config: RunConfig
) -> Any:
    """A live dashboard's view of this stage, when ``forkjoin.dashboard()`` is up; else None."""
    if "forkjoin.observe.dashboard" not in sys.modules:
        return None
    from ..observe.runs import follow_data_stage

    steps = []
    for op in ops:
        fn = getattr(op, "fn", None)
        named = getattr(fn, "__qualname__", type(fn).__name__) if fn is not None else ""
        steps.append(f"{op.name}({named})" if named else op.name)
    steps.append(terminal.kind)
    return follow_data_stage(" → ".join(steps), partitions, config.window())


def _account(stats: DataStats, result: PartResult, config: RunConfig) -> None:
    stats.partitions += 1
    stats.rows_out += result.rows
    stats.busy_seconds += result.seconds
    stats.add_counts(result.counts)
    if config.progress is not None:
        config.progress(result)


def execute(
    plan: SourcePlan,
    ops: Sequence[Op],
    terminal: Terminal,
    config: RunConfig,
    stats: DataStats,
    *,
    ordered: bool = True,
    skip: frozenset[int] = frozenset(),
) -> Iterator[PartResult]:
    """Run every stage of ``ops`` over ``plan``; yields the last stage's results. ``skip``:
    partition indexes of the last stage not to run (already committed by a previous run)."""
    from .exchange import ExchangeScope

    scope = ExchangeScope(config, stats)  # its spill directory is made only if one spills
    try:
        yield from _execute_stages(plan, ops, terminal, config, stats, scope, ordered, skip)
    finally:
        scope.close()  # no spill file outlives the run: success, error, or the consumer stopped


def _execute_stages(plan: SourcePlan, ops: Sequence[Op], terminal: Terminal, config: RunConfig,
                    stats: DataStats, scope: Any, ordered: bool,
                    skip: frozenset[int]) -> Iterator[PartResult]:  # fmt: skip
    stats.add_counts(plan.counts)
    parts, spec = plan.partitions, plan.spec
    stages = list(split_stages(ops))
    for stage in stages[:-1]:
        assert stage.barrier is not None
        if hasattr(stage.barrier, "exchange"):  # exchange.ExchangeOp: join, sort, shuffle...
            parts = stage.barrier.exchange(scope, parts, spec, stage.ops)
            spec = EXCHANGE_SPEC
            continue
        table = _run_barrier(parts, spec, stage.ops, stage.barrier, config, stats)
        partitions = stage.barrier.partitions if isinstance(stage.barrier, Repartition) else None
        staged = plan_table(table, partitions, _target_bytes())
        parts, spec = staged.partitions, staged.spec
    # Counts are of the last stage's input only: earlier stages' rows were counted as read.
    final_stats = stats if len(stages) == 1 else DataStats()
    todo = [p for p in parts if p.index not in skip]
    stats.partitions_resumed += len(parts) - len(todo)
    last = stages[-1].ops
    yield from run_partitions(todo, spec, last, terminal, config, final_stats, ordered=ordered)
    if final_stats is not stats:
        stats.partitions += final_stats.partitions
        stats.rows_out = final_stats.rows_out
        stats.busy_seconds += final_stats.busy_seconds


def count_partitions(plan: SourcePlan, ops: Sequence[Op]) -> int | None:
    """How many partitions the last stage has, if known without running anything."""
    stages = list(split_stages(ops))
    if len(stages) == 1:
        return len(plan.partitions)
    last_barrier = stages[-2].barrier
    if isinstance(last_barrier, Repartition):
        return last_barrier.partitions
    return None


def _target_bytes() -> int:
    from .sources import TARGET_PARTITION_BYTES

    return TARGET_PARTITION_BYTES


def _run_barrier(parts: Sequence[Partition], spec: ReadSpec, ops: Sequence[Op], barrier: Op,
                 config: RunConfig, stats: DataStats) -> pa.Table:  # fmt: skip
    if isinstance(barrier, GroupByAgg):
        from .aggregate import merge

        terminal = Terminal("partial", tuple(barrier.keys), barrier.aggs)
        partials = [r.extra for r in run_partitions(parts, spec, ops, terminal, config, stats)]
        return merge(partials, barrier.keys, barrier.aggs, spec.schema)
    tables: list[pa.Table] = []
    rows = 0
    results: Generator[PartResult, None, None] = run_partitions(
        parts, spec, ops, COLLECT, config, stats
    )
    try:
        for result in results:
            assert result.table is not None
            tables.append(result.table)
            rows += result.table.num_rows
            if isinstance(barrier, Limit) and rows >= barrier.n:
                break  # the rest is not needed: close() cancels what has not started
    finally:
        results.close()
    table = combine(tables, spec.schema)
    if isinstance(barrier, Limit):
        return table.slice(0, barrier.n)
    if isinstance(barrier, Sort):
        return table.sort_by(barrier.keys) if table.num_rows else table
    return table


def combine(tables: Sequence[pa.Table], schema: pa.Schema | None = None) -> pa.Table:
    """Partitions' tables as one (empty partitions that lost their columns are dropped)."""
    non_empty = [t for t in tables if t.num_rows]
    if non_empty:
        return concat(non_empty)
    if tables:
        return max(tables, key=lambda t: t.num_columns)
    return schema.empty_table() if schema is not None else pa.table({})
