"""What each worker is running right now, read from the process backend's own bookkeeping.

The event log hears of a task only when it ends. The process backend already knows more, for
its own scheduling: each worker's ``in_flight`` tasks (sent, not yet answered, in the order the
worker runs them) and, in the worker's shared slot, the queue number of the last task it started
(``WorkerHandle.started_seq()``, what work stealing reads). A worker whose oldest unanswered
task has a number at or below the started one is running that task now.

Reading it here, from the dashboard's thread once per page request, costs the pool nothing per
task: no hook, no event. The read takes no lock, so every step tolerates the manager thread
changing the dicts underneath (a stale or missing answer for one request, never an error).
Backends other than ``process`` report nothing here; the page then shows "–".
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

MAX_WHAT_CHARS = 120


@dataclass(frozen=True)
class Running:
    """A task a worker has started and not yet answered."""

    worker: int
    what: str  # "item 17 (42)", "call 3: fetch(1)", "+ 49 more items" appended for a chunk
    items: int
    dispatched: float  # time.monotonic() when it was sent to the worker


def _backend_of(log: Any) -> Any:
    process = sys.modules.get("forkjoin.backends.process")
    if process is None:  # no process pool was ever started in this interpreter
        return None
    for backend in list(getattr(process, "_live_backends", ())):
        if getattr(backend, "events", None) is log:
            return backend
    return None


def running_tasks(log: Any) -> dict[int, Running] | None:
    """worker id -> the task it runs now, for the process backend that records into ``log``;
    None where that is not known (another backend, or one that has shut down)."""
    backend = _backend_of(log)
    if backend is None:
        return None
    out: dict[int, Running] = {}
    try:
        workers = list(backend._workers.values())
    except (AttributeError, RuntimeError):
        return None
    for worker in workers:
        try:
            entry = next(iter(worker.in_flight.values()), None)
            if entry is None:
                continue
            task = entry[0]
            if task.dispatch_seq > worker.started_seq():
                continue  # sent, still queued behind nothing: the worker has not begun it yet
            what = task.describe(0)
            if len(task.items) > 1:
                what += f" + {len(task.items) - 1} more items"
        except Exception:  # noqa: BLE001  (a read for a page must never fail the page)
            continue  # the dicts changed underneath, the slot closed, a user __repr__ raised
        if len(what) > MAX_WHAT_CHARS:
            what = what[: MAX_WHAT_CHARS - 3] + "..."
        out[worker.worker_id] = Running(worker.worker_id, what, len(task.items), task.dispatch_time)
    return out
