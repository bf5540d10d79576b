"""What the live dashboard shows, read from the engine's event logs (no hook of its own).

Every ``TICK_SECONDS`` a ``LiveView`` reads each watched log's counters (``EventLog.stats()``:
a fold and a copy, tens of microseconds) into a short history: throughput over time, per-worker
busy share between ticks, the ETA of the running map. The page's request adds the latest task
records (the timeline) and failures. Nothing is read per task, so a pool that nobody watches
pays nothing and one that is watched pays a few reads a second (benchmarks/bench_observe.py).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..engine.events import EventLog, Stats, live_logs
from ..engine.task import Status
from .running import Running, running_tasks

TICK_SECONDS = 1.0
HISTORY_TICKS = 600  # ten minutes of throughput history per pool
TIMELINE_SECONDS = 30.0  # the task timeline shows this much of the recent past
TIMELINE_MAX_TASKS = 1500  # ...and at most this many tasks (the most recent)
TIMELINE_PIXEL_SECONDS = TIMELINE_SECONDS / 900  # the page draws it 900 pixels wide
RATE_WINDOW_TICKS = 5  # throughput for the ETA: items per second over the last few ticks
ENDED_AFTER_SECONDS = 2.0  # a pool with no worker alive and no task for this long has ended
MAX_ENDED_SHOWN = 20  # ended pools are listed in one line each, the most recent first
MAX_TRACEBACK_CHARS = 4000

_STATUS_NAMES = {int(s): s.name.lower() for s in Status}


@dataclass
class _Watched:
    """History of one event log (owned by the thread that calls ``tick``, under the view's
    lock)."""

    label: str
    number: int  # in the order the view first saw the logs: "Pool #3" keeps its name
    first_seen: float
    history: deque[tuple[float, int, int]] = field(
        default_factory=lambda: deque(maxlen=HISTORY_TICKS)
    )  # (time, items done, tasks done) per tick
    busy: dict[int, float] = field(default_factory=dict)  # worker -> busy share, last tick
    busy_seconds: dict[int, float] = field(default_factory=dict)  # at the previous tick
    job_time: float = -1.0  # the latest job seen starting, and items done when it was seen
    job_items: int | None = None
    job_base: int = 0
    last_stats: Stats | None = None
    last_active: float = 0.0  # the latest tick that saw a task submitted or done, or in flight
    shared_name: str = ""  # the backend name while it was fj.map's shared pool

    def ended(self, now: float) -> bool:
        """No worker alive, nothing in flight, for a while: the pool was shut down (or its
        workers are gone). Only backends that report worker exits (process) can end here."""
        stats = self.last_stats
        return (
            stats is not None
            and bool(stats.workers)
            and not any(usage.alive for usage in stats.workers.values())
            and stats.tasks_submitted <= stats.tasks_done
            and now - self.last_active > ENDED_AFTER_SECONDS
        )


TRAINING_RECORDS = 2000  # metric lines kept per training run (the chart's history)


@dataclass
class _Training:
    """A training gang's metrics log (JSON lines from rank 0's ``fj.train.log``), followed by
    reading what was appended since the last tick."""

    label: str
    path: str
    ranks: int
    started: float
    offset: int = 0
    running: bool = True
    partial: str = ""
    records: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=TRAINING_RECORDS))

    def read(self) -> None:
        try:
            with open(self.path, "rb") as file:
                file.seek(self.offset)
                chunk = file.read()
        except OSError:
            return
        self.offset += len(chunk)
        lines = (self.partial + chunk.decode("utf-8", "replace")).split("\n")
        self.partial = lines.pop()  # a line still being written
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                self.records.append(record)

    def state(self) -> dict[str, Any]:
        records = list(self.records)
        return {
            "label": self.label, "ranks": self.ranks, "running": self.running,
            "elapsed": time.monotonic() - self.started,
            "latest": records[-1] if records else {},
            "records": records[-500:],
        }  # fmt: skip


@dataclass
class _DataStage:
    """One stage of a ``forkjoin.data`` run (its operations fused into one task per partition):
    partitions and rows as they are merged, written by the caller's thread that merges them."""

    label: str
    partitions: int
    window: int
    started: float
    done: int = 0
    rows_in: int = 0
    rows_out: int = 0
    running: bool = True
    ended: float = 0.0
    history: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=HISTORY_TICKS))

    def partition_done(self, rows_in: int, rows_out: int) -> None:
        self.done += 1
        self.rows_in += rows_in
        self.rows_out += rows_out

    def state(self, now: float) -> dict[str, Any]:
        history = list(self.history)
        elapsed = (self.ended if not self.running else now) - self.started
        recent = _rate([(t, rows, 0) for t, rows in history[-RATE_WINDOW_TICKS - 1 :]])
        return {
            "label": self.label, "running": self.running, "partitions": self.partitions,
            "done": self.done, "in_flight": min(self.window, self.partitions - self.done)
            if self.running else 0,
            "rows_in": self.rows_in, "rows_out": self.rows_out, "elapsed": elapsed,
            "rows_per_s": recent if self.running else (self.rows_in / elapsed if elapsed else 0),
        }  # fmt: skip


class LiveView:
    """Watches event logs: the ones given, or (``logs=None``) every live one in the process."""

    def __init__(self, logs: list[EventLog] | None = None, title: str = "forkjoin") -> None:
        self.title = title
        self._fixed = logs
        self._watched: dict[int, tuple[EventLog, _Watched]] = {}
        self._training: list[_Training] = []
        self._data: deque[_DataStage] = deque(maxlen=20)  # the most recent stages
        self._numbered = 0
        self._lock = threading.Lock()
        self.started = time.monotonic()

    def _logs(self) -> list[EventLog]:
        return list(self._fixed) if self._fixed is not None else list(live_logs)

    def _relabel(self, log: EventLog, watched: _Watched) -> None:
        """Name the pool: fj.map's shared pool of a backend while it is the current one; one it
        replaced (another workers= asked) or shut down says so, so that two never look alike."""
        if self._fixed is not None:
            fixed = len(self._fixed) == 1
            watched.label = self.title if fixed else f"{self.title} #{watched.number}"
            return
        from ..engine.api import shared_pools

        for name, (_, _, events) in list(shared_pools._pools.items()):
            if events is log:
                watched.shared_name = name
                watched.label = f"fj.map / fj.imap ({name} backend)"
                return
        if watched.shared_name:
            watched.label = f"fj.map / fj.imap ({watched.shared_name} backend, earlier pool)"
        else:
            watched.label = f"Pool #{watched.number}"

    def follow_training(self, path: str, ranks: int, label: str = "") -> Any:
        """Show a training gang's metrics (the JSON lines file its rank 0 appends to); returns
        a handle for ``stop_training``."""
        with self._lock:
            number = len(self._training) + 1
            run = _Training(label or f"fj.train.launch #{number}", path, ranks, time.monotonic())
            self._training.append(run)
            return run

    def follow_data_stage(self, label: str, partitions: int, window: int) -> Any:
        """Show one ``forkjoin.data`` stage; the caller reports each merged partition on the
        returned handle (``partition_done``) and passes it to ``stop_data_stage`` at the end."""
        stage = _DataStage(label, partitions, max(1, window), time.monotonic())
        with self._lock:
            self._data.append(stage)
        return stage

    def stop_data_stage(self, stage: Any) -> None:
        stage.running = False
        stage.ended = time.monotonic()

    def stop_training(self, run: Any) -> None:
        """The gang ended: read the last lines; the run stays on the page, marked finished."""
        with self._lock:
            run.read()
            run.running = False

    def tick(self) -> None:
        """Sample every watched log's counters (called every ``TICK_SECONDS``)."""
        now = time.monotonic()
        with self._lock:
            for run in self._training:
                if run.running:
                    run.read()
            for stage in self._data:
                if stage.running:
                    stage.history.append((now, stage.rows_in))
            seen = set()
            for log in sorted(self._logs(), key=lambda log: log.created):
                key = id(log)
                seen.add(key)
                entry = self._watched.get(key)
                if entry is None or entry[0] is not log:
                    self._numbered += 1
                    entry = self._watched[key] = (log, _Watched("", self._numbered, now))
                    latest = log.recent_tasks(1)  # a pool seen late: when it last did something
                    entry[1].last_active = latest[0].merge_time if latest else log.created
                self._relabel(log, entry[1])
                self._sample(log, entry[1], now)
            for key in set(self._watched) - seen:
                del self._watched[key]

    @staticmethod
    def _sample(log: EventLog, watched: _Watched, now: float) -> None:
        stats = log.stats()
        last = watched.last_stats
        if stats.tasks_submitted > stats.tasks_done or (
            last is not None
            and (stats.tasks_submitted, stats.tasks_done) != (last.tasks_submitted, last.tasks_done)
        ):
            watched.last_active = now
        previous = watched.history[-1] if watched.history else None
        watched.history.append((now, stats.items_done, stats.tasks_done))
        span = now - previous[0] if previous else 0.0
        for worker, usage in stats.workers.items():
            before = watched.busy_seconds.get(worker)
            if before is not None and span > 0:
                watched.busy[worker] = max(0.0, min(1.0, (usage.busy_seconds - before) / span))
            watched.busy_seconds[worker] = usage.busy_seconds
        if log.jobs:
            job = log.jobs[-1]
            if job.time != watched.job_time:
                # Items done before the job began: now's count less what the job's own tasks,
                # finished since the previous tick, have done.
                since_tick = stats.tasks_done - (previous[2] if previous else 0)
                mine = sum(
                    r.items for r in log.recent_tasks(max(0, since_tick))
                    if r.submit_time >= job.time and r.status == Status.DONE
                )  # fmt: skip
                watched.job_time, watched.job_items = job.time, job.items
                watched.job_base = stats.items_done - mine
        watched.last_stats = stats

    # -- the page's data -------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything the page draws, as JSON-ready values (times in seconds before now)."""
        now = time.monotonic()
        with self._lock:
            entries = [(log, w) for log, w in self._watched.values() if w.last_stats]
            training = [run.state() for run in self._training]
            data = [stage.state(now) for stage in self._data]
        # The pool that did something last comes first: a running job is at the top of the
        # page however many pools the process made before it.
        entries.sort(key=lambda entry: (entry[1].last_active, entry[1].number), reverse=True)
        ended = [entry for entry in entries if entry[1].ended(now)]
        return {
            "title": self.title,
            "pid": os.getpid(),
            "uptime": now - self.started,
            "pools": [self._pool_state(log, w, now) for log, w in entries if not w.ended(now)],
            "ended": [_ended_state(w, now) for _, w in ended[:MAX_ENDED_SHOWN]],
            "ended_count": len(ended),
            "training": training,
            "data": data,
        }

    def _pool_state(self, log: EventLog, watched: _Watched, now: float) -> dict[str, Any]:
        stats = log.stats()  # fresh counters (a fold and a copy); rates come from the ticks
        history = list(watched.history)
        rate = _rate(history[-RATE_WINDOW_TICKS - 1 :])
        job: dict[str, Any] = {"items": watched.job_items}
        if watched.job_time >= 0:
            done = max(0, stats.items_done - watched.job_base)
            job["done"] = done
            job["elapsed"] = now - watched.job_time
            if watched.job_items is not None:
                left = max(0, watched.job_items - done)
                job["eta"] = left / rate if rate > 0 else (0.0 if left == 0 else None)
        records = log.recent_tasks(TIMELINE_MAX_TASKS)
        known = running_tasks(log)
        running = known or {}
        starts = _running_starts(records, running)
        return {
            "label": watched.label,
            "stats": {
                "tasks_submitted": stats.tasks_submitted,
                "tasks_done": stats.tasks_done,
                "tasks_failed": stats.tasks_failed,
                "tasks_retried": stats.tasks_retried,
                "in_flight": max(0, stats.tasks_submitted - stats.tasks_done),
                "items_done": stats.items_done,
                "worker_crashes": stats.worker_crashes,
                "timeouts": stats.timeouts,
                "bytes_sent": stats.bytes_sent,
                "bytes_received": stats.bytes_received,
                "throughput": rate,
            },
            "job": job,
            "current_known": known is not None,
            "workers": _workers(stats, watched, running, starts, now),
            "throughput": _series(history, now),
            "timeline": _timeline(records, running, starts, now),
            "failures": _failures(log, now),
        }


def _ended_state(watched: _Watched, now: float) -> dict[str, Any]:
    """One line for a pool that has shut down: what it did, and when it last did it."""
    stats = watched.last_stats
    assert stats is not None
    return {
        "label": watched.label, "tasks_done": stats.tasks_done, "items_done": stats.items_done,
        "tasks_failed": stats.tasks_failed, "ago": round(now - watched.last_active, 1),
    }  # fmt: skip


def _rate(history: list[tuple[float, int, int]]) -> float:
    if len(history) < 2 or history[-1][0] <= history[0][0]:
        return 0.0
    return (history[-1][1] - history[0][1]) / (history[-1][0] - history[0][0])


def _series(history: list[tuple[float, int, int]], now: float) -> dict[str, list[float]]:
    """Items/s between consecutive ticks, against seconds-before-now."""
    t, rate = [], []
    for (t0, items0, _), (t1, items1, _) in zip(history, history[1:], strict=False):
        if t1 > t0:
            t.append(round(t1 - now, 3))
            rate.append(round((items1 - items0) / (t1 - t0), 3))
    return {"t": t, "items_per_s": rate}


_processes: dict[int, Any] = {}  # pid -> psutil.Process: created once (it parses /proc)


def _rss(pid: int) -> int | None:
    try:
        import psutil

        process = _processes.get(pid)
        if process is None:
            if len(_processes) > 256:  # pids of workers long gone
                _processes.clear()
            process = _processes[pid] = psutil.Process(pid)
        return int(process.memory_info().rss)
    except Exception:  # gone, or not ours to read
        _processes.pop(pid, None)
        return None


def _running_starts(records: list[Any], running: dict[int, Running]) -> dict[int, float]:
    """When each running task began, as near as the caller knows: it was sent at
    ``dispatched``; if it waited in the worker's queue, it began when the worker's previous
    task ended (the worker picks the next one up at once)."""
    last_end: dict[int, float] = {}
    for record in reversed(records):  # newest first: stop once every running worker is found
        if len(last_end) == len(running):
            break
        if record.worker in running and record.worker not in last_end:
            last_end[record.worker] = record.end_time
    return {
        worker: max(task.dispatched, last_end.get(worker, 0.0))
        for worker, task in running.items()
    }  # fmt: skip


def _workers(
    stats: Stats,
    watched: _Watched,
    running: dict[int, Running],
    starts: dict[int, float],
    now: float,
) -> list[dict[str, Any]]:
    rows = []
    for worker, usage in sorted(stats.workers.items()):
        if worker < 0:
            continue  # tasks that never reached a worker
        task = running.get(worker) if usage.alive else None
        rows.append({
            "current": task.what if task else None,
            "running_for": round(now - starts[worker], 2) if task else None,
            "worker": worker, "pid": usage.pid or None, "alive": usage.alive,
            "tasks": usage.tasks, "items": usage.items,
            "busy": watched.busy.get(worker), "busy_seconds": usage.busy_seconds,
            "rss": _rss(usage.pid) if usage.pid and usage.alive else None,
            "peak_rss": usage.peak_rss or None,
        })  # fmt: skip
    return rows


def _timeline(
    records: list[Any], running: dict[int, Running], starts: dict[int, float], now: float
) -> list[list[Any]]:
    """[worker, start, end, status] bars of the recent tasks, seconds before now; the tasks
    running now end at 0 with status "running".

    Back-to-back tasks of a worker with the same outcome are merged into one bar when the gap
    between them is under one pixel of the page's timeline: at thousands of tasks a second
    the page gets a few bars instead of a row per task (what it costs the caller to answer).
    """
    rows: list[list[Any]] = []
    open_bars: dict[int, list[Any]] = {}  # worker -> its latest bar, still growing
    oldest = now - TIMELINE_SECONDS
    for _, worker, _, _, _, start, end, _, _, _, status in records:  # TaskRecord fields
        if end < oldest:
            continue
        if start <= 0:
            start = end
        bar = open_bars.get(worker)
        if bar is not None and bar[3] == status and start - bar[2] <= TIMELINE_PIXEL_SECONDS:
            if end > bar[2]:
                bar[2] = end
            continue
        bar = open_bars[worker] = [worker, start, end, status]
        rows.append(bar)
    for bar in rows:
        bar[1] = round(bar[1] - now, 3)
        bar[2] = round(bar[2] - now, 3)
        bar[3] = _STATUS_NAMES.get(bar[3], "?")
    for worker in running:
        start = round(max(starts[worker] - now, -TIMELINE_SECONDS), 3)
        rows.append([worker, start, 0.0, "running"])
    return rows


def _failures(log: EventLog, now: float) -> list[dict[str, Any]]:
    out = []
    for record in reversed(log.failure_records()):  # newest first
        text = record.traceback
        if len(text) > MAX_TRACEBACK_CHARS:
            text = "...\n" + text[-MAX_TRACEBACK_CHARS:]
        out.append({
            "ago": round(now - record.time, 2), "what": record.what, "error": record.error,
            "worker": record.worker, "attempt": record.attempt, "traceback": text,
        })  # fmt: skip
    return out
