"""``Pool``: a ``concurrent.futures.Executor`` on any backend, plus forkjoin's calls as methods.

Lifecycle is explicit: RUNNING from construction, CLOSED after ``shutdown``; using a closed pool
raises an error naming the state. ``submit`` runs ``fn(*args, **kwargs)`` as a one-item task with
the pool's retry and timeout options; a worker death is retried on a fresh worker.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import CancelledError, Executor, Future, InvalidStateError
from enum import Enum
from typing import Any, TypeVar

from ..backends.base import backend_class
from .api import (
    _MISSING,
    backend_connection,
    check_supported,
    collect_with_report,
    plan_pool,
    reduce_results,
    resolve_backend_name,
)
from .events import EventLog, Stats
from .options import RunOptions, options_from
from .scheduler import Job, should_retry
from .task import CallKind, FunctionRefCache, ItemFailure, Status, Task, TaskOutcome

T = TypeVar("T")
R = TypeVar("R")


class PoolState(Enum):
    RUNNING = "running"
    CLOSED = "closed"


def _settle(future: Future[Any], value: Any = None, error: BaseException | None = None) -> None:
    """Resolve a future unless the caller cancelled it meanwhile."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)
    except InvalidStateError:
        pass


class Pool(Executor):
    """A pool of workers: ``submit``/``map`` like any Executor, and ``imap``, ``map_reduce``,
    ``stats``. Options given here (retries, timeout, seed, chunksize...) are the defaults for
    every call on the pool; each call may override them."""

    def __init__(
        self,
        workers: int | None = None,
        backend: str | None = None,
        *,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        resources: dict[str, Any] | None = None,
        resources_per_worker: dict[str, Any] | None = None,
        gpus: Sequence[int] | None = None,
        prefetch: int = 1,
        preload: Sequence[str] = (),
        **options: Any,
    ) -> None:
        """``resources_per_worker={"gpu": 1, "cpu": 4, "memory": "8GB"}`` shapes each worker
        (its GPUs pinned, its thread caps) and, without ``workers=``, sizes the pool to what
        the machine holds; ``resources`` is the default request of each task (and shapes the
        workers when ``resources_per_worker`` is not given). ``prefetch=2`` queues a second
        task on each worker so its inputs arrive while the first runs; ``gpus=[0, 2]`` narrows
        the GPUs the pool may use; ``preload=("pyarrow", "pandas")`` has each worker import
        those modules as it starts (engine/preload.py)."""
        if preload:  # issue 18: composed with the user's initializer, which runs after it
            from .preload import with_preload

            initializer, initargs = with_preload(preload, initializer, initargs)
        self.options = options_from(
            workers=workers, backend=backend, resources=resources, **options
        )
        self.workers, slots = plan_pool(self.options, resources_per_worker, gpus)
        self.backend_name = resolve_backend_name(self.options, self.workers)
        self._events = EventLog()
        memory_limit = self.options.memory_limit
        assert memory_limit is None or isinstance(memory_limit, int)  # parsed by RunOptions
        self._backend = backend_class(self.backend_name)(
            self.workers,
            events=self._events,
            initializer=initializer,
            initargs=initargs,
            memory_limit=memory_limit,
            slots=slots,
            prefetch=prefetch,
            **backend_connection(self.options),
        )
        self.workers = self._backend.workers  # a cluster backend sizes itself to the cluster
        try:
            check_supported(self._backend, self.options)
        except BaseException:
            self._backend.shutdown(wait=False)  # refused: leave nothing behind
            raise
        self._functions = FunctionRefCache()
        self._submit_index = itertools.count()
        self._state = PoolState.RUNNING
        self._lock = threading.Lock()
        # A pool dropped without shutdown() still stops its workers once garbage-collected.
        weakref.finalize(self, self._backend.shutdown, False)

    def __repr__(self) -> str:
        return (
            f"<forkjoin.Pool backend={self.backend_name!r} workers={self.workers} "
            f"state={self._state.value}>"
        )

    @property
    def state(self) -> PoolState:
        return self._state

    def _check_running(self, action: str) -> None:
        if self._state is not PoolState.RUNNING:
            raise RuntimeError(
                f"cannot {action}: the pool is {self._state.value}; create a new "
                f"Pool (or use forkjoin.map, which manages one for you)"
            )

    # -- Executor --------------------------------------------------------------------------------

    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future[R]:
        """Run ``fn(*args, **kwargs)`` in a worker; returns a ``concurrent.futures.Future``."""
        if self._state is not PoolState.RUNNING:
            self._check_running("submit")
        future: Future[R] = Future()
        options = self.options
        # Positional arguments: this line runs once per submitted call (see Task's signature).
        task = Task(
            self._functions.get(fn), CallKind.CALL, [(args, kwargs)], next(self._submit_index),
            0, options.timeout, options.seed, options.resources, future,
        )  # fmt: skip
        self._submit_task(task)
        return future

    def _submit_task(self, task: Task) -> None:
        try:
            self._backend.submit(task, self._task_done)
        except Exception as exc:
            assert task.future is not None
            _settle(task.future, error=exc)
            return
        self._events.task_submitted()

    def _task_done(self, task: Task, outcome: TaskOutcome) -> None:
        """Resolve a submitted task's future (runs in the backend's thread)."""
        future = task.future
        assert future is not None
        status = outcome.status
        self._events.task_finished(task, status)
        retries = self.options.retries
        if status is Status.DONE:
            value = outcome.values[0]
            if not isinstance(value, ItemFailure):
                _settle(future, value)
                return
            if should_retry(value.error, self.options) and task.attempt < retries:
                self._events.task_retried()
                self._submit_task(task.retry())
                return
            error: BaseException = value.error
        elif status is Status.CRASHED and task.attempt < retries:
            self._events.task_retried()
            self._submit_task(task.retry())
            return
        elif status is Status.CANCELLED:
            if not future.cancel():
                _settle(
                    future,
                    error=CancelledError(
                        "the pool was shut down with cancel_futures=True while this task ran"
                    ),
                )
            return
        else:
            assert outcome.error is not None
            error = outcome.error
        self._events.task_failed()
        _settle(future, error=error)

    def map(  # type: ignore[override]
        self,
        fn: Callable[..., R],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | str = "auto",
        **options: Any,
    ) -> Iterator[R]:
        """``Executor.map``: results in order, lazily, with backpressure (items are read as
        workers free up, not all at once). ``timeout`` is per task, as everywhere in forkjoin
        (a ``TaskTimeoutError`` is a ``TimeoutError``)."""
        if timeout is not None:
            options["timeout"] = timeout
        options["chunksize"] = chunksize
        if len(iterables) == 1:
            return self.imap(fn, iterables[0], **options)
        return iter(self._job(fn, zip(*iterables, strict=False), options, CallKind.STAR))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the workers. ``cancel_futures=True`` cancels pending tasks and stops running
        ones (their futures raise ``CancelledError``); ``wait=True`` returns once all are down."""
        with self._lock:
            self._state = PoolState.CLOSED
        self._backend.shutdown(wait=wait, cancel_pending=cancel_futures)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:  # type: ignore[override]
        # Ctrl-C inside the with-block should not then wait for every queued task.
        self.shutdown(
            wait=True,
            cancel_futures=exc_type is not None and issubclass(exc_type, KeyboardInterrupt),
        )

    # -- forkjoin's calls ------------------------------------------------------------------------

    def _job(
        self,
        fn: Callable[..., Any],
        items: Iterable[Any],
        options: dict[str, Any],
        kind: CallKind = CallKind.MAP,
    ) -> Job:
        self._check_running("run a map")
        run_options: RunOptions = options_from(self.options, **options)
        if run_options.memory_limit != self.options.memory_limit:
            raise ValueError("memory_limit= belongs to the pool's workers: set it on Pool(...)")
        check_supported(self._backend, run_options)
        return Job(self._backend, self._events, fn, items, run_options, kind)

    def imap(self, fn: Callable[[T], R], items: Iterable[T], **options: Any) -> Iterator[R]:
        """``forkjoin.imap`` on this pool's workers."""
        return iter(self._job(fn, items, options))

    def map_list(
        self, fn: Callable[[T], R], items: Iterable[T], *, report: str | None = None, **options: Any
    ) -> list[R]:
        """``forkjoin.map`` on this pool's workers (a list, in order); ``report=`` as there."""
        job = self._job(fn, items, options)
        if report is None:
            return job.collect()
        return collect_with_report(job, report)

    def report(self, path: str, *, since: float | None = None, until: float | None = None) -> Any:
        """Write this pool's run report to ``path`` (.html, .json or .txt): where the time went
        (start-up, serialisation, queue, compute, idle...), a per-worker timeline, advice."""
        from ..bench.report import write_run_report  # the analysis layer, loaded when asked

        return write_run_report(self, path, since=since, until=until)

    def map_reduce(
        self,
        fn: Callable[[T], R],
        items: Iterable[T],
        reduce: Callable[[Any, R], Any],
        initial: Any = _MISSING,
        **options: Any,
    ) -> Any:
        """``forkjoin.map_reduce`` on this pool's workers."""
        return reduce_results(self._job(fn, items, options), reduce, initial)

    # -- introspection ---------------------------------------------------------------------------

    def stats(self) -> Stats:
        """Counts, timings, bytes moved and per-worker use, from the pool's event log."""
        return self._events.stats()

    @property
    def events(self) -> EventLog:
        """The pool's event log (per-task records and worker lifecycle)."""
        return self._events

    def worker_pids(self) -> list[int]:
        return self._backend.worker_pids()
