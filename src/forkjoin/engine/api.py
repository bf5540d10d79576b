"""The everyday calls: ``map``, ``imap``, ``map_reduce``, on a reusable shared pool.

The first call starts the pool's workers; later calls reuse them (no start-up), until the
interpreter exits or a call asks for a different backend or worker count.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from ..backends.base import Backend, backend_class
from ..core.resources import Shape, Slot, check_request, plan_slots
from ..core.task import CallKind
from ..errors import ForkjoinError, ResourceError
from ..machine import usable_cpu_count
from .events import EventLog
from .options import RunOptions, options_from
from .reports import write_run_report
from .scheduler import Job

T = TypeVar("T")
R = TypeVar("R")

# A worker at this depth (a pool inside a pool inside a pool) may not start more processes:
# nested parallelism past this point only oversubscribes the cores.
MAX_PROCESS_NESTING = 2

_MISSING: Any = object()


def nesting_depth() -> int:
    """0 in a user's process, 1 inside a forkjoin worker, 2 inside a worker's worker..."""
    return int(os.environ.get("FORKJOIN_WORKER_DEPTH", "0"))


def resolve_backend_name(options: RunOptions, workers: int) -> str:
    """The backend a call runs on: explicit, else worker processes (one worker included: a pool
    isolates crashes, timeouts and memory limits, which running in the caller could not), and
    inline inside a worker, so that a nested call cannot multiply processes."""
    name = options.backend
    depth = nesting_depth()
    if name is None:
        return "inline" if depth > 0 else "process"
    if name == "process" and depth >= MAX_PROCESS_NESTING:
        raise ForkjoinError(
            f"refusing to start worker processes {depth + 1} levels deep (a pool inside a pool "
            f"inside a pool); run the inner call with backend='inline' or 'threads'"
        )
    return name


def known_length(items: Iterable[Any]) -> int | None:
    """How many items, when the input can say without being consumed (for an ETA)."""
    try:
        return len(items)  # type: ignore[arg-type]
    except TypeError:
        return None


def resolve_workers(options: RunOptions) -> int:
    return options.workers if options.workers is not None else usable_cpu_count()


def runs_on_cluster(options: RunOptions) -> bool:
    """Whether the call's backend is a cluster engine (Ray, Dask); checks address= use."""
    cluster = options.backend is not None and backend_class(options.backend).capabilities.cluster
    if not cluster and (options.address is not None or options.cluster_options is not None):
        raise ValueError(
            "address= and cluster_options= choose a cluster: use them with backend='ray' or "
            "backend='dask'"
        )
    return cluster


def backend_connection(options: RunOptions) -> dict[str, Any]:
    """The keyword arguments a cluster backend is built with (none for local backends)."""
    if not runs_on_cluster(options):
        return {}
    return {"address": options.address, "cluster_options": options.cluster_options}


def plan_pool(
    options: RunOptions,
    per_worker: Mapping[str, Any] | None = None,
    gpu_ids: Sequence[int] | None = None,
) -> tuple[int, list[Slot] | None]:
    """How many workers, and what each owns: shaped by ``per_worker`` (``resources_per_worker``)
    or else by the per-task ``resources``, as Ray sizes its workers by ``num_gpus``; a pool
    that asks for nothing shares the cores out (``slots`` None). ``gpu_ids`` narrows the GPUs
    the pool may use."""
    if runs_on_cluster(options):
        # The cluster's scheduler places tasks by their resources; 0 workers: the cluster's
        # CPU count sizes the pool once connected.
        return (options.workers or 0), None
    shape = Shape.parse(per_worker if per_worker is not None else options.resources)
    if shape == Shape():
        return resolve_workers(options), None
    import dataclasses

    from ..machine import devices

    machine = devices()
    if gpu_ids is not None:
        by_index = {gpu.index: gpu for gpu in machine.gpus}
        missing = [index for index in gpu_ids if index not in by_index]
        if missing:
            raise ResourceError(
                f"no GPU with index {missing}; this machine has GPUs {sorted(by_index)}"
            )
        machine = dataclasses.replace(machine, gpus=[by_index[index] for index in gpu_ids])
    slots = plan_slots(options.workers, shape, machine)
    return len(slots), slots


class _SharedPools:
    """One reusable backend per name, kept warm between calls.

    A call with another shape (workers=, memory_limit=...) replaces the backend, but never
    stops one that a job (in another thread, or a lazy ``imap`` not yet read) still runs on:
    each job holds its backend until it ends, and a replaced backend shuts down when its last
    job lets go of it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pools: dict[str, tuple[tuple[Any, ...], Backend, EventLog]] = {}
        self._users: dict[int, int] = {}  # id(backend) -> jobs running on it (guarded by _lock)
        self._retired: dict[int, Backend] = {}  # replaced, waiting for their last job

    def get(
        self,
        name: str,
        workers: int,
        memory_limit: int | None = None,
        slots: list[Slot] | None = None,
        connection: Mapping[str, Any] | None = None,
        preload: Sequence[str] = (),
    ) -> tuple[Backend, EventLog]:
        """The shared backend for this shape, held for one job: call ``release`` after. A pool
        started here imports ``preload`` in its workers as they start (engine/preload.py)."""
        connection = dict(connection or {})
        # A cluster is the same when given by the same address string, or the same object.
        where = tuple(
            value if value is None or isinstance(value, str) else id(value)
            for value in connection.values()
        )
        stop: Backend | None = None
        with self._lock:
            current = self._pools.get(name)
            asked = (workers, memory_limit, tuple(slots) if slots else None, where)
            if current is not None:
                previous, backend, events = current
                if backend.alive and previous == asked:
                    self._users[id(backend)] = self._users.get(id(backend), 0) + 1
                    return backend, events
                if self._users.get(id(backend), 0):
                    self._retired[id(backend)] = backend  # stopped by its last job's release
                else:
                    stop = backend
            events = EventLog()
            from .preload import shared_pool_initializer

            backend = backend_class(name)(
                workers, events=events, memory_limit=memory_limit, slots=slots, **connection,
                **shared_pool_initializer(name, preload),
            )  # fmt: skip
            self._pools[name] = (asked, backend, events)
            self._users[id(backend)] = 1
        if stop is not None:
            stop.shutdown(wait=False)
        return backend, events

    def release(self, backend: Backend) -> None:
        """A job on ``backend`` has ended."""
        with self._lock:
            left = self._users.get(id(backend), 1) - 1
            if left > 0:
                self._users[id(backend)] = left
                return
            self._users.pop(id(backend), None)
            retired = self._retired.pop(id(backend), None)
        if retired is not None:
            retired.shutdown(wait=False)

    def shutdown(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
            retired, self._retired = list(self._retired.values()), {}
            self._users.clear()
        for backend in retired + [backend for _, backend, _ in pools]:
            backend.shutdown(wait=True)


shared_pools = _SharedPools()

# A forked child must not talk to its parent's workers: it starts pools of its own when needed.
def _forget_pools_after_fork() -> None:
    shared_pools._pools.clear()
    shared_pools._users.clear()
    shared_pools._retired.clear()


os.register_at_fork(after_in_child=_forget_pools_after_fork)


def _job(
    fn: Callable[..., Any],
    items: Iterable[Any],
    options: RunOptions,
    kind: CallKind = CallKind.MAP,
    preload: Sequence[str] = (),
) -> Job:
    workers, slots = plan_pool(options)
    name = resolve_backend_name(options, workers)
    memory_limit = options.memory_limit
    assert memory_limit is None or isinstance(memory_limit, int)  # parsed by RunOptions
    connection = backend_connection(options)
    if isinstance(preload, str):
        preload = (preload,)
    backend, events = shared_pools.get(name, workers, memory_limit, slots, connection, preload)
    try:
        check_supported(backend, options)
        events.job_started(known_length(items))
        job = Job(backend, events, fn, items, options, kind)
    except BaseException:
        shared_pools.release(backend)
        raise
    # Released when the job ends, or when it is dropped without being run to the end.
    job.finished = weakref.finalize(job, shared_pools.release, backend)
    return job


def _profiled(fn: Callable[..., Any], options: RunOptions) -> tuple[Callable[..., Any], Any]:
    """``fn`` as workers run it, and the profiling session (None unless ``profile=``)."""
    if not options.profile:
        return fn, None
    from ..observe.runs import start_profile  # loaded only when profiling

    return start_profile(fn)


def check_supported(backend: Backend, options: RunOptions) -> None:
    """Refuse options the backend cannot honour, before any work starts."""
    if options.timeout is not None and not backend.capabilities.supports_timeout:
        raise ValueError(
            f"timeout= needs a backend that can stop a running task; the {backend.name!r} "
            f"backend cannot: use backend='process'"
        )
    if options.memory_limit is not None and not backend.capabilities.supports_memory_limit:
        raise ValueError(
            f"memory_limit= needs a backend that can stop a worker; the {backend.name!r} "
            f"backend cannot: use backend='process'"
        )
    if options.resources and not backend.capabilities.cluster:
        from ..machine import devices

        check_request(Shape.parse(options.resources), backend.slots[0], devices())


def map(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    report: str | None = None,
    preload: Sequence[str] = (),
    **options: Any,
) -> list[R]:
    """Apply ``fn`` to every item in parallel; the results in input order, as a list.

    Runs on all usable cores with no setup. Options: see ``RunOptions`` (workers, backend,
    chunksize, ordered, retries, retry_on, timeout, progress, seed, on_error, ...).
    ``report="run.html"`` (or .json, .txt) also writes where this call's time went and a
    per-worker timeline, whether the call succeeds or fails. ``preload=("pandas",)``: if this
    call starts the shared process pool, its workers import those modules as they start, not
    during their first task (``Pool(preload=)``; a pool already running is not changed).
    """
    run_options = options_from(**options)
    fn, session = _profiled(fn, run_options)
    job = _job(fn, items, run_options, preload=preload)
    if session is not None:
        from ..observe.runs import collect_profiled

        return collect_profiled(job, session, run_options.profile, report)
    if report is None:
        return job.collect()
    return collect_with_report(job, report)


def collect_with_report(job: Job, path: str) -> list[Any]:
    """``job.collect()``, then its run report written to ``path`` (the analysis layer's
    ``write_run_report``, handed in through engine/reports.py)."""
    import time

    since = time.monotonic()
    try:
        return job.collect()
    finally:
        write_run_report(
            job.events, path, since=since, until=time.monotonic(), workers=job.backend.workers
        )


def imap(
    fn: Callable[[T], R], items: Iterable[T], *, preload: Sequence[str] = (), **options: Any
) -> Iterator[R]:
    """Like ``map`` but lazy: results stream back while items are still being read, and at most
    a few tasks per worker are in memory, so endless generators are fine. ``ordered=False``
    yields results as they finish. ``preload=``: as for ``map``."""
    run_options = options_from(**options)
    fn, session = _profiled(fn, run_options)
    job = _job(fn, items, run_options, preload=preload)
    if session is not None:
        from ..observe.runs import iterate_profiled

        return iterate_profiled(job, session, run_options.profile)
    return iter(job)


def map_reduce(
    fn: Callable[[T], R],
    items: Iterable[T],
    reduce: Callable[[Any, R], Any],
    initial: Any = _MISSING,
    **options: Any,
) -> Any:
    """``functools.reduce(reduce, map(fn, items), initial)``, reducing as results arrive.

    With ``ordered=False`` results are reduced in completion order: only correct for a
    commutative ``reduce`` (like ``operator.add`` on integers), but nothing waits.
    """
    run_options = options_from(**options)
    fn, session = _profiled(fn, run_options)
    job = _job(fn, items, run_options)
    if session is not None:
        from ..observe.runs import iterate_profiled

        return reduce_results(iterate_profiled(job, session, run_options.profile), reduce, initial)
    return reduce_results(job, reduce, initial)


def reduce_results(values: Iterable[Any], reduce: Callable[[Any, Any], Any], initial: Any) -> Any:
    """Fold results into one value as they arrive (``functools.reduce`` semantics)."""
    accumulator = initial
    for value in values:
        accumulator = value if accumulator is _MISSING else reduce(accumulator, value)
    if accumulator is _MISSING:
        raise TypeError("map_reduce() of no items with no initial value")
    return accumulator
