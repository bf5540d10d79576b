"""What runs on a Ray or Dask worker: one forkjoin task, answered with plain data.

The cluster backends ship this module's ``run_remote`` as the engine's task (a Ray remote
function, a Dask ``client.submit``). It does on a cluster worker what a forkjoin process worker
does: install the worker context, run the pool's initializer once per process, apply the function
to each item catching each item's exception, stop a task at its timeout, and turn failures into
records that always pickle (``failures.py``). The reply is a ``protocol.RemoteReply``::

    (RemoteKind.DONE, pid, seconds, values, failure_records)
    (RemoteKind.TIMEOUT, pid, seconds, None, None)
    (RemoteKind.EXIT, pid, exit_code, None, None)   # sys.exit() in a task: a crash, not a result

The engine's own serialiser carries the values back (Ray's object store, Dask's comms).
"""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from ..core.context import WorkerContext, install
from ..core.execute import run_chunk
from ..core.shared import Shared
from .failures import exception_record
from .protocol import RemoteKind

# fj.shared() objects a worker process keeps resolved, newest last. Values come from the
# engine's object store (zero-copy for arrays on Ray); a few are kept so that the tasks after
# the first find them without asking the store again.
KEEP_SHARED_OBJECTS = 16

_lock = threading.Lock()
_contexts: dict[Any, WorkerContext] = {}  # pool key -> this process's context for that pool
_shared: OrderedDict[int, Any] = OrderedDict()


class TaskSpec:
    """Everything a remote task needs besides its function (a slotted class: one per task)."""

    __slots__ = (
        "kind", "items", "first_index", "seed", "timeout", "pool_key", "backend", "shared_ids",
    )  # fmt: skip

    def __init__(
        self,
        kind: int,
        items: list[Any] | bytes,
        first_index: int,
        seed: int | None,
        timeout: float | None,
        pool_key: str,
        backend: str,
        shared_ids: Sequence[int] = (),
    ) -> None:
        self.kind = kind
        self.items = items  # bytes when pickled with fj.shared handles as references
        self.first_index = first_index
        self.seed = seed
        self.timeout = timeout
        self.pool_key = pool_key
        self.backend = backend
        self.shared_ids = tuple(shared_ids)

    def __getstate__(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        for name, value in zip(self.__slots__, state, strict=True):
            setattr(self, name, value)


class _TimedOut(BaseException):
    """Raised inside a task by the alarm: a BaseException, so the item loop does not catch it."""


def _resolve_shared(shared_id: int) -> Any:
    try:
        value = _shared[shared_id]
    except KeyError:
        raise RuntimeError(
            f"fj.shared object {shared_id} is not on this worker; pass the handle in the "
            f"task's arguments (it travels with the task that uses it)"
        ) from None
    _shared.move_to_end(shared_id)
    return value


def _receive_shared(shared_ids: Sequence[int], values: Sequence[Any]) -> None:
    with _lock:
        for shared_id, value in zip(shared_ids, values, strict=True):
            _shared[shared_id] = value
            _shared.move_to_end(shared_id)
        while len(_shared) > max(KEEP_SHARED_OBJECTS, len(shared_ids)):
            _shared.popitem(last=False)
        Shared.resolver = _resolve_shared


def _context_for(
    spec: TaskSpec, setup: tuple[Callable[..., Any], tuple[Any, ...]] | None
) -> WorkerContext:
    """This process's context for the task's pool; the first task of a pool here runs the
    pool's initializer (one process may serve several pools, and several tasks at once)."""
    with _lock:
        context = _contexts.get(spec.pool_key)
        if context is None:
            context = WorkerContext(os.getpid(), spec.backend)
            _contexts[spec.pool_key] = context
            fresh = True
        else:
            fresh = False
    if fresh and setup is not None:
        initializer, initargs = setup
        previous = install(context)
        try:
            initializer(*initargs)
        finally:
            install(previous)
    return context


def _arm_alarm(timeout: float | None) -> Any:
    """Interrupt the task after ``timeout`` seconds: only on the main thread (where Ray runs
    tasks), since only it receives signals. Returns what to restore, or None."""
    if timeout is None or threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum: int, frame: Any) -> None:
        raise _TimedOut()

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    return previous


def _disarm_alarm(previous: Any) -> None:
    if previous is not None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_remote(
    fn: Callable[..., Any],
    spec: TaskSpec,
    setup: tuple[Callable[..., Any], tuple[Any, ...]] | None = None,
    shared_values: Sequence[Any] = (),
    seed_globals: bool = True,
) -> tuple[Any, ...]:
    """Run one task on this worker; the reply described in the module docstring.

    ``seed_globals``: under ``seed=``, also reseed ``random`` and NumPy's global generator per
    item; only where no other task shares this process at the same time."""
    pid = os.getpid()
    if spec.shared_ids:
        _receive_shared(spec.shared_ids, shared_values)
    items = spec.items
    if isinstance(items, bytes):
        items = pickle.loads(items)
    context = _context_for(spec, setup)
    previous_context = install(context)
    started = time.monotonic()
    alarm = _arm_alarm(spec.timeout)
    try:
        run = run_chunk(
            fn,
            spec.kind,
            items,  # type: ignore[arg-type]
            spec.first_index,
            spec.seed,
            seed_globals=seed_globals,
            catch_interrupt=True,
        )
    except _TimedOut:
        return (RemoteKind.TIMEOUT.value, pid, time.monotonic() - started, None, None)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
        return (RemoteKind.EXIT.value, pid, code, None, None)
    finally:
        _disarm_alarm(alarm)
        install(previous_context)
    failures = [exception_record(pos, exc, tb) for pos, exc, tb in run.failures]
    return (RemoteKind.DONE.value, pid, run.end_time - run.start_time, run.values, failures)
