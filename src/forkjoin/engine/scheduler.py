"""The scheduler: one parallel call from items to merged results.

::

    items (any iterable, maybe endless)
      │  split: AutoChunker sizes each chunk from measured item cost (chunking.py)
      ▼
    Task(chunk, fn, attempt) ──submit──> backend ──runs──> done(task, outcome) ──> outcome queue
      ▲   at most `window` tasks submitted and not yet merged (backpressure)         │
      │                                                                             ▼
      └──── retry (worker died, retry_on) / bisect (isolate a bad item) <── handle outcome
                                                                                    │
                                  merge: in input order (OrderedMerge) or as they finish
                                                                                    ▼
                                                                       results to the caller

The caller's thread runs this loop as a generator: it pulls items only when the window has
room, so an endless generator keeps memory flat, and an exception from the input iterator
surfaces in the caller. Every finished task goes into the event log.
"""

from __future__ import annotations

import queue
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError
from typing import Any

from ..backends.base import Backend
from ..core.task import CallKind, FunctionRef, ItemFailure, Status, Task, TaskOutcome
from ..errors import SerializationError
from .chunking import AutoChunker, take_chunk
from .events import EventLog
from .merge import OrderedMerge
from .options import RunOptions
from .progress import ProgressBar

# Tasks submitted and not yet merged, per worker: enough to keep every worker fed while results
# travel back, few enough that memory stays bounded and a failure cancels little work.
IN_FLIGHT_PER_WORKER = 4
# Results buffered in ordered mode, waiting for an earlier slow task, as a multiple of the
# window: lets fast workers run ahead of one slow task without unbounded memory.
REORDER_ALLOWANCE = 4
# How long one wait for an outcome blocks before looping (keeps Ctrl-C prompt everywhere).
WAIT_SLICE_SECONDS = 1.0

_SKIPPED = object()
# Outcomes of a whole chunk that say nothing about which item caused them.
_ISOLATE = frozenset(
    {Status.CRASHED, Status.UNREADABLE, Status.TIMED_OUT, Status.OVER_MEMORY}
)
# A worker died or was stopped: the job streams results and sizes chunks for faults from then on.
_FAULTS = frozenset({Status.CRASHED, Status.TIMED_OUT, Status.OVER_MEMORY})


def _length(items: Iterable[Any]) -> int | None:
    try:
        return len(items)  # type: ignore[arg-type]
    except TypeError:
        return None


def retries_left(task: Task, options: RunOptions, error: BaseException | None = None) -> bool:
    """The retry policy, in one place: whether ``task`` runs again. A task whose worker died
    (``error`` None) runs again while attempts remain; one whose item raised, only if the caller
    named that exception in ``retry_on=``."""
    if task.attempt >= options.retries:
        return False
    if error is None:
        return True
    retry_on = options.retry_on
    if not retry_on:
        return False
    return isinstance(error, retry_on) or isinstance(getattr(error, "original", None), retry_on)


class Job:
    """One map / imap / map_reduce call running on a backend."""

    def __init__(
        self,
        backend: Backend,
        events: EventLog,
        fn: Callable[..., Any],
        items: Iterable[Any],
        options: RunOptions,
        kind: CallKind = CallKind.MAP,
    ) -> None:
        self.backend = backend
        self.events = events
        self.options = options
        self.kind = kind
        self.function = FunctionRef(fn)
        total = _length(items)
        self.items = iter(items)
        chunksize = options.chunksize
        if chunksize == "auto" and options.timeout is not None:
            chunksize = 1  # a timeout is per task; with one item per task it is per item
        self.chunker = AutoChunker(max(1, backend.workers), total, chunksize)
        self.window = options.max_in_flight or IN_FLIGHT_PER_WORKER * max(1, backend.workers)
        self.outcomes: queue.SimpleQueue[tuple[Task, TaskOutcome]] = queue.SimpleQueue()
        self.outstanding: dict[int, Task] = {}
        self.next_index = 0
        self.exhausted = False
        self.merge = OrderedMerge() if options.ordered else None
        self.skipped = 0
        # on_error="raise" with ordered results: a failure waits in the merge buffer until every
        # earlier result has been handed out, as Executor.map does; then it is raised.
        self.failures_waiting = 0
        self.failure_reached: BaseException | None = None
        self.total = total
        self.progress: ProgressBar | None = None
        # Stream results (see _fault_seen) once a fault is seen, or from the start where the
        # engine itself stops workers: a timeout, a memory limit.
        self.stream = options.timeout is not None or bool(getattr(backend, "memory_limit", None))
        # Called once when the job ends (api.py: lets go of a shared backend); None for a Pool's.
        self.finished: Callable[[], Any] | None = None

    # -- split and submit ------------------------------------------------------------------------

    def _done(self, task: Task, outcome: TaskOutcome) -> None:
        self.outcomes.put((task, outcome))  # called from backend threads

    def _has_room(self) -> bool:
        if len(self.outstanding) >= self.window:
            return False
        return self.merge is None or len(self.merge) < REORDER_ALLOWANCE * self.window

    def _fill(self) -> None:
        while not self.exhausted and self._has_room():
            size = self.chunker.next_size()
            chunk = take_chunk(self.items, size)
            if len(chunk) < size:
                self.exhausted = True
            if not chunk:
                break
            task = Task(
                function=self.function,
                kind=self.kind,
                items=chunk,
                first_index=self.next_index,
                timeout=self.options.timeout,
                seed=self.options.seed,
                resources=self.options.resources,
            )
            self.next_index += len(chunk)
            self._submit(task)

    def _submit(self, task: Task) -> None:
        if self.stream:
            task.stream = True
        self.outstanding[task.task_id] = task
        try:
            self.backend.submit(task, self._done)
        except SerializationError as exc:
            if exc.what == "function":
                raise
            if len(task) > 1:  # find out which items cannot be pickled; send the rest
                del self.outstanding[task.task_id]
                for single in task.split():
                    self._submit(single)
                return
            self.events.task_submitted()  # it never left, but it is accounted for like the rest
            self.outcomes.put((task, TaskOutcome(Status.DONE, [ItemFailure(exc)], any_failed=True)))
            return
        except BaseException:
            self.outstanding.pop(task.task_id, None)
            raise
        self.events.task_submitted()
        self.chunker.observe_bytes(len(task), task.bytes_sent)

    # -- run: wait for outcomes ------------------------------------------------------------------

    def _next_outcome(self) -> tuple[Task, TaskOutcome]:
        while True:
            try:
                return self.outcomes.get(timeout=WAIT_SLICE_SECONDS)
            except queue.Empty:
                if self.backend.reporting:
                    continue
            # The backend stopped and will report nothing more, yet tasks of this job are
            # outstanding: say so instead of waiting forever. An outcome may have landed
            # between the wait and the check, so look once more.
            try:
                return self.outcomes.get_nowait()
            except queue.Empty:
                from ..errors import BrokenPoolError

                raise BrokenPoolError(
                    f"the {self.backend.name} backend stopped (shut down or broken) while "
                    f"{len(self.outstanding)} task(s) of this call were outstanding, and will "
                    "report none of them: keep the pool open until the call's results are read, "
                    "or start a new pool"
                ) from None

    def __iter__(self) -> Iterator[Any]:
        """The results one by one (imap). Each is dropped from the batch as it is handed out,
        so the caller's ``del result`` frees it even while the rest of the batch waits."""
        for batch in self._batches():
            batch.reverse()
            pop = batch.pop
            while batch:
                yield pop()

    def collect(self) -> list[Any]:
        """All results as a list (map): whole batches are appended at C speed, not yielded one
        by one (per-item yields cost ~20% of a map of trivial items)."""
        results: list[Any] = []
        for batch in self._batches():
            results.extend(batch)
        return results

    def _batches(self) -> Iterator[list[Any]]:
        """Runs the job; yields results in batches, as each outcome is merged."""
        abnormal = False
        self.progress = ProgressBar(self.total, self.options.progress)
        try:
            while True:
                self._fill()
                if not self.outstanding:
                    if self.exhausted:
                        break
                    continue
                task, outcome = self._next_outcome()
                if self.outstanding.pop(task.task_id, None) is None:
                    continue  # a task this job already gave up on
                batch = self._handle(task, outcome)
                task = outcome = None  # type: ignore[assignment]  # hold no result while paused
                if batch:
                    yield batch
                if self.failure_reached is not None:
                    raise self.failure_reached
            if self.skipped:
                warnings.warn(
                    f"{self.skipped} item(s) failed and were skipped (on_error='skip')",
                    RuntimeWarning,
                    stacklevel=4,
                )
        except BaseException as exc:
            # Ctrl-C (or SystemExit) stops running tasks too; anything else lets them finish.
            abnormal = not isinstance(exc, (Exception, GeneratorExit))
            raise
        finally:
            self.progress.close()
            if self.outstanding:
                self.backend.cancel(list(self.outstanding.values()), kill_running=abnormal)
                self.outstanding.clear()
            if self.finished is not None:
                self.finished()

    # -- sync: decide what an outcome means ------------------------------------------------------

    def _handle(self, task: Task, outcome: TaskOutcome) -> list[Any]:
        status = outcome.status
        self.events.task_finished(task, status)
        options = self.options
        if status is Status.DONE:
            if task.end_time:
                self.chunker.observe_compute(len(task), task.end_time - task.start_time)
            if task.bytes_received:
                self.chunker.observe_bytes(len(task), task.bytes_received, "received")
            if outcome.any_failed:
                return self._with_failures(task, outcome.values)
            return self._emit(task.first_index, outcome.values)
        if status in _FAULTS:
            self._fault_seen(status)
            if outcome.values and len(task) > 1:
                return self._salvage(task, outcome)
        if status in _ISOLATE and len(task) > 1:
            return self._isolate(task, status)
        if status is Status.CRASHED and retries_left(task, options):
            self.events.task_retried()
            self._submit(task.retry())
            return []
        if status is Status.CANCELLED:
            raise CancelledError("the pool was shut down while this call was running")
        assert outcome.error is not None
        return self._with_failures(task, [ItemFailure(outcome.error)] * len(task))

    def _fault_seen(self, status: Status) -> None:
        """A worker died or was stopped: from now on this job's chunks stream their results
        (a crash loses only the last few milliseconds of a chunk), and the chunker sizes
        chunks for the rate of faults (chunking.AutoChunker.observe_fault)."""
        self.stream = True
        self.chunker.observe_fault()

    def _salvage(self, task: Task, outcome: TaskOutcome) -> list[Any]:
        """A chunk failed after its worker streamed the results of its first items: keep those,
        and send the rest as a new chunk. Progress was made, so the failure is held against
        no item yet; a rest that fails before reporting anything is isolated by bisection."""
        done = len(outcome.values)
        self.events.task_retried()
        self._submit(task.tail(done))
        if outcome.any_failed:
            return self._with_failures(task.head(done), outcome.values)
        return self._emit(task.first_index, outcome.values)

    def _isolate(self, task: Task, status: Status) -> list[Any]:
        """A chunk failed as a whole (its worker died, ran past timeout= or memory_limit=, or
        its call or results could not be unpickled): find the item(s) to blame by bisection.

        A chunk whose worker died is first sent again whole, once: a kill from outside (or the
        OOM killer choosing it) is not the chunk's fault. After that it is split in halves, and
        only a half that fails again is split further, so k bad items in a chunk of n cost
        O(k log n) tasks, not n (benchmarks/bench_stress.py). Halves keep the chunk's attempt:
        these failures are charged to no item until one item is alone.
        """
        if status is Status.CRASHED and not task.resent:
            self.events.task_retried()
            self._submit(task.resend())
            return []
        for half in task.halves():
            self._submit(half)
        return []

    def _with_failures(self, task: Task, values: list[Any]) -> list[Any]:
        """Retry what ``retry_on`` names; apply ``on_error`` to the rest."""
        out: list[Any] = []
        run_start = 0
        for position in _failure_positions(values):
            value = values[position]
            if retries_left(task, self.options, value.error):
                out += self._emit(task.first_index + run_start, values[run_start:position])
                run_start = position + 1
                retry = (task.single(position) if len(task) > 1 else task).retry()
                self.events.task_retried()
                self._submit(retry)
                continue
            self.events.task_failed(task, value.error)  # observe: kept for the dashboard
            if self.options.on_error == "raise":
                if self.merge is None:
                    raise value.error
                self.failures_waiting += 1  # stays in place as an ItemFailure until its turn
                continue
            if self.options.on_error == "skip":
                self.skipped += 1
                values[position] = _SKIPPED
            else:
                values[position] = value.error
        out += self._emit(task.first_index + run_start, values[run_start:])
        return out

    # -- merge -----------------------------------------------------------------------------------

    def _emit(self, first_index: int, values: list[Any]) -> list[Any]:
        if self.progress is not None and self.progress.active:
            self.progress.update(len(values))
        if self.merge is not None:
            self.merge.add(first_index, values)
            values = self.merge.pop_ready()
            if self.failures_waiting:
                for position, value in enumerate(values):
                    if isinstance(value, ItemFailure):
                        self.failure_reached = value.error
                        values = values[:position]
                        break
        if self.skipped:
            values = [v for v in values if v is not _SKIPPED]
        return values


def _failure_positions(values: list[Any]) -> list[int]:
    """Where the ItemFailures are in a chunk's results, found at C speed: a chunk of 30,000
    results with one failure was scanned item by item in Python (~0.3 us each, on the caller's
    thread), which made 500 raising items in 5 M cost a job 30% of its time."""
    types = list(map(type, values))
    positions: list[int] = []
    start = 0
    while True:
        try:
            position = types.index(ItemFailure, start)
        except ValueError:
            return positions
        positions.append(position)
        start = position + 1
