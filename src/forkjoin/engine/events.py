"""The event log: an always-on, cheap record of what every task and worker did.

Per finished task it keeps one tuple (a ``TaskRecord``): when it was submitted, started and ended,
on which worker, which attempt, how many items, bytes each way and how it ended. Workers add
start and exit records. Counters are kept up to date as records arrive so that ``stats()`` and the
progress bar never scan the log. Recording costs one tuple and a few additions under a lock
(~1-2 us per task; benchmarks/bench_engine.py measures it). The per-task records are kept in a
ring buffer (``MAX_TASK_RECORDS``) so that a process that runs millions of tasks stays flat.
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
    """Records tasks and workers; thread-safe; cheap enough to be always on."""

    def __init__(self, max_task_records: int = MAX_TASK_RECORDS) -> None:
        self.created = time.monotonic()
        self.tasks: deque[TaskRecord] = deque(maxlen=max_task_records)
        self.workers: list[WorkerRecord] = []
        self._lock = threading.Lock()
        self._stats = Stats()

    # -- recording (hot path) --------------------------------------------------------------------

    def task_submitted(self, n: int = 1) -> None:
        with self._lock:
            self._stats.tasks_submitted += n

    def task_finished(self, task: Task, status: Status) -> None:
        merge_time = time.monotonic()
        record = TaskRecord(
            task.task_id,
            task.worker,
            task.attempt,
            len(task.items),
            task.submit_time,
            task.start_time,
            task.end_time,
            merge_time,
            task.bytes_sent,
            task.bytes_received,
            int(status),
        )
        busy = task.end_time - task.start_time if task.end_time else 0.0
        with self._lock:
            self.tasks.append(record)
            stats = self._stats
            stats.tasks_done += 1
            stats.bytes_sent += task.bytes_sent
            stats.bytes_received += task.bytes_received
            stats.busy_seconds += busy
            if task.start_time:
                stats.queue_seconds += max(0.0, task.start_time - task.submit_time)
            if status is Status.DONE:
                stats.items_done += len(task.items)
            elif status is Status.CRASHED:
                stats.worker_crashes += 1
            elif status is Status.TIMED_OUT:
                stats.timeouts += 1
            usage = stats.workers.get(task.worker)
            if usage is None:
                usage = stats.workers[task.worker] = WorkerUsage()
            usage.tasks += 1
            usage.items += len(task.items)
            usage.busy_seconds += busy

    def task_retried(self) -> None:
        with self._lock:
            self._stats.tasks_retried += 1

    def task_failed(self) -> None:
        with self._lock:
            self._stats.tasks_failed += 1

    # -- the EventSink protocol for backends -----------------------------------------------------

    def worker_started(self, worker: int, pid: int, startup_seconds: float) -> None:
        with self._lock:
            self.workers.append(
                WorkerRecord(time.monotonic(), "start", worker, pid, startup_seconds, 0)
            )
            self._stats.workers_started += 1
            usage = self._stats.workers.setdefault(worker, WorkerUsage())
            usage.pid, usage.alive = pid, True

    def worker_exited(self, worker: int, pid: int, exitcode: int | None, peak_rss: int) -> None:
        with self._lock:
            code = float(exitcode) if exitcode is not None else float("nan")
            self.workers.append(WorkerRecord(time.monotonic(), "exit", worker, pid, code, peak_rss))
            usage = self._stats.workers.setdefault(worker, WorkerUsage(pid=pid))
            usage.alive = False
            usage.peak_rss = max(usage.peak_rss, peak_rss)

    # -- reading ---------------------------------------------------------------------------------

    def stats(self) -> Stats:
        """A consistent copy of the counters."""
        with self._lock:
            snapshot = Stats(
                **{
                    name: getattr(self._stats, name)
                    for name in self._stats.__dataclass_fields__
                    if name != "workers"
                }
            )
            snapshot.workers = {k: WorkerUsage(**vars(v)) for k, v in self._stats.workers.items()}
        snapshot.elapsed_seconds = time.monotonic() - self.created
        return snapshot

    def items_done(self) -> int:
        return self._stats.items_done

    def task_records(self) -> list[TaskRecord]:
        with self._lock:
            return list(self.tasks)
