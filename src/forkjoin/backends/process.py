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

Around this module: ``process_dispatch.py`` decides which task goes to which worker (prefetch,
work stealing); ``process_lifecycle.py`` starts workers, enforces deadlines and memory limits,
and handles deaths and shutdown; ``process_handle.py`` starts, signals and reaps one worker;
``process_worker.py`` is the worker's side; ``process_outcomes.py`` turns replies and deaths into
task outcomes; ``wire.py`` frames what crosses the socket; ``buffers.py`` pickles it, putting
large buffers in shared-memory segments (``shm.py``) that travel as file descriptors.

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
from functools import partial
from typing import Any

from ..engine.shared import Shared
from ..engine.task import Status, Task, TaskOutcome
from ..errors import BrokenPoolError, SerializationError
from . import buffers, shm, wire
from .base import Backend, Capabilities, DoneCallback, report_outcome
from .process_dispatch import STEAL_AFTER_SECONDS, Dispatcher, _release
from .process_handle import TERM_GRACE_SECONDS, WorkerHandle, WorkerState
from .process_lifecycle import ABANDONED_TASK_GRACE_SECONDS, WorkerLifecycle
from .process_outcomes import decode_results, with_partial_results
from .process_zygote import ZygoteClient

__all__ = ["ProcessBackend", "STEAL_AFTER_SECONDS", "TERM_GRACE_SECONDS"]

# A worker's reply status for a task it could not even start -> SerializationError.what
_UNREADABLE_WHAT = {"unreadable function": "function", "unreadable argument": "argument"}

_live_backends: weakref.WeakSet[ProcessBackend] = weakref.WeakSet()
_shared_lock = threading.Lock()


def _result_unmapped(
    backend_ref: weakref.ref[ProcessBackend], worker_id: int, segment_id: int
) -> None:
    """The caller's last view of a worker's result segment is gone: the worker may reuse it.
    Runs wherever the garbage collector runs, so it only queues a command."""
    backend = backend_ref()
    if backend is not None and backend._manager is not None:
        backend._commands.append(("release", (worker_id, segment_id)))
        backend._wake()


def _function_forgotten(backend_ref: weakref.ref[ProcessBackend], function_key: int) -> None:
    backend = backend_ref()
    if backend is not None and backend._manager is not None and not backend._closing:
        backend._commands.append(("drop function", function_key))
        backend._wake()


def _shared_forgotten(shared_id: int) -> None:
    """An fj.shared handle was garbage-collected: workers may drop their copy."""
    for backend in list(_live_backends):
        if backend._manager is not None:
            backend._commands.append(("forget", shared_id))
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


class ProcessBackend(WorkerLifecycle, Dispatcher, Backend):
    """Local worker processes; see the module docstring for the data flow."""

    name = "process"
    capabilities = Capabilities(
        isolates_crashes=True,
        supports_timeout=True,
        supports_memory_limit=True,
        serializes=True,
        zero_copy=True,
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
        self._spare_wanted = False
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
        if self._broken is not None:
            raise self._broken
        if self._closing and (task.attempt == 0 and not task.resent or self._cancel_pending):
            # A retry or resend of a task accepted before shutdown() is still run: a graceful
            # shutdown finishes the work it was given, crashes included.
            raise RuntimeError("cannot submit to a process backend that is shut down")
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
        self._pending.append((task, done))
        if self._manager is None:
            self._start_manager()
        elif self._sleeping and not self._wake_sent:
            self._wake()

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
            self._commands.append(("unmap", segment_id))
            self._wake()

    def cancel(self, tasks: Any, *, kill_running: bool = False) -> None:
        tasks = list(tasks)
        for task in tasks:
            task.cancelled = True
        if self._manager is not None:
            grace = 0.0 if kill_running else ABANDONED_TASK_GRACE_SECONDS
            self._commands.append(("cancel", (grace, {task.task_id for task in tasks})))
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

    def worker_pids(self) -> list[int]:
        return [w.pid for w in list(self._workers.values()) if not w.spare]

    def service_pids(self) -> list[int]:
        zygote = self._zygote
        spares = [w.pid for w in list(self._workers.values()) if w.spare]
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
        with self._lock:
            if self._manager is not None:
                return
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
                    break
                self._take_back_queued_tasks()
                self._dispatch()
                self._spawn_missing()
                self._wait_for_events()
        except BaseException as exc:  # a bug here must fail tasks loudly, never hang them
            self._broken = BrokenPoolError(f"forkjoin's process manager failed: {exc!r}")
            self._broken.__cause__ = exc
            self._fail_everything(self._broken)
        finally:
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
        if self._steal_check_due():
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

    def _run_commands(self) -> None:
        releases: dict[int, list[int]] = {}
        forgotten: set[int] = set()
        unmapped: list[int] = []
        while self._commands:
            command, argument = self._commands.popleft()
            if command == "cancel":
                grace, task_ids = argument
                deadline = time.monotonic() + grace
                for worker in list(self._workers.values()):
                    if any(task_id in task_ids for task_id in worker.in_flight):
                        if grace <= 0:
                            self._kill(worker, "cancelled")
                        elif worker.abandon_deadline is None:
                            worker.abandon_deadline = deadline
            elif command == "release":
                worker_id, segment_id = argument
                releases.setdefault(worker_id, []).append(segment_id)
            elif command == "forget":
                forgotten.add(argument)
            elif command == "unmap":
                unmapped.append(argument)
            elif command == "drop function":
                for worker in self._workers.values():
                    if argument in worker.functions:  # the mirror, then the worker's cache
                        del worker.functions[argument]
                        if worker.state is WorkerState.READY:
                            self._send(worker, ("drop function", argument))
        if unmapped:
            for worker in self._workers.values():
                if worker.state is WorkerState.READY:
                    self._send(worker, ("unmap", unmapped))
        for worker_id, segment_ids in releases.items():
            owner = self._workers.get(worker_id)
            if owner is not None and owner.state is WorkerState.READY:
                self._send(owner, ("release", segment_ids))
        if forgotten:
            for worker in self._workers.values():
                drop = forgotten & worker.shared_sent
                if drop and worker.state is WorkerState.READY:
                    worker.shared_sent -= drop
                    self._send(worker, ("forget", list(drop)))

    def _send(self, worker: WorkerHandle, message: Any, fds: list[int] | None = None) -> None:
        assert self._selector is not None
        worker.writer.add(wire.dumps(message), fds)
        try:
            worker.writer.flush(worker.sock)
        except OSError:
            worker.writer.clear()  # the worker is gone; its pidfd will report it
            return
        if worker.writer and not worker.want_write:
            worker.want_write = True
            self._selector.modify(
                worker.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, (worker, "sock")
            )

    def _flush(self, worker: WorkerHandle) -> None:
        assert self._selector is not None
        try:
            worker.writer.flush(worker.sock)
        except OSError:
            worker.writer.clear()
        if not worker.writer and worker.want_write:
            worker.want_write = False
            self._selector.modify(worker.sock, selectors.EVENT_READ, (worker, "sock"))

    def _read(self, worker: WorkerHandle, dying: bool = False) -> None:
        assert self._selector is not None
        try:
            frames = worker.reader.read(worker.sock)
            closed = False
        except (EOFError, OSError):
            frames, closed = [], True
        for frame, fds in frames:
            try:
                self._handle_message(worker, wire.loads(frame), fds)
            finally:
                wire.close_fds(fds)  # segments are mapped by now
        if closed and worker.sock_open:
            worker.sock_open = False
            try:
                self._selector.unregister(worker.sock)
            except (KeyError, ValueError):
                pass
            if worker.pidfd < 0 and not dying:  # no pidfd: the closed socket is the sentinel
                self._on_death(worker)

    def _handle_message(
        self, worker: WorkerHandle, message: tuple[Any, ...], fds: list[int]
    ) -> None:
        kind = message[0]
        if kind == "results":
            worker.peak_rss = max(worker.peak_rss, message[2])
            self._released_by(worker, message[3])
            for entry in message[1]:
                self._on_result(worker, entry, fds)
        elif kind == "ready":
            worker.state = WorkerState.READY
            self._failed_starts = 0
            if self.events is not None:
                self.events.worker_started(
                    worker.worker_id, worker.pid, time.monotonic() - worker.started_at
                )
        elif kind == "may run":
            self._answer_may_run(worker, message[1])
        elif kind == "init_error":
            if self._broken is None:
                self._broken = BrokenPoolError(
                    f"the pool's initializer raised {message[1]} in a worker; fix it or "
                    f"create the pool without initializer=\n{message[2]}"
                )
                self._fail_everything(self._broken)

    def _on_result(self, worker: WorkerHandle, entry: tuple[Any, ...], fds: list[int]) -> None:
        task_id, status, start, end, payload, failures = entry
        held = (
            worker.in_flight.get(task_id)
            if status == "partial"
            else worker.in_flight.pop(task_id, None)
        )
        if held is None:  # nobody waits for it: hand the worker its segment back at once
            if status in ("done", "partial") and len(payload) > 1 and payload[4]:
                self._commands.append(("release", (worker.worker_id, payload[4])))
            return
        task, done = held
        if status == "partial":
            self._on_partial(worker, task, payload, failures, fds)
            return
        if worker.tasks_left == 0 and not worker.in_flight:
            self._retire(worker)
        if task.timeout is not None:
            worker.exclusive = False
            worker.task_deadline = None
        task.start_time, task.end_time = start, end
        if status != "done":  # "unreadable function" or "unreadable argument"
            error = SerializationError(
                f"{task.describe()}: {payload}",
                what=_UNREADABLE_WHAT[status],
                side="worker",
                index=task.first_index,
            )
            self._report(task, done, TaskOutcome(Status.UNREADABLE, error=error))
            return
        self._measure(task.function.key, end - start)
        task.bytes_received += buffers.descriptor_bytes(payload)
        on_unmapped = partial(_result_unmapped, weakref.ref(self), worker.worker_id)
        outcome = decode_results(task, payload, failures, fds, on_unmapped)
        self._report(task, done, with_partial_results(task, outcome))

    def _on_partial(
        self, worker: WorkerHandle, task: Task, payload: Any, failures: Any, fds: list[int]
    ) -> None:
        """The results of a streaming task's first items, sent while it still runs."""
        task.bytes_received += buffers.descriptor_bytes(payload)
        if task.partial_error is not None:
            return
        on_unmapped = partial(_result_unmapped, weakref.ref(self), worker.worker_id)
        outcome = decode_results(task, payload, failures, fds, on_unmapped)
        if outcome.status is Status.DONE:
            task.partial += outcome.values
            task.partial_failed = task.partial_failed or outcome.any_failed
        else:
            task.partial_error = outcome

    def _report(self, task: Task, done: DoneCallback, outcome: TaskOutcome) -> None:
        _release(task)
        if task.cancelled and outcome.status is not Status.CANCELLED:
            return
        report_outcome(done, task, outcome)

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


