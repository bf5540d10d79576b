"""``ds.shard(rank, world_size)``: each training rank streams its own part of a dataset, every row
once per epoch across ranks, with a position that checkpoints save and any number of ranks can
resume.

::

    epoch e: units (the dataset's partitions) in an order fixed by (seed, e)
             unit order  u7 u2 u9 u0 u4 ...     minus units already done (a resumed epoch)
    rank r of W takes remaining[r::W]; each unit is read and preprocessed on forkjoin workers
             ahead of the consumer, its rows shuffled by (seed, e, unit), and started at the
             unit's saved offset
    position: {unit: rows consumed} and the units done, gathered from every rank when a
             checkpoint is saved (``fj.train.save_checkpoint(..., loader=shard)``)
    resume on W' ranks: the same remaining units, dealt out again as remaining[r::W']

Why units and offsets rather than one global row order: a rank reads and preprocesses only its
own units (never the others' rows), and because the position names units and rows within them,
not ranks, it means the same thing to any number of ranks: a resume on 1 or 3 ranks of a run
killed on 2 sees every remaining row of the epoch exactly once.

Ranks may get a different number of rows (units differ in size): a loop that needs the same
number of steps on every rank (DDP) stops when the first rank runs out, e.g. with
``fj.train.all_reduce_mean(1.0 if batch is None else 0.0)``; see examples/train_from_parquet.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from .iterate import check, convert, prefetched

STATE_VERSION = 1
Source = tuple[int, int, int]  # (unit, rows of it in a batch, the unit's total rows)


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        return rank, world_size
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return (
                dist.get_rank() if rank is None else rank,
                dist.get_world_size() if world_size is None else world_size,
            )
    except ImportError:
        pass
    env_rank = int(os.environ.get("RANK", "0"))
    env_world = int(os.environ.get("WORLD_SIZE", "1"))
    return (env_rank if rank is None else rank), (env_world if world_size is None else world_size)


class DatasetShard:
    """One rank's part of a Dataset, epoch by epoch; ``iter_batches`` streams it and moves the
    position, ``state_dict``/``load_state_dict`` save and restore it (every rank calls
    ``state_dict``: it gathers all ranks' positions)."""

    forkjoin_shard = True  # fj.train checkpoints save and restore objects that carry this

    def __init__(self, dataset: Any, rank: int | None = None, world_size: int | None = None, *,
                 shuffle: bool = True, seed: int = 0) -> None:  # fmt: skip
        from .plan import split_stages

        if len(list(split_stages(dataset._ops))) > 1:
            barriers = [op.name for op in dataset._ops if op.barrier]
            raise ValueError(
                f"shard() streams partitions as they are processed; this plan has "
                f"{barriers}, which regroup rows: call .materialize() first, then shard()"
            )
        self.rank, self.world_size = _rank_and_world(rank, world_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, {self.world_size}), got {self.rank}")
        self.dataset = dataset
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.done: set[int] = set()  # units fully consumed this epoch (by any rank)
        self.offsets: dict[int, int] = {}  # unit -> rows consumed, for units begun
        self._finished = False  # this rank's share of the epoch fully consumed

    @property
    def units(self) -> int:
        return len(self.dataset._source.partitions)

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` (keeps the position when it is the epoch being resumed)."""
        if epoch != self.epoch:
            self.epoch = epoch
            self.done, self.offsets, self._finished = set(), {}, False

    def unit_order(self) -> list[int]:
        """This epoch's order of units (the same on every rank and any number of ranks)."""
        import numpy as np

        if not self.shuffle:
            return list(range(self.units))
        return [
            int(u) for u in np.random.default_rng([self.seed, self.epoch]).permutation(self.units)
        ]

    def my_units(self) -> list[int]:
        remaining = [u for u in self.unit_order() if u not in self.done]
        return remaining[self.rank :: self.world_size]

    # -- streaming ---------------------------------------------------------------------------

    def _unit_tables(self, units: list[int], run: dict[str, Any]) -> Iterator[tuple[int, pa.Table]]:
        """Each of ``units`` processed (on forkjoin workers, ahead), rows shuffled, offset
        applied."""
        import numpy as np

        from .dataset import Dataset
        from .execute import COLLECT
        from .sources import SourcePlan

        if not units:
            return
        source = self.dataset._source
        parts = [source.partitions[u] for u in units]
        sub = Dataset(SourcePlan(source.spec, parts, source.counts), self.dataset._ops,
                      self.dataset._inputs)  # fmt: skip
        run = {**run, "ordered": True}
        pieces: list[pa.Table] = []
        current: int | None = None

        def finish(unit: int, tables: list[pa.Table]) -> tuple[int, pa.Table]:
            table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
            if self.shuffle and table.num_rows > 1:
                rng = np.random.default_rng([self.seed, self.epoch, unit])
                table = table.take(pa.array(rng.permutation(table.num_rows)))
            return unit, table.slice(self.offsets.get(unit, 0))

        for result in sub._run(COLLECT, run):
            assert result.table is not None
            if current is not None and result.index != current:
                yield finish(current, pieces)
                pieces = []
            current = result.index
            pieces.append(result.table)
        if current is not None:
            yield finish(current, pieces)

    def _batches(
        self, batch_size: int, drop_last: bool, run: dict[str, Any]
    ) -> Iterator[tuple[pa.Table | None, list[Source]]]:
        """Tables of ``batch_size`` rows with where each came from: (unit, rows, unit total);
        a None table only moves the position (a unit that turned out empty)."""
        pending: list[tuple[int, pa.Table, int]] = []  # (unit, rows left to hand out, total)
        held = 0
        units = self.my_units()
        seen: set[int] = set()
        for unit, table in self._unit_tables(units, run):
            seen.add(unit)
            total = self.offsets.get(unit, 0) + table.num_rows
            if table.num_rows == 0:
                yield None, [(unit, 0, total)]
                continue
            pending.append((unit, table, total))
            held += table.num_rows
            while held >= batch_size:
                yield self._cut(pending, batch_size)
                held -= batch_size
        if held and not drop_last:
            yield self._cut(pending, held)
        elif held:
            yield None, [(unit, table.num_rows, total) for unit, table, total in pending]
        missing = [u for u in units if u not in seen]  # partitions that produced no result
        if missing:
            yield None, [(unit, 0, self.offsets.get(unit, 0)) for unit in missing]

    @staticmethod
    def _cut(pending: list[tuple[int, pa.Table, int]],
             size: int) -> tuple[pa.Table, list[tuple[int, int, int]]]:  # fmt: skip
        parts: list[pa.Table] = []
        sources: list[tuple[int, int, int]] = []
        while size:
            unit, table, total = pending[0]
            take = min(size, table.num_rows)
            parts.append(table.slice(0, take))
            sources.append((unit, take, total))
            rest = table.slice(take)
            if rest.num_rows:
                pending[0] = (unit, rest, total)
            else:
                pending.pop(0)
            size -= take
        return (pa.concat_tables(parts) if len(parts) > 1 else parts[0]), sources

    def _consume(self, sources: list[tuple[int, int, int]]) -> None:
        for unit, rows, total in sources:
            offset = self.offsets.get(unit, 0) + rows
            if offset >= total:
                self.offsets.pop(unit, None)
                self.done.add(unit)
            else:
                self.offsets[unit] = offset

    def iter_batches(
        self,
        *,
        batch_size: int = 256,
        batch_format: str = "numpy",
        drop_last: bool = False,
        prefetch: int = 1,
        **run: Any,
    ) -> Iterator[Any]:
        """This rank's batches of the current epoch, from where the position stands. A full
        pass ends the epoch: the next call starts the next one (a new order). Rows count as
        consumed when their batch is handed out (as a DataLoader's sampler counts them)."""
        check(batch_size, batch_format, None, prefetch)
        if self._finished:
            self.set_epoch(self.epoch + 1)

        def produce() -> Iterator[tuple[Any, list[tuple[int, int, int]]]]:
            for table, sources in self._batches(batch_size, drop_last, run):
                yield (None if table is None else convert(table, batch_format)), sources

        for batch, sources in prefetched(produce(), prefetch):
            self._consume(sources)  # in the consumer's thread: the position is its own
            if batch is not None:
                yield batch
        self._finished = True

    # -- position ----------------------------------------------------------------------------

    def local_state(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "units": self.units,
            "done": sorted(self.done),
            "offsets": sorted([u, n] for u, n in self.offsets.items()),
        }

    def state_dict(self) -> dict[str, Any]:
        """The position of every rank, merged (a collective under torch.distributed: every rank
        must call it, as ``save_checkpoint`` does)."""
        states = [self.local_state()]
        try:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                gathered: list[Any] = [None] * dist.get_world_size()
                dist.all_gather_object(gathered, states[0])
                states = gathered
        except ImportError:
            pass
        return merge_states(states)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state.get("units", self.units)) != self.units:
            raise ValueError(
                f"this position is for a dataset of {state['units']} partitions; this one has "
                f"{self.units}: resume on the same data (same files, same partitioning)"
            )
        self.epoch = int(state["epoch"])
        self.seed = int(state.get("seed", self.seed))
        self.shuffle = bool(state.get("shuffle", self.shuffle))
        self.done = {int(u) for u in state["done"]}
        self.offsets = {int(u): int(n) for u, n in state["offsets"]}
        self._finished = False


def merge_states(states: list[dict[str, Any]]) -> dict[str, Any]:
    """One position from every rank's: units done by any rank, offsets of units begun."""
    epochs = {int(s["epoch"]) for s in states}
    if len(epochs) > 1:
        raise ValueError(
            f"ranks are in different epochs {sorted(epochs)}: save a checkpoint when every rank "
            f"is in the same epoch (in the training loop, not between epochs)"
        )
    done: set[int] = set()
    offsets: dict[int, int] = {}
    for state in states:
        done.update(int(u) for u in state["done"])
        for unit, rows in state["offsets"]:
            offsets[int(unit)] = max(int(rows), offsets.get(int(unit), 0))
    merged = dict(states[0])
    merged["done"] = sorted(done)
    merged["offsets"] = sorted([u, n] for u, n in offsets.items() if u not in done)
    return merged


def shard(dataset: Any, rank: int | None, world_size: int | None, *, shuffle: bool,
          seed: int) -> DatasetShard:  # fmt: skip
    return DatasetShard(dataset, rank, world_size, shuffle=shuffle, seed=seed)
