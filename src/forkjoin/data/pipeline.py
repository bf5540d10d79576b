"""Streaming pipelines: each stage on its own workers, bounded channels between them.

::

    partitions ─> [read + row-wise ops]  on the run's workers (fj.imap / pool=, as without stages;
                        │                  one thread in the caller when the stages take every core)
                        │  blocks of rows (a partition cut to the next stage's batches)
                        ▼  Channel: at most CHANNEL_BLOCKS waiting; a full one blocks the feeder
                 stage 1: actors (one 1-worker Pool each, pinned to its GPUs), each one
                        │  block in flight (ACTOR_IN_FLIGHT while blocks are quick); grows
                        │  min -> max while it is the bottleneck (blocks waiting, actors busy)
                        ▼  Channel
                 stage 2 ... the last stage applies the terminal (collect, count, write)
                        ▼
                 caller: results in input order (ordered=True) or as they finish

Every stage runs at the same time as the others: while the GPU stage embeds block n, the CPU
workers decode block n+1, and since every channel and every stage's in-flight count is bounded,
memory does not grow with the dataset. Upstream stages are driven by feeder threads in the
caller; the last stage by the caller's own iteration, so a consumer that stops pulling stops the
whole pipeline. A worker that dies is replaced and its block retried (``Pool.submit``'s
retries); each block's result is taken once, so nothing is duplicated.

Where the head (the read and the row-wise ops before the first stage) runs: on the run's workers
as without stages, except where CPU stages hold every core from the start (their minimum
workers x their ``cpu`` reach the machine's usable cores: ``map_batches(Model, workers=2)`` on
2 cores). There it runs on one thread in the caller: the stage workers are the run's compute,
and a process pool of its own would compete with them for the same cores and first start a
zygote and N interpreters that each import pyarrow and pandas (~0.7 s of CPU and ~100 MB each),
all while the stage workers load their models (bench_inference.py: the models were ready 3.5 s
later that way). The caller has pyarrow already; Parquet decoding and tokenisers run in native
code. One thread, so the head's functions never run concurrently with themselves. To keep the
head on processes, pass ``pool=`` (an ``fj.Pool``) or give a stage fewer workers.

Why one 1-worker Pool per actor instead of one Pool per stage: a block goes to the actor the
dispatcher picks, so a stage that runs with 1 of its (1, 4) workers loads its model once, not
on whichever of 4 idle processes the next task lands on, and growing is starting one more Pool.
On Ray and Dask (whose engines own the processes) a stage is one Pool whose tasks carry the
stage's resources (``num_gpus``, worker resources) and the instance is kept per process.
"""

from __future__ import annotations

import dataclasses
import functools
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from ..errors import DataError, ResourceError, TaskError
from .channel import Channel, End, Stopped
from .execute import COLLECT, DataStats, PartResult, RunConfig, Terminal, process_partition
from .plan import Op
from .sources import Partition, ReadCounts, ReadSpec
from .stages import StageError, StageOp, close_instances, warm_up

# Blocks waiting between two stages. With ACTOR_IN_FLIGHT per actor this bounds what a stage
# holds: (CHANNEL_BLOCKS + actors * ACTOR_IN_FLIGHT) blocks; 4 covers a slow upstream hiccup
# without letting a fast CPU stage run far ahead of the GPU (tests/test_data_stages.py).
CHANNEL_BLOCKS = 4
# Blocks submitted to one actor: 2 lets the next block's input arrive while one computes.
ACTOR_IN_FLIGHT = 2
# ...but only while the stage's blocks are quick. A block that takes this long (a model call
# on a window of texts: seconds) is worth more than the transfer it hides, and a second block
# queued behind it is committed to that actor: at the end of the run one actor still works
# through it while another has nothing left (bench_inference.py, 3,000 texts in 3 windows on
# 2 actors: one idle for 13 of 30 s). So a stage starts with one block per actor and allows
# ACTOR_IN_FLIGHT once a block has come back quicker than this.
LONG_BLOCK_SECONDS = 0.25
# With ordered output, a stage holds at most this many times its in-flight capacity in blocks:
# finished blocks waiting for an earlier, slower one, besides those computing.
REORDER_FACTOR = 2
# Batches of the next stage's batch_size per block. One: the per-task overhead (~1 ms) is small
# next to a model call (what a stage is for), and the run's tail, where one actor still works
# through the blocks it was given while another has none left, lasts at most one model call
# per block in flight (with 4 it could last 8 calls: bench_inference.py's batches take seconds
# each on a 2-core CPU, so that tail was a visible share of the run).
BATCHES_PER_BLOCK = 1
# A stage with blocks waiting and every actor busy this long starts another actor (up to
# its max): long enough not to react to one slow block, short next to a model's load time.
GROW_AFTER_SECONDS = 1.0
# How long shutdown waits for a feeder thread (it is at most one task away from noticing).
JOIN_SECONDS = 30.0

_TABLE_SPEC = ReadSpec("table")


@dataclass
class _Actor:
    pool: Any
    in_flight: int = 0


@dataclass
class _Pending:
    future: Future[Any]
    actor: _Actor
    settled: bool = False  # its actor's in-flight count already took it off

    def settle(self, stage: StageRun) -> None:
        """A finished block frees its actor at once, even while ordered output still waits
        for an earlier block: the actor gets its next block instead of idling until then."""
        if self.settled or not self.future.done():
            return
        self.settled = True
        self.actor.in_flight -= 1
        if self.future.exception() is None:
            stage.last_block_seconds = self.future.result().seconds


@dataclass
class StageRun:
    """One stage of a running pipeline: its actors and what it has in flight."""

    op: StageOp
    ops: tuple[Op, ...]  # the stage op and the row-wise ops fused after it
    spec: ReadSpec
    terminal: Terminal
    config: RunConfig
    cluster: bool
    low: int = 1
    high: int = 1
    gpu_sets: list[tuple[int, ...]] | None = None
    actors: list[_Actor] = field(default_factory=list)
    started_actors: int = 0
    last_block_seconds: float | None = None  # the worker's time on the last block back

    # -- workers -------------------------------------------------------------------------------

    def plan(self) -> None:
        """Size the stage: (min, max) workers from ``workers=`` and what the machine holds."""
        op = self.op
        if self.cluster:
            self.low, self.high = op.workers or (2, 2)
            return
        from ..machine import gpus, usable_cpu_count

        gpu = float((op.resources or {}).get("gpu", 0) or 0)
        cpu = float((op.resources or {}).get("cpu", 0) or 0)
        if gpu:
            visible = [g.index for g in gpus()]
            if not visible:
                raise ResourceError(
                    f"stage {op.label} asks for gpu={gpu:g} but this machine has no GPU; "
                    f"drop resources=, or declare logical GPUs with FORKJOIN_GPUS=0,1"
                )
            if gpu >= 1:
                per = int(gpu)
                self.gpu_sets = [
                    tuple(visible[i : i + per]) for i in range(0, len(visible) - per + 1, per)
                ]
            else:
                share = int(round(1 / gpu, 6)) if round(1 / gpu, 6).is_integer() else int(1 / gpu)
                self.gpu_sets = [(g,) for g in visible for _ in range(max(1, share))]
            capacity = len(self.gpu_sets)
        else:
            capacity = max(1, int(usable_cpu_count() // cpu) if cpu else usable_cpu_count())
        self.low, self.high = op.workers or (1, capacity)
        if gpu and self.high > capacity:
            raise ResourceError(
                f"stage {op.label} asks for {self.high} workers with gpu={gpu:g} each, but the "
                f"GPUs here hold {capacity}; lower workers= or the gpu fraction"
            )

    def start_actor(self) -> None:
        import forkjoin as fj

        op, config = self.op, self.config
        from .api import DATA_MODULES

        options: dict[str, Any] = {"backend": config.backend or "process", "progress": False}
        if options["backend"] == "process":
            options["preload"] = DATA_MODULES  # imported as the actor starts, not on a batch
        if self.cluster:
            pool = fj.Pool(workers=self.high, resources=op.resources, **options)
        else:
            index = self.started_actors
            gpus = self.gpu_sets[index] if self.gpu_sets else None
            pool = fj.Pool(
                workers=1,
                resources_per_worker=op.resources or None,
                gpus=list(gpus) if gpus else None,
                prefetch=ACTOR_IN_FLIGHT,
                **options,
            )
        self.started_actors += 1
        self.actors.append(_Actor(pool))
        if op.is_class and not self.cluster:  # the model loads now, while upstream reads
            pool.submit(warm_up, op).add_done_callback(_leave_to_first_block)

    @property
    def per_actor(self) -> int:
        """Blocks one actor may hold: ACTOR_IN_FLIGHT while blocks are quick, else one (see
        LONG_BLOCK_SECONDS); a block's time is unknown until one came back, so one at first."""
        seconds = self.last_block_seconds
        return ACTOR_IN_FLIGHT if seconds is not None and seconds < LONG_BLOCK_SECONDS else 1

    @property
    def capacity(self) -> int:
        per_actor = self.high * ACTOR_IN_FLIGHT if self.cluster else self.per_actor
        return per_actor * len(self.actors)

    def in_flight(self) -> int:
        return sum(actor.in_flight for actor in self.actors)

    def can_grow(self) -> bool:
        return not self.cluster and len(self.actors) < self.high

    def submit(self, item: Partition, wake: threading.Event) -> _Pending:
        actor = min(self.actors, key=lambda a: a.in_flight)
        fn = functools.partial(
            process_partition, spec=self.spec, ops=self.ops, terminal=self.terminal
        )
        future = actor.pool.submit(fn, item)
        actor.in_flight += 1
        future.add_done_callback(lambda _: wake.set())
        return _Pending(future, actor)

    def shutdown(self, cancel: bool) -> None:
        for actor in self.actors:
            actor.pool.shutdown(wait=True, cancel_futures=cancel)
        if self.op.is_class:
            close_instances(self.op.uid)  # instances built in this process (threads, inline)


def _leave_to_first_block(future: Future[Any]) -> None:
    """A warm-up that failed: the first block builds the class again and reports the error
    (a StageError naming the stage), so nothing is raised here."""
    future.exception()


def _result(pending: _Pending, stage: StageRun) -> PartResult:
    pending.settle(stage)
    try:
        result: PartResult = pending.future.result()
    except TaskError as exc:
        original = exc.original
        if isinstance(original, (StageError, DataError)):
            raise original.with_traceback(None) from exc.__cause__
        add_note = getattr(exc, "add_note", None)  # Python >= 3.11
        if add_note is not None:
            add_note(f"in stage {stage.op.label}")
        raise
    return result


def run_stage(
    stage: StageRun, inbox: Channel, stop: threading.Event, ordered: bool
) -> Iterator[PartResult]:
    """Dispatch the blocks arriving in ``inbox`` to the stage's actors; yield their results
    (in arrival order when ``ordered``). Waits on one event that finished blocks and new
    inputs set, so it never sleeps while there is work."""
    wake = threading.Event()
    inbox.wake = wake
    pending: deque[_Pending] = deque()
    exhausted = False
    busy_since: float | None = None
    # Whether the newest actor has finished a block: the stage's speed is judged only once it
    # has loaded (a model load alone would otherwise look like a bottleneck).
    newest_warm = False
    while True:
        wake.clear()
        if stop.is_set():
            raise Stopped()
        done = [p for p in pending if p.future.done()]
        for entry in done:
            entry.settle(stage)
        newest_warm = newest_warm or any(p.actor is stage.actors[-1] for p in done)
        if ordered:
            while pending and pending[0].future.done():
                yield _result(pending.popleft(), stage)
        else:
            for entry in done:
                pending.remove(entry)
                yield _result(entry, stage)
        # Blocks computing on the actors, and all the stage holds: finished blocks that wait
        # for an earlier one (ordered output) count against the second bound only.
        while (
            not exhausted
            and stage.in_flight() < stage.capacity
            and len(pending) < REORDER_FACTOR * stage.capacity
        ):
            try:
                item = inbox.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, End):
                if item.error is not None:
                    raise item.error
                exhausted = True
                break
            pending.append(stage.submit(item, wake))
        if exhausted and not pending:
            return
        # The stage is the bottleneck when blocks still wait for it after every actor got all
        # it can hold. (Not "the inbox is full": right after taking a block out, the inbox is
        # one short until the feeder thread refills it, which on a busy machine is most of
        # the time, so that test kept a bottleneck stage from ever growing.)
        bottleneck = stage.in_flight() >= stage.capacity and inbox.waiting()
        if bottleneck and newest_warm and stage.can_grow():
            now = time.monotonic()
            if busy_since is None:
                busy_since = now
            elif now - busy_since >= GROW_AFTER_SECONDS:
                stage.start_actor()
                busy_since = None
                newest_warm = False
                continue
        else:
            busy_since = None
        wake.wait(GROW_AFTER_SECONDS / 2 if busy_since is not None else 1.0)


def _blocks(result: PartResult, rows: int | None) -> Iterator[Partition]:
    table = result.table
    assert table is not None
    if rows is None or table.num_rows <= rows:
        yield Partition(result.index, "table", rows=table.num_rows, table=table)
        return
    for start in range(0, table.num_rows, rows):
        part = table.slice(start, rows)
        yield Partition(result.index, "table", rows=part.num_rows, table=part)


def _feed(
    source: Iterable[Any],
    to_blocks: Callable[[Any], Iterable[Partition]],
    out: Channel,
) -> None:
    """Feeder thread: hand each upstream result on as blocks; end the channel either way."""
    error: BaseException | None = None
    iterator = iter(source)
    try:
        for value in iterator:
            for block in to_blocks(value):
                out.put(block)
    except Stopped:
        return
    except BaseException as exc:  # handed to the consumer, who raises it
        error = exc
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()
    try:
        out.put(End(error))
    except Stopped:
        pass


def _split_ops(ops: Sequence[Op]) -> tuple[list[Op], list[tuple[StageOp, list[Op]]]]:
    """Row-wise ops before the first stage, then each stage with the row-wise ops after it."""
    head: list[Op] = []
    stages: list[tuple[StageOp, list[Op]]] = []
    for op in ops:
        if isinstance(op, StageOp):
            stages.append((op, []))
        elif stages:
            stages[-1][1].append(op)
        else:
            head.append(op)
    return head, stages


def run_pipeline(parts: Sequence[Partition], spec: ReadSpec, ops: Sequence[Op],
                 terminal: Terminal, config: RunConfig, stats: DataStats,
                 ordered: bool) -> Generator[PartResult, None, None]:  # fmt: skip
    """Results of a plan segment that holds stages (see the module docstring): what
    ``execute.run_partitions`` runs instead of its partition loop when ``ops`` hold a stage
    (it has checked that there are partitions and settled ``ordered``)."""
    from .execute import run_partitions

    head, stage_ops = _split_ops(ops)
    cluster = _is_cluster(config.backend)
    stop = threading.Event()
    stages: list[StageRun] = []
    threads: list[threading.Thread] = []
    head_stats = DataStats()
    # A sink writes one file per partition: its blocks must be whole partitions.
    splittable = terminal.kind != "write"
    failed = True
    try:
        for number, (op, after) in enumerate(stage_ops):
            last = number == len(stage_ops) - 1
            first_reads = number == 0 and not head
            stage = StageRun(
                op, (op, *after), spec if first_reads else _TABLE_SPEC,
                terminal if last else COLLECT, config, cluster,
            )  # fmt: skip
            stage.plan()
            stages.append(stage)
        for stage in stages:
            for _ in range(1 if stage.cluster else stage.low):  # a cluster stage: one Pool
                stage.start_actor()

        def block_rows(index: int) -> int | None:
            size = stages[index].op.batch_size
            return size * BATCHES_PER_BLOCK if (size and splittable) else None

        channels = [Channel(CHANNEL_BLOCKS, stop) for _ in stages]
        if head:
            upstream: Iterable[Any] = run_partitions(
                parts, spec, head, COLLECT, head_config(config, stages), head_stats,
                ordered=ordered,
            )  # fmt: skip
            rows = block_rows(0)
            first_blocks: Callable[[Any], Iterable[Partition]] = lambda r: _blocks(r, rows)  # noqa: E731
        else:
            upstream, first_blocks = parts, lambda p: (p,)
        threads.append(_thread(upstream, first_blocks, channels[0], "read"))
        for index in range(1, len(stages)):
            rows = block_rows(index)
            reader = index == 1 and not head  # its results carry the read counts
            source = _counted(
                run_stage(stages[index - 1], channels[index - 1], stop, ordered),
                head_stats if reader else None,
            )
            threads.append(
                _thread(source, functools.partial(_blocks, rows=rows), channels[index],
                        stages[index - 1].op.label)
            )  # fmt: skip
        for thread in threads:
            thread.start()
        final_reads = not head and len(stages) == 1
        for result in run_stage(stages[-1], channels[-1], stop, ordered):
            if not final_reads:
                result.counts = ReadCounts()  # its rows were counted when they were read
            stats.rows_out += result.rows
            stats.busy_seconds += result.seconds
            stats.add_counts(result.counts)
            if config.progress is not None:
                config.progress(result)
            yield result
        failed = False
    finally:
        stop.set()
        for thread in threads:
            thread.join(JOIN_SECONDS)
        for stage in stages:
            stage.shutdown(cancel=failed)
        stats.partitions += head_stats.partitions or len(parts)
        stats.add_counts(head_stats_counts(head_stats))
        stats.busy_seconds += head_stats.busy_seconds


def head_config(config: RunConfig, stages: Sequence[StageRun]) -> RunConfig:
    """Where the head runs (see the module docstring): the run's own configuration, or one
    thread in the caller when CPU stages hold every usable core from the start."""
    if config.pool is not None or config.backend not in (None, "process"):
        return config
    from ..machine import usable_cpu_count

    held = 0.0
    for stage in stages:
        if stage.cluster:
            return config
        if stage.gpu_sets:  # a GPU stage's workers wait on their GPU: the head needs the CPUs
            continue
        cpu = float((stage.op.resources or {}).get("cpu", 0) or 0) or 1.0
        held += stage.low * cpu
    if held < usable_cpu_count():
        return config
    return dataclasses.replace(config, backend="threads", workers=1)


def head_stats_counts(head: DataStats) -> ReadCounts:
    return ReadCounts(head.rows_read, head.rows_skipped, head.files_skipped, list(head.problems))


def _counted(results: Iterator[PartResult], into: DataStats | None) -> Iterator[PartResult]:
    """The results, their read counts added to ``into`` (the stage that read the files)."""
    for result in results:
        if into is not None:
            into.add_counts(result.counts)
        yield result


def _thread(source: Iterable[Any], to_blocks: Callable[[Any], Iterable[Partition]],
            out: Channel, label: str) -> threading.Thread:  # fmt: skip
    return threading.Thread(
        target=_feed, args=(source, to_blocks, out), name=f"fj-stage-feed {label}", daemon=True
    )


def _is_cluster(backend: str | None) -> bool:
    if backend is None:
        return False
    from ..backends.base import backend_class

    return bool(backend_class(backend).capabilities.cluster)
