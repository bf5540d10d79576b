"""The event log: an always-on, cheap record of what every task and worker did.

Per finished task it keeps one tuple (a ``TaskRecord``): when it was submitted, started and ended,
on which worker, which attempt, how many items, bytes each way and how it ended. Workers add
start and exit records.

Recording must cost next to nothing, from several threads at once (a pool's manager thread and
the callers' threads), so it takes no lock: a record is a plain tuple appended to a deque (atomic
under the GIL). Counters are folded in from those tuples lazily, when someone reads them or every
``FOLD_EVERY`` records, under a lock that only folding takes. The per-task records are kept in a
ring buffer (``MAX_TASK_RECORDS``) so that a process that runs millions of tasks stays flat.
benchmarks/bench_engine.py measures the cost per task.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import Counter, deque
from dataclasses import dataclass, field
from itertools import compress
from typing import Any, NamedTuple

from ..core.task import Status, Task

# Most recent task records kept for analysis; older ones only live on in the counters.
MAX_TASK_RECORDS = 65_536
# Task records are summed per worker with one C-speed pass over the batch per worker while the
# batch names at most this many workers; beyond (a job whose workers keep dying and being
# replaced names hundreds), with one Python pass over the batch.
_FEW_WORKERS = 16
_now = time.monotonic

# Fresh records are folded into the counters at least this often (bounds the unfolded backlog).
FOLD_EVERY = 4096
# Most recent failures kept with their tracebacks (for the live dashboard), and job starts.
MAX_FAILURE_RECORDS = 100
MAX_JOB_RECORDS = 100


class TaskRecord(NamedTuple):
    task_id: int
    worker: int
    attempt: int
    items: int
    submit_time: float
    start_time: float
    end_time: float
    merge_time: float
    bytes_sent: int
    bytes_received: int
    status: int  # a task.Status value


class WorkerRecord(NamedTuple):
    time: float
    event: str  # "start" or "exit"
    worker: int
    pid: int
    detail: float  # start-up seconds for "start", exit code for "exit"
    peak_rss: int


class FailureRecord(NamedTuple):
    time: float
    task_id: int
    worker: int
    attempt: int
    what: str  # the item (or call) that failed, as error messages name it
    error: str  # the exception's type and message
    traceback: str  # the worker's traceback when it sent one, else the caller's


class JobRecord(NamedTuple):
    time: float
    items: int | None  # None: an iterator of unknown length


@dataclass
class WorkerUsage:
    tasks: int = 0
    items: int = 0
    busy_seconds: float = 0.0
    pid: int = 0
    peak_rss: int = 0
    alive: bool = True


@dataclass
class Stats:
    """A snapshot of a pool's (or the process's) activity, from the event log."""

    tasks_submitted: int = 0
    tasks_done: int = 0
    tasks_failed: int = 0
    tasks_retried: int = 0
    tasks_taken_back: int = 0  # queued behind a slow task, given to an idle worker instead
    items_done: int = 0
    worker_crashes: int = 0
    timeouts: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    bytes_shared: int = 0  # copied once for many tasks (fj.shared objects, functions, initargs)
    busy_seconds: float = 0.0
    queue_seconds: float = 0.0
    elapsed_seconds: float = 0.0
    workers_started: int = 0
    workers: dict[int, WorkerUsage] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        """Items per second of wall time since the log started."""
        return self.items_done / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        out = asdict(self)
        out["throughput"] = self.throughput
        return out


class EventLog:
    """Records tasks and workers; thread-safe without locks on the recording path."""

    def __init__(self, max_task_records: int = MAX_TASK_RECORDS) -> None:
        self.created = time.monotonic()
        self.tasks: deque[tuple[Any, ...]] = deque(maxlen=max_task_records)  # TaskRecord fields
        self.workers: list[WorkerRecord] = []
        self._fresh_tasks: deque[tuple[Any, ...]] = deque()  # not yet folded into counters
        self._fresh_events: deque[tuple[str, Any]] = deque()
        self._submitted: deque[int] = deque()
        self._fold_lock = threading.Lock()
        self._stats = Stats()
        self.failures: deque[FailureRecord] = deque(maxlen=MAX_FAILURE_RECORDS)
        self.jobs: deque[JobRecord] = deque(maxlen=MAX_JOB_RECORDS)
        live_logs.add(self)

    # -- recording (hot path: no locks, one tuple) -----------------------------------------------

    def task_submitted(self, n: int = 1) -> None:
        self._submitted.append(n)

    def task_finished(self, task: Task, status: Status) -> None:
        fresh = self._fresh_tasks
        now = _now()
        end = task.end_time or now  # a task that never ran counts as starting and ending here
        fresh.append((
            task.task_id, task.worker, task.attempt, len(task.items), task.submit_time,
            task.start_time or end, end, now, task.bytes_sent, task.bytes_received, status,
        ))  # fmt: skip
        if len(fresh) >= FOLD_EVERY:
            self._fold()

    def task_retried(self) -> None:
        self._fresh_events.append(("retried", None))

    def task_failed(self, task: Task | None = None, error: BaseException | None = None) -> None:
        """A task's failure was handed to the caller; with ``task`` and ``error`` it is also
        kept (described at fold time, off the hot path) for the live dashboard."""
        detail = None if task is None else (_now(), task, error)
        self._fresh_events.append(("failed", detail))

    def job_started(self, items: int | None) -> None:
        """A map over ``items`` items (None: unknown) began: lets a live view show an ETA."""
        self.jobs.append(JobRecord(_now(), items))

    # -- the EventSink protocol for backends -----------------------------------------------------

    def tasks_taken_back(self, count: int) -> None:
        """A backend moved ``count`` queued tasks from a busy worker to idle ones."""
        self._fresh_events.append(("taken back", count))

    def data_shared(self, nbytes: int) -> None:
        """A backend copied ``nbytes`` once to serve many tasks (an ``fj.shared`` object)."""
        self._fresh_events.append(("shared", nbytes))

    def worker_started(self, worker: int, pid: int, startup_seconds: float) -> None:
        record = WorkerRecord(_now(), "start", worker, pid, startup_seconds, 0)
        self._fresh_events.append(("worker", record))

    def worker_exited(self, worker: int, pid: int, exitcode: int | None, peak_rss: int) -> None:
        code = float(exitcode) if exitcode is not None else float("nan")
        self._fresh_events.append(
            ("worker", WorkerRecord(_now(), "exit", worker, pid, code, peak_rss))
        )

    # -- folding records into counters -----------------------------------------------------------

    def _fold(self) -> None:
        with self._fold_lock:
            stats = self._stats
            submitted = self._submitted
            while submitted:
                stats.tasks_submitted += submitted.popleft()
            self._fold_tasks()
            events = self._fresh_events
            failed: deque[Any] = deque(maxlen=MAX_FAILURE_RECORDS)  # only these are kept
            while events:
                kind, record = events.popleft()
                if kind == "worker":
                    self._fold_worker(record)
                elif kind == "retried":
                    stats.tasks_retried += 1
                elif kind == "shared":
                    stats.bytes_shared += record
                elif kind == "taken back":
                    stats.tasks_taken_back += record
                else:
                    stats.tasks_failed += 1
                    if record is not None:
                        failed.append(record)
            # Formatting a traceback costs ~2 ms: only for the records that will be kept.
            self.failures.extend(_failure_record(*record) for record in failed)

    def _fold_tasks(self) -> None:
        """Sum the fresh task records into the counters, column by column (C-speed sums)."""
        fresh = self._fresh_tasks
        if not fresh:
            return
        pop = fresh.popleft
        batch = [pop() for _ in range(len(fresh))]  # appends may continue meanwhile
        self.tasks.extend(batch)
        columns = zip(*batch)  # noqa: B905  (records all have the same length)
        _, workers, _, sizes, submits, starts, ends, _, sent, received, statuses = columns
        stats = self._stats
        stats.tasks_done += len(batch)
        stats.bytes_sent += sum(sent)
        stats.bytes_received += sum(received)
        stats.busy_seconds += sum(ends) - sum(starts)
        stats.queue_seconds += sum(starts) - sum(submits)
        done = statuses.count(Status.DONE)  # tuple.count: no hashing of enum members
        if done == len(batch):
            stats.items_done += sum(sizes)
        else:
            stats.items_done += sum(n for n, s in zip(sizes, statuses, strict=True) if s == 0)
            stats.worker_crashes += statuses.count(Status.CRASHED)
            stats.timeouts += statuses.count(Status.TIMED_OUT)
        usage_of = stats.workers
        counts = Counter(workers)
        if len(counts) > _FEW_WORKERS:  # one pass: a selection per worker would be quadratic
            for worker, size, start, end in zip(workers, sizes, starts, ends, strict=True):
                usage = usage_of.get(worker)
                if usage is None:
                    usage = usage_of[worker] = WorkerUsage()
                usage.tasks += 1
                usage.items += size
                usage.busy_seconds += end - start
            return
        for worker, count in counts.items():
            usage = usage_of.get(worker)
            if usage is None:
                usage = usage_of[worker] = WorkerUsage()
            usage.tasks += count
            if count == len(batch):
                usage.items += sum(sizes)
                usage.busy_seconds += sum(ends) - sum(starts)
            else:  # C-speed selection per worker: workers are few, records many
                mine = list(map(worker.__eq__, workers))
                usage.items += sum(compress(sizes, mine))
                usage.busy_seconds += sum(compress(ends, mine)) - sum(compress(starts, mine))

    def _fold_worker(self, record: WorkerRecord) -> None:
        self.workers.append(record)
        stats = self._stats
        usage = stats.workers.setdefault(record.worker, WorkerUsage(pid=record.pid))
        usage.pid = record.pid
        if record.event == "start":
            stats.workers_started += 1
            usage.alive = True
        else:
            usage.alive = False
            usage.peak_rss = max(usage.peak_rss, record.peak_rss)

    # -- reading ---------------------------------------------------------------------------------

    def stats(self) -> Stats:
        """A consistent copy of the counters."""
        self._fold()
        with self._fold_lock:
            snapshot = Stats(**{
                name: getattr(self._stats, name)
                for name in self._stats.__dataclass_fields__ if name != "workers"
            })  # fmt: skip
            snapshot.workers = {k: WorkerUsage(**vars(v)) for k, v in self._stats.workers.items()}
        snapshot.elapsed_seconds = time.monotonic() - self.created
        return snapshot

    def task_records(self) -> list[TaskRecord]:
        self._fold()
        with self._fold_lock:
            return [TaskRecord._make(record) for record in self.tasks]

    def recent_tasks(self, limit: int) -> list[TaskRecord]:
        """The last ``limit`` task records, oldest first (cheap: copies only those)."""
        self._fold()
        with self._fold_lock:
            tasks = self.tasks
            start = max(0, len(tasks) - limit)
            return [TaskRecord._make(tasks[i]) for i in range(start, len(tasks))]

    def failure_records(self) -> list[FailureRecord]:
        self._fold()
        with self._fold_lock:
            return list(self.failures)

    def worker_records(self) -> list[WorkerRecord]:
        self._fold()
        with self._fold_lock:
            return list(self.workers)


# Every event log alive in this process (one per Pool, one per shared pool): what
# ``forkjoin.dashboard()`` shows. Registered once per pool, never on the per-task path.
live_logs: weakref.WeakSet[EventLog] = weakref.WeakSet()


def _failure_record(when: float, task: Task, error: BaseException | None) -> FailureRecord:
    import traceback

    what = task.describe(0) if len(task) == 1 else (
        f"items {task.first_index}..{task.first_index + len(task) - 1}"
    )  # fmt: skip
    if error is None:
        return FailureRecord(when, task.task_id, task.worker, task.attempt, what, "", "")
    cause = error.__cause__
    remote = str(cause) if cause is not None and type(cause).__name__.endswith("Traceback") else ""
    text = remote or "".join(traceback.format_exception(type(error), error, error.__traceback__))
    message = f"{type(error).__name__}: {error}"
    return FailureRecord(when, task.task_id, task.worker, task.attempt, what, message, text)
