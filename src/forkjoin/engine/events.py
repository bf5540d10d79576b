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
from collections import deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .task import Status, Task

# Most recent task records kept for analysis; older ones only live on in the counters.
MAX_TASK_RECORDS = 200_000
# Fresh records are folded into the counters at least this often (bounds the unfolded backlog).
FOLD_EVERY = 4096


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
    items_done: int = 0
    worker_crashes: int = 0
    timeouts: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
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
        self.tasks: deque[TaskRecord] = deque(maxlen=max_task_records)
        self.workers: list[WorkerRecord] = []
        self._fresh: deque[tuple[Any, ...]] = deque()  # records not yet folded into counters
        self._submitted: deque[int] = deque()
        self._fold_lock = threading.Lock()
        self._stats = Stats()

    # -- recording (hot path: no locks) ----------------------------------------------------------

    def task_submitted(self, n: int = 1) -> None:
        self._submitted.append(n)

    def task_finished(self, task: Task, status: Status) -> None:
        fresh = self._fresh
        fresh.append((
            task.task_id, task.worker, task.attempt, len(task.items), task.submit_time,
            task.start_time, task.end_time, time.monotonic(), task.bytes_sent,
            task.bytes_received, int(status),
        ))  # fmt: skip
        if len(fresh) >= FOLD_EVERY:
            self._fold()

    def task_retried(self) -> None:
        self._fresh.append(("retried",))

    def task_failed(self) -> None:
        self._fresh.append(("failed",))

    # -- the EventSink protocol for backends -----------------------------------------------------

    def worker_started(self, worker: int, pid: int, startup_seconds: float) -> None:
        self._fresh.append(
            ("worker", WorkerRecord(time.monotonic(), "start", worker, pid, startup_seconds, 0))
        )

    def worker_exited(self, worker: int, pid: int, exitcode: int | None, peak_rss: int) -> None:
        code = float(exitcode) if exitcode is not None else float("nan")
        self._fresh.append(
            ("worker", WorkerRecord(time.monotonic(), "exit", worker, pid, code, peak_rss))
        )

    # -- folding records into counters -----------------------------------------------------------

    def _fold(self) -> None:
        with self._fold_lock:
            stats = self._stats
            submitted = self._submitted
            while submitted:
                stats.tasks_submitted += submitted.popleft()
            fresh = self._fresh
            while fresh:
                record = fresh.popleft()
                if len(record) == len(TaskRecord._fields):
                    self._fold_task(TaskRecord._make(record))
                elif record[0] == "worker":
                    self._fold_worker(record[1])
                elif record[0] == "retried":
                    stats.tasks_retried += 1
                else:
                    stats.tasks_failed += 1

    def _fold_task(self, record: TaskRecord) -> None:
        self.tasks.append(record)
        stats = self._stats
        busy = record.end_time - record.start_time if record.end_time else 0.0
        stats.tasks_done += 1
        stats.bytes_sent += record.bytes_sent
        stats.bytes_received += record.bytes_received
        stats.busy_seconds += busy
        if record.start_time:
            stats.queue_seconds += max(0.0, record.start_time - record.submit_time)
        status = record.status
        if status == Status.DONE:
            stats.items_done += record.items
        elif status == Status.CRASHED:
            stats.worker_crashes += 1
        elif status == Status.TIMED_OUT:
            stats.timeouts += 1
        usage = stats.workers.get(record.worker)
        if usage is None:
            usage = stats.workers[record.worker] = WorkerUsage()
        usage.tasks += 1
        usage.items += record.items
        usage.busy_seconds += busy

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
            return list(self.tasks)

    def worker_records(self) -> list[WorkerRecord]:
        self._fold()
        with self._fold_lock:
            return list(self.workers)
