"""The process backend: the embedded default, a pool of local worker processes.

::

    caller threads                manager thread (one per pool)               worker processes
    ──────────────                ─────────────────────────────               ────────────────
    submit(task) ─ pickle ─> pending deque ─> dispatch: batch tasks per   ──> run, pickle result
                   (errors    (+ wake pipe)   worker, up to its prefetch      (process_worker.py)
                    raised                     budget; non-blocking sends
                    here)                    <─ read results (non-blocking) <─ batched results
                              done(task, outcome) <─┘
                              worker death: pidfd readable -> reap (exit code, peak RSS), read
                              the worker's "current task" slot, blame that task, requeue the rest

Why this shape:
- Workers are fresh interpreters started with ``subprocess`` (not fork): safe with threads,
  CUDA and macOS, and they do not re-import the caller's ``__main__``; functions travel by value
  with cloudpickle, once per worker (a mirrored LRU cache), not once per task.
- One manager thread never blocks on a worker (non-blocking sockets), so a large payload in
  flight in both directions cannot deadlock, and a dead worker is seen at once through its pidfd.
- Each worker prefetches ~``PREFETCH_SECONDS`` of work, measured per function, so it never waits
  for the next message, but no more: slow tasks still balance across workers, and a function not
  yet measured is never queued behind another task (its future stays cancellable).

Threads and the state they share (each field is guarded by the lock that writes it, or owned by
one thread):
- The manager thread owns the workers, the selector, every deadline and the mixins' state
  (``_pending_after_dispatch``, ``_steal_due``...). Other threads reach it only through
  ``_commands`` (deque append/popleft are atomic) and the wake pipe.
- ``_lock`` guards the decisions that end the backend: ``_closing`` and ``_cancel_pending``
  (shutdown), ``_manager`` and ``_manager_done`` (the manager's start and exit), and submit's
  enqueue into ``_pending``; so a task is either refused or queued where the manager sees it
  before it exits. ``_broken`` is set on the manager thread before ``_fail_everything``, which
  drains ``_pending`` under ``_lock``. Reads outside the lock (``alive``, submit's early
  refusal, the garbage-collection callbacks) are hints that a locked check confirms.
- ``_pending``: callers append (under ``_lock``), only the manager takes from it.
- Wake-ups need no lock: only the manager writes ``_sleeping``, and before sleeping it compares
  ``len(_pending)`` with what its last dispatch left; a caller appends first, then writes a byte
  to the wake pipe if ``_sleeping`` is set and ``_wake_sent`` is not (callers set it, the
  manager clears it after draining the pipe). Either the manager sees the new length or the
  caller sees ``_sleeping``: no wake-up is lost.

Around this module (the public class, the caller's side, the manager loop and its wake-up):
``protocol.py`` lists every message and draws the exchange; ``process_messages.py`` is the
manager's side of it (commands, sockets, each message); ``process_dispatch.py`` decides which
task goes to which worker (prefetch, work stealing); ``process_lifecycle.py`` starts workers,
enforces deadlines and memory limits, and handles deaths and shutdown; ``process_handle.py``
starts, signals and reaps one worker; ``process_worker.py`` is the worker's side;
``process_outcomes.py`` turns replies and deaths into task outcomes; ``wire.py`` frames what
crosses the socket; ``buffers.py`` pickles it, putting large buffers in shared-memory segments
(``shm.py``) that travel as file descriptors.

Segments of task arguments come from this backend's pool and go back to it once the task is over
and every worker that mapped them has said ``released``; result segments belong to the worker,
and go back to its pool when the caller's last view of them is garbage-collected.
"""

from __future__ import annotations

import os
import selectors
import signal
import threading
import time
import weakref
from collections import deque
from typing import Any

from ..core.shared import Shared
from ..core.task import Task
from ..errors import BrokenPoolError, SerializationError
from . import buffers, shm
from .base import Backend, Capabilities, DoneCallback
from .process_dispatch import STEAL_AFTER_SECONDS, Dispatcher, _release
from .process_handle import TERM_GRACE_SECONDS, WorkerHandle
from .process_lifecycle import ABANDONED_TASK_GRACE_SECONDS, ZYGOTE_KEY, WorkerLifecycle
from .process_messages import Messages
from .process_zygote import ZygoteClient
from .protocol import (
    Command,
)

__all__ = ["ProcessBackend", "STEAL_AFTER_SECONDS", "TERM_GRACE_SECONDS"]

# worker_pids() waits this long at most for a worker whose fork the zygote has not confirmed.
PID_WAIT_SECONDS = 1.0

_live_backends: weakref.WeakSet[ProcessBackend] = weakref.WeakSet()
_shared_lock = threading.Lock()


def _function_forgotten(backend_ref: weakref.ref[ProcessBackend], function_key: int) -> None:
    backend = backend_ref()
    if backend is not None and backend._manager is not None and not backend._closing:
        backend._commands.append((Command.DROP_FUNCTION, function_key))
        backend._wake()


def _shared_forgotten(shared_id: int) -> None:
    """An fj.shared handle was garbage-collected: workers may drop their copy."""
    for backend in list(_live_backends):
        if backend._manager is not None:
            backend._commands.append((Command.FORGET, shared_id))
            backend._wake()


def _disown_after_fork() -> None:
    """A forked child inherits these objects but not their threads or workers."""
    for backend in _live_backends:
        backend._forked = True
    _live_backends.clear()


os.register_at_fork(after_in_child=_disown_after_fork)


def _shutdown_all_at_exit() -> None:
    for backend in list(_live_backends):
        backend.shutdown(wait=True)


import atexit  # noqa: E402  (registered once, next to the function it calls)

atexit.register(_shutdown_all_at_exit)


class ProcessBackend(Messages, WorkerLifecycle, Dispatcher, Backend):
    """Local worker processes; see the module docstring for the data flow."""

    name = "process"
    capabilities = Capabilities(
        isolates_crashes=True,
        supports_timeout=True,
        supports_memory_limit=True,
        serializes=True,
        recycles_workers=True,
    )

    def __init__(self, workers: int, **kwargs: Any) -> None:
        super().__init__(workers, **kwargs)
        self._forked = False  # set in a forked child, which cannot use its parent's workers
        self._pending: deque[tuple[Task, DoneCallback]] = deque()
        self._commands: deque[Any] = deque()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._sleeping = False
        self._wake_sent = False
        self._pending_after_dispatch = 0
        self._manager: threading.Thread | None = None
        self._workers: dict[int, WorkerHandle] = {}
        self._next_worker_id = 0
        self._failed_starts = 0
        self._closing = False
        self._cancel_pending = False
        self._broken: BaseException | None = None
        self._manager_done = False  # the manager exited or will: submit refuses
        self._task_seconds: dict[int, float] = {}  # function key -> seconds per task
        self._stop_deadline: float | None = None
        self._next_memory_check = 0.0
        self._watchdog_r: int | None = None
        self._watchdog_w: int | None = None
        self._selector: selectors.BaseSelector | None = None
        self._depth = int(os.environ.get("FORKJOIN_WORKER_DEPTH", "0")) + 1
        self._init_payload: buffers.Packed | None = None
        self._envs: dict[int, dict[str, str]] = {}  # slot index -> worker environment
        self._zygote: ZygoteClient | None = None  # forks workers (process_zygote.py)
        self._use_zygote = os.environ.get("FORKJOIN_ZYGOTE", "1") != "0"
        self._modules_run: dict[str, None] = {}
        self._modules_preloaded = 0
        self._spares_wanted = 0
        self._functions_learned: set[int] = set()
        self._segments = shm.SegmentPool()  # for task arguments
        self._segments.on_close = self._segment_closed
        if self.initializer is not None:
            try:
                self._init_payload = buffers.pack(
                    (self.initializer, tuple(self.initargs)), None, by_value=True
                )
                self._share_handles(self._init_payload.handles)
                if self._init_payload.segment is not None and self.events is not None:
                    self.events.data_shared(self._init_payload.nbytes)
            except Exception as exc:
                raise SerializationError(
                    f"the pool's initializer or initargs could not be pickled: "
                    f"{type(exc).__name__}: {exc}",
                    what="initializer",
                    side="caller",
                ) from exc
        _live_backends.add(self)

    # -- the caller's side -----------------------------------------------------------------------

    def submit(self, task: Task, done: DoneCallback) -> None:
        if self._forked:
            raise RuntimeError(
                "this process pool belongs to the parent of a forked process; create a new "
                "Pool in the child"
            )
        refusal = self._refusal(task)
        if refusal is not None:
            raise refusal
        function = task.function
        if function.payload is None:
            try:
                function.payload = buffers.pack(function.fn, None, by_value=True)
                self._share_handles(function.payload.handles)
                if function.payload.segment is not None:
                    self._function_shared(function)
            except Exception as exc:
                raise SerializationError(
                    f"the function {getattr(function.fn, '__qualname__', function.fn)!r} could "
                    f"not be pickled ({type(exc).__name__}: {exc}); define it at module level "
                    f"or make what it captures picklable",
                    what="function",
                    side="caller",
                ) from exc
        try:
            task.payload = buffers.pack(task.items, self._segments)
            if task.payload.handles:
                self._share_handles(task.payload.handles)
        except Exception as exc:
            raise SerializationError(
                f"{task.describe()} could not be pickled to send to a worker "
                f"({type(exc).__name__}: {exc})",
                what="argument",
                side="caller",
                index=task.first_index,
            ) from exc
        task.bytes_sent = task.payload.nbytes
        task.submit_time = time.monotonic()
        with self._lock:  # the checks above, again, where shutdown and the manager decide
            refusal = self._refusal(task)
            if refusal is None:
                self._pending.append((task, done))
                if self._manager is None:
                    self._start_manager()
                    return
        if refusal is not None:
            _release(task)
            raise refusal
        if self._sleeping and not self._wake_sent:
            self._wake()

    def _refusal(self, task: Task) -> BaseException | None:
        """Why ``task`` cannot be queued now, or None. Under ``_lock`` it is final (see the
        module docstring's thread rules); outside it, an early answer that saves pickling."""
        if self._broken is not None:
            return self._broken
        if self._manager_done or (
            self._closing and (task.attempt == 0 and not task.resent or self._cancel_pending)
        ):
            # A retry or resend of a task accepted before shutdown() is still run: a graceful
            # shutdown finishes the work it was given, crashes included.
            return RuntimeError("cannot submit to a process backend that is shut down")
        return None

    def _share_handles(self, handles: tuple[Shared[Any], ...]) -> None:
        """Copy each fj.shared object into its own segment, once, in the caller's thread (the
        manager thread only passes its fd on)."""
        for handle in handles:
            if handle.transport is not None:
                continue
            with _shared_lock:
                if handle.transport is not None:
                    continue
                packed = buffers.pack(handle.get(), None)
                self._share_handles(packed.handles)
                handle.transport = packed
                weakref.finalize(handle, _shared_forgotten, handle.shared_id)
            if self.events is not None:
                self.events.data_shared(packed.nbytes)

    def _function_shared(self, function: Any) -> None:
        """A function that carries large data (a captured array) is copied into shared memory
        once; when the caller lets go of it, workers drop it from their function cache, or it
        would hold that memory for as long as the pool lives."""
        if self.events is not None:
            self.events.data_shared(function.payload.nbytes)
        weakref.finalize(function, _function_forgotten, weakref.ref(self), function.key)

    def _segment_closed(self, segment_id: int) -> None:
        """Workers keep argument segments mapped for reuse; tell them this one is gone."""
        if self._manager is not None and not self._closing:
            self._commands.append((Command.UNMAP, segment_id))
            self._wake()

    def cancel(self, tasks: Any, *, kill_running: bool = False) -> None:
        tasks = list(tasks)
        for task in tasks:
            task.cancelled = True
        if self._manager is not None:
            grace = 0.0 if kill_running else ABANDONED_TASK_GRACE_SECONDS
            self._commands.append((Command.CANCEL, (grace, {task.task_id for task in tasks})))
            self._wake()

    def shutdown(self, wait: bool = True, *, cancel_pending: bool = False) -> None:
        with self._lock:
            self._closing = True
            self._cancel_pending = self._cancel_pending or cancel_pending
            manager = self._manager
        if manager is None:
            self._close_fds()
            _live_backends.discard(self)
            return
        self._wake()
        if wait and manager is not threading.current_thread():
            manager.join()

    @property
    def alive(self) -> bool:
        return not self._closing and self._broken is None

    @property
    def reporting(self) -> bool:
        # the manager reports (or fails) every accepted task before it exits
        manager = self._manager
        return self.alive or (manager is not None and manager.is_alive())

    def worker_pids(self) -> list[int]:
        """The workers' pids; a worker whose fork the zygote has not confirmed yet (a few ms)
        is waited for, up to PID_WAIT_SECONDS."""
        deadline = time.monotonic() + PID_WAIT_SECONDS
        while True:
            workers = [w for w in list(self._workers.values()) if not w.spare]
            if all(w.pid for w in workers) or time.monotonic() > deadline:
                return [w.pid for w in workers if w.pid]
            time.sleep(0.001)

    def service_pids(self) -> list[int]:
        zygote = self._zygote
        spares = [w.pid for w in list(self._workers.values()) if w.spare and w.pid]
        return ([zygote.proc.pid] if zygote is not None else []) + spares

    def _wake(self) -> None:
        self._wake_sent = True
        fd = self._wake_w
        if fd is None:  # the manager has already finished
            return
        try:
            os.write(fd, b"x")
        except OSError:
            pass

    def _start_manager(self) -> None:
        """Called with ``_lock`` held, so shutdown() sees either no manager or a started one."""
        self._watchdog_r, self._watchdog_w = os.pipe()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._manager = threading.Thread(
            target=self._manage, name="forkjoin-process-manager", daemon=True
        )
        self._manager.start()

    # -- the manager thread ----------------------------------------------------------------------

    def _manage(self) -> None:
        try:
            self._spawn_missing()
            while True:
                self._run_commands()
                if self._closing and self._finish_closing():
                    with self._lock:  # submit queues under it: nothing lands after this check
                        if not self._pending:  # else a retry came in: run it first
                            self._manager_done = True
                            break
                self._take_back_queued_tasks()
                self._fill_places()
                self._dispatch()
                self._keep_a_spare()
                self._wait_for_events()
        except BaseException as exc:  # a bug here must fail tasks loudly, never hang them
            broken = BrokenPoolError(f"forkjoin's process manager failed: {exc!r}")
            broken.__cause__ = exc
            self._broken = broken
            self._fail_everything(broken)
        finally:
            with self._lock:
                self._manager_done = True
            self._teardown()

    def _wait_for_events(self) -> None:
        assert self._selector is not None
        timeout = self._next_timeout()
        self._sleeping = True
        # Work that arrived after the last dispatch and before _sleeping was set sent no wake-up.
        if len(self._pending) != self._pending_after_dispatch or self._commands:
            timeout = 0
        events = self._selector.select(timeout)
        self._sleeping = False
        for key, mask in events:
            data = key.data
            if data is ZYGOTE_KEY:
                self._zygote_readable()
                continue
            if data is not None and data[0].worker_id not in self._workers:
                continue  # already handled through its other file descriptor
            if data is None:
                try:
                    while os.read(self._wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
                # Cleared after draining, never before: a wake-up sent in between must leave
                # either its byte in the pipe or the flag clear, or the next submit would not
                # wake a sleeping manager (a lost wake-up: a hang).
                self._wake_sent = False
            elif data[1] == "sock":
                worker = data[0]
                if mask & selectors.EVENT_WRITE:
                    self._flush(worker)
                if mask & selectors.EVENT_READ:
                    self._read(worker)
            else:
                self._on_death(data[0])
        self._check_deadlines()

    def _next_timeout(self) -> float | None:
        deadlines = [self._stop_deadline] if self._stop_deadline is not None else []
        if self.memory_limit is not None and self._workers:
            deadlines.append(self._next_memory_check)
        self._steal_due = self._steal_check_due()  # read again at the next wake-up
        if self._steal_due:
            deadlines.append(time.monotonic() + STEAL_AFTER_SECONDS / 2)
        for worker in self._workers.values():
            if worker.task_deadline is not None:
                deadlines.append(worker.task_deadline)
            if worker.kill_deadline is not None:
                deadlines.append(worker.kill_deadline)
            if worker.abandon_deadline is not None:
                deadlines.append(worker.abandon_deadline)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _teardown(self) -> None:
        for worker in list(self._workers.values()):
            worker.signal(signal.SIGKILL)
            worker.reap()
            self._forget(worker)
        self._stop_zygote()
        if self._selector is not None:
            self._selector.close()
        self._segments.close()
        self._close_fds()
        _live_backends.discard(self)

    def _close_fds(self) -> None:
        for name in ("_watchdog_w", "_watchdog_r", "_wake_w", "_wake_r"):
            fd = getattr(self, name)
            if fd is not None:
                setattr(self, name, None)
                try:
                    os.close(fd)
                except OSError:
                    pass
