"""``Pool``: a ``concurrent.futures.Executor`` on any backend, plus forkjoin's calls as methods.

Lifecycle is explicit: RUNNING from construction, CLOSED after ``shutdown``; using a closed pool
raises an error naming the state. ``submit`` runs ``fn(*args, **kwargs)`` as a one-item task with
the pool's retry and timeout options; a worker death is retried on a fresh worker.

Threads: any thread may submit, map or shut down. ``_lock`` guards ``_state`` and
``_open_results``: it is held wherever they are written, and where a decision depends on them
(a map registers its results and checks the state in one step, so shutdown either drains it or
it is refused). ``submit`` reads ``_state`` without it, as a fast refusal only: a submit racing
``shutdown()`` is refused by the backend, under the backend's own lock, and its future gets that
``RuntimeError``; it never hangs.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import CancelledError, Executor, Future, InvalidStateError
from enum import Enum
from typing import Any, TypeVar

from ..backends.base import backend_class
from ..core.task import CallKind, FunctionRefCache, ItemFailure, Status, Task, TaskOutcome
from .api import (
    _MISSING,
    backend_connection,
    check_supported,
    collect_with_report,
    known_length,
    plan_pool,
    reduce_results,
    resolve_backend_name,
)
from .events import EventLog, Stats
from .options import RunOptions, options_from
from .reports import write_run_report
from .scheduler import Job, retries_left

T = TypeVar("T")
R = TypeVar("R")


# Set once the interpreter starts to exit (before atexit hooks run), as concurrent.futures does:
# a submit after that point raises instead of returning a future nobody will run.
_interpreter_exiting = False


def _mark_interpreter_exiting() -> None:
    global _interpreter_exiting
    _interpreter_exiting = True


threading._register_atexit(_mark_interpreter_exiting)  # type: ignore[attr-defined]


class _Results(Iterator[Any]):
    """What ``Pool.map`` returns: lazy while the pool runs (items are read as
    workers free up); if the pool shuts down with ``wait=True`` first, the rest is computed then
    and kept here, so ``with Pool() as p: out = p.map(f, xs)`` can be read after the block, as
    with ``ProcessPoolExecutor``. An error is raised at the item where it happened."""

    def __init__(self, results: Iterator[Any]) -> None:
        self._results: Iterator[Any] | None = results
        self._drained: deque[Any] | None = None
        self._error: BaseException | None = None

    def __next__(self) -> Any:
        if self._drained is None:
            assert self._results is not None
            return next(self._results)
        if self._drained:
            return self._drained.popleft()
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        raise StopIteration

    def drain(self) -> None:
        """Compute the rest now (the pool is about to stop)."""
        if self._drained is not None or self._results is None:
            return
        drained: deque[Any] = deque()
        try:
            for value in self._results:
                drained.append(value)
        except BaseException as exc:  # raised later, in the caller's iteration, at its place
            self._error = exc
        self._drained, self._results = drained, None

    def close(self) -> None:
        close = getattr(self._results, "close", None)
        if close is not None:
            close()


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
        max_tasks_per_child: int | None = None,
        dashboard: bool | int = False,
        preload: Sequence[str] = (),
        **options: Any,
    ) -> None:
        """``resources_per_worker={"gpu": 1, "cpu": 4, "memory": "8GB"}`` shapes each worker
        (its GPUs pinned, its thread caps) and, without ``workers=``, sizes the pool to what
        the machine holds; ``resources`` is the default request of each task (and shapes the
        workers when ``resources_per_worker`` is not given). ``prefetch=2`` queues a second
        task on each worker so its inputs arrive while the first runs; ``gpus=[0, 2]`` narrows
        the GPUs the pool may use; ``max_tasks_per_child=N`` replaces each worker after it ran
        N tasks (``ProcessPoolExecutor``'s option: bounds what leaky code accumulates).
        ``dashboard=True`` serves a live page of this pool (its URL is printed;
        ``dashboard=8787`` picks the port); ``profile=True`` samples the workers' stacks for
        ``pool.profile()`` and ``pool.report()`` (see ``forkjoin.observe``);
        ``preload=("pyarrow", "pandas")`` has each worker import those modules as it starts
        (engine/preload.py)."""
        if max_tasks_per_child is not None:
            if not isinstance(max_tasks_per_child, int) or isinstance(max_tasks_per_child, bool):
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child < 1:
                raise ValueError("max_tasks_per_child must be >= 1")
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
            max_tasks_per_child=max_tasks_per_child,
            preload=(preload,) if isinstance(preload, str) else tuple(preload),
            **backend_connection(self.options),
        )
        self.workers = self._backend.workers  # a cluster backend sizes itself to the cluster
        try:
            check_supported(self._backend, self.options)
            if max_tasks_per_child is not None and not self._backend.capabilities.recycles_workers:
                raise ValueError(
                    f"max_tasks_per_child= needs a backend that replaces its workers; the "
                    f"{self.backend_name!r} backend cannot: use backend='process'"
                )
        except BaseException:
            self._backend.shutdown(wait=False)  # refused: leave nothing behind
            raise
        self._functions = FunctionRefCache()
        self._submit_index = itertools.count()
        self._state = PoolState.RUNNING  # written under _lock (see the module docstring)
        self._lock = threading.Lock()
        # map iterators not yet exhausted: finished by shutdown(wait=True) (see _Results)
        self._open_results: weakref.WeakSet[_Results] = weakref.WeakSet()
        # A pool dropped without shutdown() still stops its workers once garbage-collected.
        weakref.finalize(self, self._backend.shutdown, False)
        # observe: a live dashboard and/or a profiler, only when asked (forkjoin/observe/runs.py)
        self._observer: Any = None
        if dashboard or self.options.profile:
            from ..observe.runs import PoolObserver

            try:
                self._observer = PoolObserver(self, dashboard, self.options.profile)
            except BaseException:
                self._backend.shutdown(wait=False)  # refused (no aiohttp...): leave nothing
                raise
            weakref.finalize(self, self._observer.close)

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
        if _interpreter_exiting:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")
        future: Future[R] = Future()
        options = self.options
        if options.profile:  # observe: the profiler's wrapper (one check when off)
            fn = self._observer.wrap(fn)
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
        if status is Status.DONE:
            value = outcome.values[0]
            if not isinstance(value, ItemFailure):
                _settle(future, value)
                return
            if retries_left(task, self.options, value.error):
                self._events.task_retried()
                self._submit_task(task.retry())
                return
            error: BaseException = value.error
        elif status is Status.CRASHED and retries_left(task, self.options):
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
        self._events.task_failed(task, error)  # observe: kept for the dashboard
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
            job = self._job(fn, iterables[0], options)
        else:
            job = self._job(fn, zip(*iterables, strict=False), options, CallKind.STAR)
        results = _Results(iter(job))
        with self._lock:  # shutdown drains what it finds here, under the same lock
            self._check_running("run a map")
            self._open_results.add(results)
        return results

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the workers. ``cancel_futures=True`` cancels pending tasks and stops running
        ones (their futures raise ``CancelledError``); ``wait=True`` returns once all are down."""
        with self._lock:
            self._state = PoolState.CLOSED
            open_results = list(self._open_results)
            self._open_results.clear()
        if wait and not cancel_futures:
            for results in open_results:
                results.drain()
        if self._observer is not None:  # observe: final profile while workers still run
            self._observer.close()
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
        if run_options.profile != self.options.profile:
            raise ValueError("profile= belongs to the pool: set it on Pool(...)")
        if run_options.profile:  # observe: the profiler's wrapper
            fn = self._observer.wrap(fn)
        self._events.job_started(known_length(items))  # observe: for the dashboard's ETA
        return Job(self._backend, self._events, fn, items, run_options, kind)

    def imap(self, fn: Callable[[T], R], items: Iterable[T], **options: Any) -> Iterator[R]:
        """``forkjoin.imap`` on this pool's workers. Unlike ``map`` it stays lazy to the end
        (its input may be endless): read it before the pool shuts down."""
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
        profile = self.profile()
        return write_run_report(self, path, since=since, until=until, profile=profile)

    @property
    def dashboard_url(self) -> str | None:
        """The live page's address, token included, with ``dashboard=True``; else None."""
        board = None if self._observer is None else self._observer.dashboard
        return None if board is None else board.url

    def profile(self) -> Any:
        """With ``Pool(profile=True)``: the workers' stacks so far, merged per function (a
        ``forkjoin.observe.profile.Profile``); None otherwise."""
        return None if self._observer is None else self._observer.profile()

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
