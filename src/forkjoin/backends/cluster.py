"""What the Ray and Dask backends share: a forkjoin task as one engine task, and back.

::

    engine --Task--> ClusterBackend.submit --spec + handles--> engine scheduler (Ray / Dask)
                         |  function, initializer and fj.shared objects are put in the
                         |  engine's object store once (ray.put / client.scatter), by reference
                         v
    done(task, outcome) <-- reply (remote_task.py) or the engine's error, classified here

Retries stay with forkjoin's scheduler (the engine's own retries are off), so ``retries=``
counts worker deaths the same way on every backend and a task that kills its workers is
reported as ``WorkerCrashedError`` with the same fields. Subclasses implement the engine calls:
``_put``, ``_launch``, ``_when_done``, ``_result``, ``_classify``, ``_cancel``, ``_disconnect``.
"""

from __future__ import annotations

import threading
import time
import uuid
import weakref
from abc import abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import cloudpickle

from ..core import shared as shared_module
from ..core.task import FunctionRef, Status, Task, TaskOutcome
from ..errors import ResourceError, SerializationError, TaskTimeoutError, WorkerCrashedError
from .base import Backend, DoneCallback
from .failures import failure_from_record
from .protocol import RemoteKind, RemoteReply, view
from .remote_task import TaskSpec

# Functions whose store handles a pool keeps (newest last); a function used again after
# falling out is put again. Bounded: each holds its function (and what it captures) alive.
KEEP_FUNCTIONS = 32

# How an engine error ends a task (``_classify``'s answer).
CRASHED, UNREADABLE, CANCELLED = "crashed", "unreadable", "cancelled"


class ClusterBackend(Backend):
    """A backend that hands each task to a distributed engine's scheduler."""

    engine = ""  # "Ray", "Dask": how messages name the engine

    def __init__(
        self,
        workers: int,
        *,
        address: Any = None,
        cluster_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(workers, **kwargs)
        self.pool_key = uuid.uuid4().hex  # names this pool's state on the workers
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)
        self._running: dict[int, tuple[Task, DoneCallback, Any]] = {}
        self._reporting = 0  # finished tasks whose done() callback is running now
        self._in_callback = threading.local()  # .active: this thread is running a done()
        self._closed = False
        self._pids_seen: set[int] = set()
        self._functions: OrderedDict[int, tuple[Any, Any]] = OrderedDict()  # id(fn) -> handle
        self._shared: dict[int, Any] = {}  # fj.shared id -> the engine's handle to its object
        self._setup: Any = None
        self._connect(address, dict(cluster_options or {}))
        if self.initializer is not None:
            self._setup = self._pack_checked(
                f"{self.pool_key}:setup", (self.initializer, self.initargs), "initializer"
            )

    # -- what a subclass provides ----------------------------------------------------------------

    @abstractmethod
    def _connect(self, address: Any, options: dict[str, Any]) -> None:
        """Start or join the engine; set ``self.workers`` when the cluster decides it (0)."""

    @abstractmethod
    def _put(self, obj: Any) -> Any:
        """Put ``obj`` in the engine's object store once; a handle tasks take as an argument."""

    @abstractmethod
    def _launch(
        self, task: Task, function: Any, spec: TaskSpec, shared: list[Any]
    ) -> Any:
        """Submit one engine task; returns the engine's future. Raises on unpicklable input."""

    @abstractmethod
    def _when_done(self, handle: Any, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from any thread) once the engine task is over."""

    @abstractmethod
    def _result(self, handle: Any) -> Any:
        """The finished engine task's value; raises the engine's error."""

    @abstractmethod
    def _classify(self, error: BaseException) -> str:
        """CRASHED, UNREADABLE or CANCELLED for an engine error."""

    @abstractmethod
    def _cancel(self, handle: Any, force: bool) -> None:
        """Ask the engine to drop (``force``: also stop) the engine task."""

    def _after_crash(self) -> None:
        """A worker was lost: forget object-store handles whose data went with it."""

    @abstractmethod
    def _disconnect(self) -> None:
        """Leave the engine (stopping what this backend started)."""

    # -- submitting ------------------------------------------------------------------------------

    def _put_checked(self, obj: Any, what: str) -> Any:
        return self._checked(what, self._put, obj)

    def _checked(self, what: str, send: Callable[..., Any], *args: Any) -> Any:
        """``send(*args)``, its failure a SerializationError that says what to change."""
        try:
            return send(*args)
        except Exception as exc:
            raise SerializationError(
                f"the {what} could not be sent to {self.engine} ({type(exc).__name__}: {exc}); "
                f"define it at module level and capture only picklable objects",
                what=what,
                side="caller",
            ) from exc

    def _pack(self, key: str, obj: Any) -> Any:
        """How code (a function, an initializer) travels: by default through the store."""
        return self._put(obj)

    def _pack_checked(self, key: str, obj: Any, what: str) -> Any:
        return self._checked(what, self._pack, key, obj)

    def _function_handle(self, function: FunctionRef) -> Any:
        """The function in the store, once per function object (each ``fj.map`` call makes a
        new FunctionRef: putting it anew cost 14% of a Ray map, and a fetch on every worker)."""
        fn = function.fn
        with self._lock:
            entry = self._functions.get(id(fn))
            if entry is not None and entry[0] is fn:
                self._functions.move_to_end(id(fn))
                return entry[1]
        key = f"{self.pool_key}:{function.key}"
        handle = self._pack_checked(key, fn, "function")
        with self._lock:
            self._functions[id(fn)] = (fn, handle)  # holds fn: its id cannot be reused
            while len(self._functions) > KEEP_FUNCTIONS:
                self._functions.popitem(last=False)
        return handle

    def _shared_handle(self, handle: shared_module.Shared[Any]) -> Any:
        """The engine's handle to an fj.shared object: put once, dropped with the handle."""
        with self._lock:
            stored = self._shared.get(handle.shared_id)
        if stored is None:
            stored = self._put_checked(handle.get(), "fj.shared object")
            with self._lock:
                self._shared[handle.shared_id] = stored
            if self.events is not None:
                self.events.data_shared(0)
            weakref.finalize(handle, self._shared.pop, handle.shared_id, None)
        return stored

    def _encode_items(self, task: Task) -> tuple[list[Any] | bytes, list[int], list[Any]]:
        """The items as the engine should carry them. With fj.shared handles alive, items are
        pickled here with each handle as a reference, and the objects travel by the store."""
        if not shared_module._live:
            return task.items, [], []
        handles: list[shared_module.Shared[Any]] = []
        previous = shared_module.collect_handles(handles)
        try:
            data = cloudpickle.dumps(task.items, protocol=5)
        finally:
            shared_module.collect_handles(previous)
        if not handles:
            return task.items, [], []
        unique = {h.shared_id: h for h in handles}
        return data, list(unique), [self._shared_handle(h) for h in unique.values()]

    def submit(self, task: Task, done: DoneCallback) -> None:
        if self._closed:
            raise RuntimeError(f"cannot submit to the {self.name} backend after shutdown")
        if not task.claim():  # the engine queues it now; it can no longer be cancelled
            return
        function = self._function_handle(task.function)
        try:
            items, shared_ids, shared = self._encode_items(task)
        except Exception as exc:
            raise self._unsendable(task, exc) from exc
        spec = TaskSpec(
            task.kind, items, task.first_index, task.seed, task.timeout, self.pool_key,
            self.name, shared_ids,
        )  # fmt: skip
        task.submit_time = time.monotonic()
        try:
            handle = self._launch(task, function, spec, shared)
        except (SerializationError, ResourceError):
            raise
        except Exception as exc:
            raise self._unsendable(task, exc) from exc
        with self._lock:
            self._running[task.task_id] = (task, done, handle)
        self._when_done(handle, lambda: self._finish(task.task_id))

    def _unsendable(self, task: Task, exc: BaseException) -> SerializationError:
        return SerializationError(
            f"{task.describe()} could not be sent to {self.engine} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
            what="call",
            side="caller",
            index=task.first_index,
        )

    # -- results ---------------------------------------------------------------------------------

    def _finish(self, task_id: int) -> None:
        with self._lock:
            entry = self._running.pop(task_id, None)
            if entry is None:
                return  # reported already (cancelled at shutdown)
            self._reporting += 1
        try:
            task, done, handle = entry
            try:
                outcome = self._outcome(task, self._result(handle))
            except BaseException as error:  # noqa: BLE001 - every engine error is an outcome
                outcome = self._failure_outcome(task, error)
            if task.cancelled and outcome.status is not Status.CANCELLED:
                return  # dropped at the caller's request: no callback (Backend.cancel)
            self._in_callback.active = True
            done(task, outcome)
        finally:
            self._in_callback.active = False
            with self._lock:
                self._reporting -= 1
                self._settled.notify_all()

    def _outcome(self, task: Task, raw: tuple[Any, ...]) -> TaskOutcome:
        reply = view(RemoteReply, raw)
        kind, pid = reply.kind, reply.pid
        task.end_time = time.monotonic()
        task.worker = pid
        if pid not in self._pids_seen:
            self._pids_seen.add(pid)
            if self.events is not None:
                self.events.worker_started(pid, pid, 0.0)
        if kind == RemoteKind.DONE:
            values, failures = reply.values, reply.failures
            assert values is not None and failures is not None
            # The worker's clock may be another machine's: keep the caller's, less the run time.
            task.start_time = max(task.submit_time, task.end_time - reply.detail)
            for record in failures:
                values[record[0]] = failure_from_record(task, record)
            return TaskOutcome(Status.DONE, values, any_failed=bool(failures))
        task.start_time = task.submit_time
        if kind == RemoteKind.TIMEOUT:
            return TaskOutcome(
                Status.TIMED_OUT,
                error=TaskTimeoutError(
                    f"{task.describe()} ran past its timeout of {task.timeout:g} s on a "
                    f"{self.engine} worker (pid {pid}) and was interrupted",
                    timeout=task.timeout or 0.0,
                    index=task.first_index,
                ),
            )
        code = reply.detail  # RemoteKind.EXIT
        return TaskOutcome(
            Status.CRASHED,
            error=WorkerCrashedError(
                f"{task.describe()} called sys.exit({code!r}) inside a task on a {self.engine} "
                f"worker (pid {pid})",
                exitcode=code,
                index=task.first_index,
                attempts=task.attempt + 1,
            ),
        )

    def _failure_outcome(self, task: Task, error: BaseException) -> TaskOutcome:
        task.end_time = time.monotonic()
        task.start_time = task.submit_time
        kind = CANCELLED if task.cancelled else self._classify(error)
        summary = f"{type(error).__name__}: {_first_line(error)}"
        if kind == CANCELLED:
            return TaskOutcome(Status.CANCELLED)
        if kind == UNREADABLE:
            where = (
                f"item {task.first_index}"
                if len(task) == 1
                else f"one of items {task.first_index}..{task.first_index + len(task) - 1}"
            )
            return TaskOutcome(
                Status.UNREADABLE,
                error=SerializationError(
                    f"the call or the result of {where} could not be (un)pickled on "
                    f"{self.engine} ({summary}); return plain data (numbers, strings, lists, "
                    f"dicts, arrays), and define classes in an importable module",
                    what="result",
                    side="worker",
                    index=task.first_index,
                ),
            )
        items = (
            f"item {task.first_index} (one of {len(task)} in its chunk)"
            if len(task) > 1
            else task.describe()
        )
        self._after_crash()
        return TaskOutcome(
            Status.CRASHED,
            error=WorkerCrashedError(
                f"a {self.engine} worker died while running {items} ({summary}): the task "
                f"crashed its interpreter, was killed (out of memory?) or its node was lost",
                exitcode=None,
                index=task.first_index,
                attempts=task.attempt + 1,
            ),
        )

    # -- stopping --------------------------------------------------------------------------------

    def cancel(self, tasks: Any, *, kill_running: bool = False) -> None:
        for task in tasks:
            task.cancelled = True
            with self._lock:
                entry = self._running.get(task.task_id)
            if entry is not None:
                try:
                    self._cancel(entry[2], kill_running)
                except Exception:
                    pass  # already finished or the engine is gone: nothing to stop

    def shutdown(self, wait: bool = True, *, cancel_pending: bool = False) -> None:
        with self._lock:
            if self._closed and not self._running:
                return
            self._closed = True
            dropped = list(self._running.values()) if cancel_pending else []
            for task, _, _ in dropped:
                del self._running[task.task_id]
        for task, done, handle in dropped:
            task.cancelled = True
            try:
                self._cancel(handle, True)
            except Exception:
                pass
            done(task, TaskOutcome(Status.CANCELLED))
        if getattr(self._in_callback, "active", False):
            wait = False  # called from a done-callback: it cannot wait for itself to return
        if wait:
            with self._lock:
                self._settled.wait_for(lambda: not (self._running or self._reporting))
        self._disconnect()

    @property
    def alive(self) -> bool:
        return not self._closed

    @property
    def reporting(self) -> bool:
        with self._lock:
            return not self._closed or bool(self._running) or self._reporting > 0


def started_processes(before: set[int]) -> set[int]:
    """Children of this process that were not in ``before``: what an engine start added (less
    multiprocessing's resource tracker, which serves the whole interpreter until it exits)."""
    import psutil

    added = set()
    for child in psutil.Process().children():
        if child.pid in before:
            continue
        try:
            if "resource_tracker" in " ".join(child.cmdline()):
                continue
        except psutil.Error:
            continue
        added.add(child.pid)
    return added


def with_descendants(pids: set[int]) -> list[int]:
    """``pids`` still running, and every process they started (engine workers come and go)."""
    import psutil

    found = []
    for pid in pids:
        try:
            process = psutil.Process(pid)
            found.append(pid)
            found.extend(child.pid for child in process.children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    return found


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else ""
