"""``Dataset``: a lazy, partitioned table. Operations record a plan; consumers and sinks run it.

>>> import forkjoin as fj
>>> ds = fj.data.from_items([{"x": i} for i in range(10)])
>>> ds.map_batches(lambda t: {"y": [v * 2 for v in t["x"].to_pylist()]}).count(workers=1)
10

Every consumer and sink takes the run options ``workers=``, ``backend=`` (default "process";
any forkjoin backend), ``pool=`` (run on an existing ``fj.Pool``) and ``in_flight=``
(partitions in flight, bounding memory).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pyarrow as pa

from .execute import COLLECT, COUNT, DataStats, RunConfig, Terminal, combine, execute
from .plan import (
    AddColumn,
    Filter,
    GroupByAgg,
    Limit,
    MapBatches,
    MapRows,
    Op,
    RenameColumns,
    Repartition,
    SelectColumns,
    plan_identity,
    to_format,
)
from .sources import SourcePlan


class Dataset:
    """A lazy dataset: a source (files or in-memory partitions) and a list of operations."""

    def __init__(
        self, source: SourcePlan, ops: Sequence[Op] = (), inputs: Sequence[str] = ()
    ) -> None:
        self._source = source
        self._ops: tuple[Op, ...] = tuple(ops)
        self._inputs = tuple(inputs)  # input file paths (a sink never writes over them)
        self._stats = DataStats()

    def _with(self, op: Op) -> Dataset:
        return Dataset(self._source, (*self._ops, op), self._inputs)

    def __repr__(self) -> str:
        ops = " -> ".join(op.name for op in self._ops) or "no operations"
        return (
            f"<forkjoin.data.Dataset {self._source.spec.kind} source, "
            f"{len(self._source.partitions)} partitions, {ops}>"
        )

    @property
    def num_partitions(self) -> int:
        """Partitions of the source (each one task)."""
        return len(self._source.partitions)

    # -- operations (lazy) -----------------------------------------------------------------------

    def map_batches(
        self,
        fn: Callable[..., Any],
        *,
        batch_size: int | None = 4096,
        batch_format: str = "pyarrow",
        fn_kwargs: Mapping[str, Any] | None = None,
        fn_constructor_args: Sequence[Any] = (),
        fn_constructor_kwargs: Mapping[str, Any] | None = None,
        resources: Mapping[str, Any] | None = None,
        workers: int | tuple[int, int] | None = None,
        name: str | None = None,
    ) -> Dataset:
        """``fn(batch)`` on batches of up to ``batch_size`` rows (None: a whole partition).
        The batch is a ``pyarrow.Table``, a ``pandas.DataFrame`` or a dict of numpy arrays
        (``batch_format``); ``fn`` returns any of these (or a dict of lists).

        ``fn`` may be a callable class: a *stage*, built once per worker with
        ``fn_constructor_args``/``fn_constructor_kwargs``, called per batch, ``close()``d at
        the end. ``resources={"gpu": 1}`` and ``workers=`` (n, or (min, max) to grow while the
        stage is the bottleneck) give a stage workers of its own; stages stream into each
        other with bounded batches in flight (see ``forkjoin.data.stages``)."""
        if isinstance(fn, type) or resources is not None or workers is not None:
            from .stages import build_stage

            return self._with(
                build_stage(
                    fn, batch_size=batch_size, batch_format=batch_format, fn_kwargs=fn_kwargs,
                    constructor_args=fn_constructor_args,
                    constructor_kwargs=fn_constructor_kwargs, resources=resources,
                    workers=workers, name=name,
                )
            )  # fmt: skip
        if fn_constructor_args or fn_constructor_kwargs:
            raise TypeError("fn_constructor_args/fn_constructor_kwargs are for a callable class")
        return self._with(MapBatches(fn, batch_size, batch_format, dict(fn_kwargs or {})))

    def map(self, fn: Callable[[dict[str, Any]], dict[str, Any]]) -> Dataset:
        """``fn(row) -> row``, rows as dicts."""
        return self._with(MapRows(fn))

    def flat_map(self, fn: Callable[[dict[str, Any]], Any]) -> Dataset:
        """``fn(row) -> list of rows`` (zero or more)."""
        return self._with(MapRows(fn, flat=True))

    def filter(
        self, fn: Callable[[dict[str, Any]], Any] | None = None, *, expr: Any = None
    ) -> Dataset:
        """Keep rows where ``fn(row)`` is true, or where a ``pyarrow.compute`` expression holds
        (``expr=pc.field("x") > 3``: vectorised, no Python per row)."""
        if (fn is None) == (expr is None):
            raise TypeError("filter() takes a function or expr=, not both or neither")
        return self._with(Filter(fn, expr))

    def select_columns(self, columns: str | Sequence[str]) -> Dataset:
        return self._with(SelectColumns([columns] if isinstance(columns, str) else list(columns)))

    def rename_columns(self, mapping: Mapping[str, str]) -> Dataset:
        return self._with(RenameColumns(dict(mapping)))

    def add_column(
        self, column: str, fn: Callable[[Any], Any], *, batch_format: str = "pandas"
    ) -> Dataset:
        """A column computed by ``fn(batch)`` (a DataFrame by default): one value per row."""
        return self._with(AddColumn(column, fn, batch_format))

    def drop_columns(self, columns: Sequence[str]) -> Dataset:
        names = self.schema().names
        return self.select_columns([c for c in names if c not in set(columns)])

    def limit(self, n: int) -> Dataset:
        """The first ``n`` rows (in partition order)."""
        if n < 0:
            raise ValueError(f"limit must be >= 0, got {n}")
        return self._with(Limit(n))

    def repartition(self, partitions: int, *, keys: str | Sequence[str] | None = None) -> Dataset:
        """``partitions`` partitions of equal rows (runs what comes before it to completion);
        with ``keys``, by a hash of the key columns (every row of a key in one partition),
        through an exchange that spills instead of collecting."""
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {partitions}")
        if keys is not None:
            from .shuffle import HashRepartition

            return self._with(HashRepartition(partitions, [keys] if isinstance(keys, str)
                                              else list(keys)))  # fmt: skip
        return self._with(Repartition(partitions))

    def sort(self, key: str | Sequence[str], descending: bool | Sequence[bool] = False) -> Dataset:
        """Sorted by ``key`` (stable; nulls last), in bounded memory: sampled range boundaries,
        each range sorted in a worker, partitions in order (sort.py). Never collects."""
        from .sort import GlobalSort

        keys = [key] if isinstance(key, str) else list(key)
        flags = [descending] * len(keys) if isinstance(descending, bool) else list(descending)
        if len(flags) != len(keys):
            raise ValueError(f"descending has {len(flags)} flags for {len(keys)} keys")
        return self._with(GlobalSort(
            [(k, "descending" if d else "ascending") for k, d in zip(keys, flags, strict=True)]
        ))  # fmt: skip

    def join(
        self,
        other: Dataset,
        on: str | Sequence[str] | None = None,
        how: str = "inner",
        *,
        left_on: str | Sequence[str] | None = None,
        right_on: str | Sequence[str] | None = None,
        suffixes: Sequence[str] = ("_x", "_y"),
        broadcast: bool | None = None,
    ) -> Dataset:
        """Join with ``other`` on key columns: ``how`` is inner, left, right, outer, semi or
        anti; a null key matches nothing (SQL). ``other`` is broadcast when small (decided
        from metadata; ``broadcast=True/False`` overrides), else both sides are hash
        partitioned (join.py). Columns as ``pandas.merge``; row order undefined."""
        from .join import make_join

        return self._with(make_join(other, on, how, left_on, right_on, suffixes, broadcast))

    def random_shuffle(self, seed: int | None = None) -> Dataset:
        """The rows in a random order: the same order for the same ``seed`` and input,
        whatever the workers or backend."""
        from .shuffle import RandomShuffle, new_seed

        return self._with(RandomShuffle(new_seed() if seed is None else seed))

    def distinct(self, columns: str | Sequence[str] | None = None) -> Dataset:
        """One row per distinct value of ``columns`` (default: all), sorted within each
        output partition; nulls count as a value."""
        from .shuffle import Distinct

        cols = None if columns is None else [columns] if isinstance(columns, str) else list(columns)
        return self._with(Distinct(cols))

    def unique(self, column: str, **run: Any) -> list[Any]:
        """The distinct values of ``column``, sorted (None last)."""
        table = self.distinct(column).to_arrow(**run)
        if not table.num_rows:
            return []
        return table.sort_by([(column, "ascending")]).column(column).to_pylist()

    def groupby(self, keys: str | Sequence[str]) -> GroupedDataset:
        return GroupedDataset(self, [keys] if isinstance(keys, str) else list(keys))

    # -- consumers -------------------------------------------------------------------------------

    def _run(self, terminal: Terminal, run: dict[str, Any], **kwargs: Any) -> Iterator[Any]:
        config = RunConfig.from_kwargs(**run)
        self._stats = stats = DataStats()
        start = time.perf_counter()
        try:
            yield from execute(self._source, self._ops, terminal, config, stats, **kwargs)
        finally:
            stats.seconds = time.perf_counter() - start

    def iter_batches(
        self,
        *,
        batch_size: int | None = None,
        batch_format: str = "pyarrow",
        drop_last: bool = False,
        local_shuffle_buffer: int | None = None,
        local_shuffle_seed: int | None = None,
        prefetch: int = 1,
        **run: Any,
    ) -> Iterator[Any]:
        """Stream the result as batches of ``batch_size`` rows (a partition at a time without
        it), in order (``ordered=False``: as finished): "pyarrow", "pandas", "numpy" (dict of
        arrays) or "torch" (dict of tensors). ``drop_last`` drops a short last batch;
        ``local_shuffle_buffer=n`` draws each batch at random from ``n`` buffered rows;
        ``prefetch`` batches are made ready in a background thread while workers process the
        next partitions (at most ``in_flight`` in memory). See ``forkjoin.data.iterate``."""
        from .iterate import check, iter_tables

        check(batch_size, batch_format, local_shuffle_buffer, prefetch)
        tables = (result.table for result in self._run(COLLECT, run))
        return iter_tables(
            (t for t in tables if t is not None), batch_size=batch_size,
            batch_format=batch_format, drop_last=drop_last,
            local_shuffle_buffer=local_shuffle_buffer, local_shuffle_seed=local_shuffle_seed,
            prefetch=prefetch,
        )  # fmt: skip

    def shard(self, rank: int | None = None, world_size: int | None = None, *,
              shuffle: bool = True, seed: int = 0) -> Any:  # fmt: skip
        """This rank's part of the dataset (rank and world size from torch.distributed or the
        environment when not given): every row once per epoch across ranks, an order fixed by
        (seed, epoch), a position that ``fj.train`` checkpoints save and that any number of
        ranks can resume (``forkjoin.data.shard``)."""
        from .shard import DatasetShard

        return DatasetShard(self, rank, world_size, shuffle=shuffle, seed=seed)

    def iter_rows(self, **run: Any) -> Iterator[dict[str, Any]]:
        for batch in self.iter_batches(**run):
            yield from batch.to_pylist()

    def to_arrow(self, **run: Any) -> pa.Table:
        tables = [r.table for r in self._run(COLLECT, run)]
        return combine([t for t in tables if t is not None], self._output_schema_hint())

    def to_pandas(self, **run: Any) -> Any:
        return self.to_arrow(**run).to_pandas()

    def to_numpy(self, column: str | None = None, **run: Any) -> Any:
        """A dict of numpy arrays, or one array when ``column`` is given."""
        table = self.to_arrow(**run)
        if column is not None:
            return table.column(column).to_numpy()
        return to_format(table, "numpy")

    def take(self, n: int = 20, **run: Any) -> list[dict[str, Any]]:
        """The first ``n`` rows as dicts (runs only the partitions it needs)."""
        limited = self.limit(n)
        rows: list[dict[str, Any]] = limited.to_arrow(**run).to_pylist()
        self._stats = limited._stats
        return rows

    def count(self, **run: Any) -> int:
        """Rows in the result: from metadata when no operation can change the count."""
        if all(isinstance(op, (SelectColumns, RenameColumns, AddColumn)) for op in self._ops):
            known = [p.rows for p in self._source.partitions]
            if self._source.spec.filter is None and all(r is not None for r in known):
                self._stats = DataStats()
                self._stats.add_counts(self._source.counts)
                self._stats.rows_out = sum(r for r in known if r is not None)
                return self._stats.rows_out
        return sum(r.rows for r in self._run(COUNT, run))

    def schema(self, **run: Any) -> pa.Schema:
        """The result's schema: the source's when no operation changes it, else that of the
        first partition, processed."""
        source_schema = self._source.spec.schema
        if not self._ops and source_schema is not None:
            if self._source.spec.columns is not None:
                return pa.schema([source_schema.field(c) for c in self._source.spec.columns])
            return source_schema
        first = Dataset(
            SourcePlan(self._source.spec, self._source.partitions[:1], self._source.counts),
            self._ops,
            self._inputs,
        )
        run.setdefault("backend", "inline")
        return first.to_arrow(**run).schema

    def stats(self) -> DataStats:
        """What the last execution of this Dataset did (rows, partitions, skipped, time)."""
        return self._stats

    def materialize(self, **run: Any) -> Dataset:
        """Run the plan now and keep the result in memory as a new Dataset."""
        from .api import from_arrow

        return from_arrow(self.to_arrow(**run))

    def _output_schema_hint(self) -> pa.Schema | None:
        return self._source.spec.schema if not self._ops else None

    # -- sinks -----------------------------------------------------------------------------------

    def write_parquet(self, path: str, *, mode: str = "create", resume: bool = True,
                      compression: str | None = None, **run: Any) -> DataStats:  # fmt: skip
        """Write one Parquet file per partition into directory ``path``, atomically, with
        ``_manifest.json``. A rerun of the same plan resumes (skips committed partitions);
        a different plan is refused unless ``mode="overwrite"``."""
        return self._write("parquet", path, mode, resume, compression, run)

    def write_csv(
        self, path: str, *, mode: str = "create", resume: bool = True, **run: Any
    ) -> DataStats:
        return self._write("csv", path, mode, resume, None, run)

    def write_json(
        self, path: str, *, mode: str = "create", resume: bool = True, **run: Any
    ) -> DataStats:
        """JSON Lines, one file per partition."""
        return self._write("json", path, mode, resume, None, run)

    def _write(self, fmt: str, path: str, mode: str, resume: bool, compression: str | None,
               run: dict[str, Any]) -> DataStats:  # fmt: skip
        from .sinks import Committer

        keys = [p.key() for p in self._source.partitions]
        plan = plan_identity([self._source.spec.key(), *keys], self._ops, f"{fmt},{compression}")
        committer = Committer(path, fmt, plan.digest, mode=mode, resume=resume,
                              inputs=list(self._inputs), compression=compression,
                              plan_parts=plan.parts, unsure=plan.unsure)  # fmt: skip
        terminal = Terminal("write", sink=committer.spec)
        for result in self._run(terminal, run, ordered=False, skip=committer.committed):
            committer.commit(result.extra)
            self._stats.files_written += 1
            self._stats.bytes_written += result.extra.bytes
        manifest = committer.finish()
        self._stats.rows_out = manifest["rows"]
        return self._stats


class GroupedDataset:
    """``ds.groupby(keys)``: call ``agg`` (or ``count``, ``sum``, ``mean``, ``min``, ``max``)."""

    def __init__(self, dataset: Dataset, keys: list[str]) -> None:
        self._dataset = dataset
        self._keys = keys

    def agg(self, spec: Mapping[str, Any] | None = None, **named: Any) -> Dataset:
        """Aggregations computed per partition, merged at the end: ``{"x": "sum"}``,
        ``{"x": ["min", "max"]}``, ``{"x": Reducer(...)}``, or ``total=("x", "sum")``.
        Built-ins: sum, count, mean, min, max. One row per group, sorted by key."""
        from .aggregate import AggSpec

        return self._dataset._with(GroupByAgg(self._keys, AggSpec.parse(spec, named)))

    def map_groups(self, fn: Callable[..., Any], *, batch_format: str = "pandas",
                   fn_kwargs: Mapping[str, Any] | None = None) -> Dataset:  # fmt: skip
        """``fn(group)`` on all rows of each group (rows in input order; a DataFrame by
        default), like pandas' ``groupby().apply`` and Ray Data's ``map_groups``; ``fn``
        returns a batch (any number of rows). Groups come out in key order; null keys are
        dropped. One group must fit in a worker's memory."""
        from .sort import MapGroups

        return self._dataset._with(MapGroups(self._keys, fn, batch_format, dict(fn_kwargs or {})))

    def count(self) -> Dataset:
        """Rows per group, in a column named ``count``."""
        return self.agg(count=(self._keys[0], "count"))

    def sum(self, column: str) -> Dataset:
        return self.agg({column: "sum"})

    def mean(self, column: str) -> Dataset:
        return self.agg({column: "mean"})

    def min(self, column: str) -> Dataset:
        return self.agg({column: "min"})

    def max(self, column: str) -> Dataset:
        return self.agg({column: "max"})
