"""Worker context: what a task knows about the worker running it, and state kept per worker.

``forkjoin.worker_context().state`` is a dict that lives as long as the worker: a pool
``initializer`` (or the first task) loads an expensive model or tokenizer into it once, and every
later task on that worker reuses it (MPIRE's ``worker_state``, without changing the function's
signature). Process workers and threads each have their own; the inline backend has one, in the
caller, installed only while its tasks run.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any

_current = threading.local()


@dataclass
class WorkerContext:
    """The worker running the current task: its id in the pool, pid, backend, ``state``, and
    the device its tasks should use (``"cuda:0"`` in a process pinned to a GPU, else "cpu").
    On Ray and Dask the engine, not the pool, owns the workers: there the id is the pid."""

    worker_id: int
    backend: str
    pid: int = field(default_factory=os.getpid)
    state: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    gpus: tuple[int, ...] = ()  # the machine's indices of the GPUs this worker owns


def worker_context() -> WorkerContext:
    """The current worker's context. Raises RuntimeError outside a task or pool initializer."""
    context: WorkerContext | None = getattr(_current, "context", None)
    if context is None:
        raise RuntimeError(
            "forkjoin.worker_context() is only available inside a task or a pool initializer"
        )
    return context


def install(context: WorkerContext | None) -> WorkerContext | None:
    """Make ``context`` current in this thread; returns the one it replaces."""
    previous: WorkerContext | None = getattr(_current, "context", None)
    _current.context = context
    return previous
