"""The backend contract: how tasks run, behind one small interface.

The engine splits work into ``Task``s, hands each to ``Backend.submit`` with a callback, and
reads capability flags, never concrete classes. A backend runs the task somewhere (this thread,
a thread pool, worker processes, a cluster) and calls ``done(task, outcome)`` exactly once per
task it accepted, from any thread. Backends are resolved by name here and only here.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..core.resources import Slot, default_slots
from ..core.task import ItemFailure, Status, Task, TaskOutcome
from ..errors import BackendUnavailableError, make_task_error

DoneCallback = Callable[[Task, TaskOutcome], None]


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do; the engine adapts to these flags."""

    isolates_crashes: bool = False  # a task that kills its worker cannot take the caller down
    supports_timeout: bool = False  # can stop a task that runs past its timeout
    supports_memory_limit: bool = False  # can stop a worker that outgrows memory_limit=
    parallel: bool = True  # tasks may run at the same time
    serializes: bool = False  # arguments and results are pickled (so must be picklable)
    # Runs on a cluster engine (Ray, Dask): resources are the cluster's, not this machine's; it
    # takes address= and cluster_options=, and workers=0 lets the cluster size the pool.
    cluster: bool = False
    recycles_workers: bool = False  # honours max_tasks_per_child= (a fresh worker after N tasks)


class EventSink(Protocol):
    """Where a backend reports worker lifecycle (the engine's EventLog implements it)."""

    def worker_started(self, worker: int, pid: int, startup_seconds: float) -> None: ...

    def worker_exited(self, worker: int, pid: int, exitcode: int | None, peak_rss: int) -> None: ...

    def data_shared(self, nbytes: int) -> None: ...

    def tasks_taken_back(self, count: int) -> None: ...


class Backend(ABC):
    """A place tasks run. Subclasses set ``name`` and ``capabilities``."""

    name: str = ""
    capabilities: Capabilities = Capabilities()

    def __init__(
        self,
        workers: int,
        *,
        events: EventSink | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        memory_limit: int | None = None,
        slots: list[Slot] | None = None,
        prefetch: int = 1,
        max_tasks_per_child: int | None = None,
        preload: Sequence[str] = (),
    ) -> None:
        self.workers = workers
        # Replace a worker after it ran this many tasks (chunks), as ProcessPoolExecutor does:
        # bounds what a leaky library can accumulate in one process.
        self.max_tasks_per_child = max_tasks_per_child
        self.memory_limit = memory_limit
        # What each worker owns (core/resources.py): GPUs to pin, native thread caps.
        self.slots = slots if slots is not None else default_slots(workers)
        # Tasks a worker may hold at least (running + queued): 2 overlaps receiving the next
        # task with running this one, for long tasks whose inputs are large (device batches).
        self.prefetch = prefetch
        self.events = events
        self.initializer = initializer
        self.initargs = initargs
        # Modules the workers will import as they start (the initializer imports them: see
        # engine/preload.py). A backend that forks its workers from a template process imports
        # them there once, so that every worker starts with them.
        self.preload = tuple(preload)

    @abstractmethod
    def submit(self, task: Task, done: DoneCallback) -> None:
        """Start ``task`` eventually; call ``done`` once when it is over.

        Raises ``SerializationError`` at once if the task cannot be sent (nothing is started).
        """

    def cancel(self, tasks: Iterable[Task], *, kill_running: bool = False) -> None:
        """Drop these tasks if not started; with ``kill_running`` also stop the ones running.

        No callback is made for a task dropped this way. The default marks them cancelled,
        which every backend checks before starting a task.
        """
        for task in tasks:
            task.cancelled = True

    @abstractmethod
    def shutdown(self, wait: bool = True, *, cancel_pending: bool = False) -> None:
        """Stop accepting work; with ``cancel_pending``, pending tasks end as CANCELLED and
        running ones are stopped where the backend can; with ``wait``, return once all is down."""

    @property
    def alive(self) -> bool:
        """False once the backend can no longer run tasks (shut down or broken)."""
        return True

    @property
    def reporting(self) -> bool:
        """Whether an outcome may still come: while alive, and after a graceful shutdown until
        every task it accepted has been reported. A job waiting on tasks stops once this is
        False (the backend died under it), instead of waiting forever."""
        return self.alive

    def worker_pids(self) -> list[int]:
        """PIDs of live worker processes (empty for in-process backends)."""
        return []

    def service_pids(self) -> list[int]:
        """PIDs of processes the backend runs besides its workers (the process backend's
        zygote, which forks them); they end with the backend."""
        return []


# -- building outcomes ---------------------------------------------------------------------------


def task_error(
    task: Task,
    position: int,
    original: BaseException | None,
    type_name: str,
    message: str,
    traceback_text: str,
) -> Exception:
    """The TaskError for item ``position`` of ``task``, naming the item and the original error."""
    index = task.first_index + position
    item = task.item_repr(position)
    return make_task_error(
        f"{task.describe(position)} raised {type_name}: {message}",
        original=original,
        original_type=type_name,
        index=index,
        item_repr=item,
        traceback_text=traceback_text,
    )


def outcome_from_values(
    task: Task, values: list[Any], failures: Iterable[tuple[int, BaseException]]
) -> TaskOutcome:
    """A DONE outcome whose failed positions hold ItemFailure."""
    any_failed = False
    for position, error in failures:
        values[position] = ItemFailure(error)
        any_failed = True
    return TaskOutcome(Status.DONE, values, any_failed=any_failed)


def report_outcome(done: DoneCallback, task: Task, outcome: TaskOutcome) -> None:
    """Hand an outcome to the engine from a backend's own thread, whatever the callback does.

    The callback resolves a future, whose user callbacks may raise anything, ``SystemExit``
    included; that must neither kill the backend's thread (every later task would hang) nor
    leave this task unresolved. So it is reported and dropped, as ``concurrent.futures`` does
    with an ``Exception`` raised by a done-callback.
    """
    try:
        done(task, outcome)
    except BaseException:  # see the docstring: nothing may escape here
        import logging

        logging.getLogger("forkjoin").exception(
            "a done-callback raised while %s was reported; ignored", task.describe()
        )


# -- resolving backends by name ------------------------------------------------------------------

_REGISTRY: dict[str, tuple[str, str, str]] = {
    # name: (module, class, pip extra that provides it or "")
    "inline": ("forkjoin.backends.inline", "InlineBackend", ""),
    "threads": ("forkjoin.backends.threads", "ThreadBackend", ""),
    "process": ("forkjoin.backends.process", "ProcessBackend", ""),
    "ray": ("forkjoin.backends.ray_engine", "RayBackend", "ray"),
    "dask": ("forkjoin.backends.dask_engine", "DaskBackend", "dask"),
    "spark": ("forkjoin.backends.spark_engine", "SparkBackend", "spark"),
}


def register_backend(name: str, module: str, class_name: str, extra: str = "") -> None:
    """Make ``backend=name`` resolve to ``module.class_name`` (imported only when used)."""
    _REGISTRY[name] = (module, class_name, extra)


def backend_names() -> list[str]:
    return sorted(_REGISTRY)


def backend_class(name: str) -> type[Backend]:
    """The Backend class registered under ``name``; imports it lazily."""
    try:
        module_name, class_name, extra = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; choose one of {backend_names()}") from None
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = f'pip install "forkjoin[{extra}]"' if extra else "reinstall forkjoin"
        raise BackendUnavailableError(f"backend {name!r} is not available ({exc}); {hint}") from exc
    cls: type[Backend] = getattr(module, class_name)
    return cls
