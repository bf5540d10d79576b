"""Worker lifecycle for the process backend: start, deadlines, memory, death, shutdown.

::

    _spawn ──("init", sys.path, authkey, initializer...)──> worker ──("ready")──> READY
    deadlines (the manager's select timeout): timeout= -> SIGTERM, then SIGKILL after
      TERM_GRACE_SECONDS; abandoned tasks; memory_limit= checks every MEMORY_CHECK_SECONDS
    death (pidfd readable): reap exit code and peak RSS, read the "current task" slot, blame
      that task (death_outcome), requeue the others it held, spawn a replacement
    spare: after the first death, one worker more is kept started and idle; the next death's
      replacement is then ready at once (and a new spare starts in the background); more
      spares (up to MAX_SPARES) where deaths come faster than a worker starts
    max_tasks_per_child=: a worker that ran its share gets "stop" and is replaced
    shutdown: finish (or cancel) what is pending, "stop" each worker, SIGKILL stragglers

A mixin of ``ProcessBackend`` (process.py), which owns the state it uses; the manager thread
alone runs these methods.
"""

from __future__ import annotations

import os
import selectors
import signal
import sys
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from ..core.resources import Slot
from ..core.task import Status, Task, TaskOutcome
from ..errors import BrokenPoolError
from . import buffers
from .base import DoneCallback, EventSink
from .process_dispatch import _release
from .process_handle import TERM_GRACE_SECONDS, WorkerHandle, WorkerState, worker_environment
from .process_outcomes import death_outcome, with_partial_results
from .process_zygote import ZygoteClient, function_modules, pickled_modules
from .protocol import KillReason, Msg

# A task whose caller stopped waiting (broke out of imap) may finish within this long; after
# that its worker is stopped so the pool is free for the next call.
ABANDONED_TASK_GRACE_SECONDS = 1.0
# At shutdown, workers get a stop message, then SIGKILL after this long.
STOP_GRACE_SECONDS = 2.0
# This many workers in a row dying before they are ready means they cannot start at all.
MAX_FAILED_STARTS = 3
# Why a worker stopped, when it was a fault of the work (None: it died on its own).
_FAULT_REASONS = (None, KillReason.TIMEOUT, KillReason.MEMORY)
# The selector's mark for the zygote's control socket (workers' are (handle, "sock"/"pid")).
ZYGOTE_KEY = (None, "zygote")
# The most workers a pool keeps started ahead when its workers keep dying (see _want_a_spare).
MAX_SPARES = 4
# How often worker memory is read when memory_limit= is set (and a task is running): a task is
# stopped within this long of crossing the limit. /proc reads cost ~20 us per worker.
MEMORY_CHECK_SECONDS = 0.05


class WorkerLifecycle:
    """Starting, watching and stopping workers (see the module docstring)."""

    # Owned by ProcessBackend; listed here for readers and type checkers.
    _pending: deque[tuple[Task, DoneCallback]]
    _workers: dict[int, WorkerHandle]
    _selector: selectors.BaseSelector | None
    _watchdog_r: int | None
    _envs: dict[int, dict[str, str]]
    _depth: int
    _init_payload: buffers.Packed | None
    _next_worker_id: int
    _failed_starts: int
    _broken: BaseException | None
    _closing: bool
    _cancel_pending: bool
    _lock: threading.Lock
    _stop_deadline: float | None
    _next_memory_check: float
    _segments: Any
    _zygote: ZygoteClient | None
    _use_zygote: bool
    _modules_run: dict[str, None]  # modules of the functions sent to workers, in order
    _modules_preloaded: int  # how many of them the zygote has imported
    _functions_learned: set[int]  # keys of the functions whose modules are noted
    _spares_wanted: int  # workers to keep started ahead, once workers die (see _spawn_missing)
    workers: int
    slots: list[Slot]
    memory_limit: int | None
    max_tasks_per_child: int | None
    preload: tuple[str, ...]
    events: EventSink | None

    if TYPE_CHECKING:  # defined by the other parts of ProcessBackend

        def _send(
            self, worker: WorkerHandle, message: Any, fds: list[int] | None = None
        ) -> None: ...  # process_messages.py

        def _read(self, worker: WorkerHandle, dying: bool = False) -> None: ...  # messages

        def _report(
            self, task: Task, done: DoneCallback, outcome: TaskOutcome
        ) -> None: ...  # process_messages.py

        def _attach_shared(
            self, worker: WorkerHandle, handles: Any, shared: list[Any], fds: list[int]
        ) -> None: ...  # process_dispatch.py

        def _descriptor(self, packed: Any, fds: list[int]) -> Any: ...  # process_dispatch.py

        def _drop_holdings(self, worker: WorkerHandle) -> None: ...  # process_dispatch.py

        def _repack(self, task: Task) -> None: ...  # process_dispatch.py

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        for worker in list(self._workers.values()):
            if worker.kill_deadline is not None and now >= worker.kill_deadline:
                worker.signal(signal.SIGKILL)
                worker.kill_deadline = None
            if worker.abandon_deadline is not None and now >= worker.abandon_deadline:
                worker.abandon_deadline = None
                if any(task.cancelled for task, _ in worker.in_flight.values()):
                    self._kill(worker, KillReason.CANCELLED)
            if worker.task_deadline is not None and now >= worker.task_deadline:
                worker.task_deadline = None
                self._kill(worker, KillReason.TIMEOUT)
        if self.memory_limit is not None and now >= self._next_memory_check:
            self._next_memory_check = now + MEMORY_CHECK_SECONDS
            self._check_memory(self.memory_limit)
        if self._stop_deadline is not None and now >= self._stop_deadline:
            self._stop_deadline = None
            for worker in self._workers.values():
                worker.signal(signal.SIGKILL)

    def _check_memory(self, limit: int) -> None:
        """Stop the task that pushed its worker past the limit; recycle an idle worker over it."""
        for worker in list(self._workers.values()):
            if worker.kill_reason is not None or worker.state is not WorkerState.READY:
                continue
            rss = worker.resident_memory()
            worker.peak_rss = max(worker.peak_rss, rss)
            if rss <= limit:
                continue
            if worker.in_flight:
                worker.kill_reason = KillReason.MEMORY
                worker.signal(signal.SIGKILL)  # it is still growing: no grace period
            else:
                self._kill(worker, KillReason.RECYCLE)  # holds memory between tasks: replace it

    # -- starting and stopping workers -----------------------------------------------------------

    def _spawn_missing(self) -> None:
        """Keep the pool at full strength; while closing, only as needed to finish the queue.

        A pool whose workers have died keeps a spare: a worker started ahead that takes no
        task until it fills the place of the next one to die, so that a job whose items crash
        their worker does not wait for a start-up per crash (issue 21). Only where every slot
        is alike (no GPU pinning), since a spare must fit any place. The manager fills the
        places before it dispatches and starts the next spare after, so the spare that took a
        dead worker's place gets its tasks without waiting for the next spare's fork."""
        self._fill_places()
        self._keep_a_spare()

    def _fill_places(self) -> None:
        """A started worker in every slot: the spare takes the first empty place, a new worker
        each other one."""
        if self._broken is not None or (self._closing and not self._pending):
            return
        spares = [w for w in self._workers.values() if w.spare and w.kill_reason is None]
        spares.sort(key=lambda w: w.state is not WorkerState.READY)  # a started one first
        taken = {worker.slot_index for worker in self._workers.values() if not worker.spare}
        if len(taken) < self.workers:
            for slot in self.slots:
                if slot.index in taken:
                    continue
                if spares:
                    spare = spares.pop(0)
                    spare.spare, spare.slot_index = False, slot.index
                else:
                    self._spawn(slot)  # a replacement takes the dead worker's GPUs

    def _keep_a_spare(self) -> None:
        if not self._spares_wanted or self._closing or self._broken is not None:
            return
        spares = sum(worker.spare for worker in self._workers.values())
        for _ in range(self._spares_wanted - spares):
            self._spawn(self.slots[0], spare=True)

    def _want_a_spare(self, worker: WorkerHandle) -> None:
        """A worker died on its own, or was stopped for a task's timeout or memory: the next
        death will find a replacement ready. Where deaths come faster than a worker starts
        (a death found no spare ready), one spare more, up to MAX_SPARES and the pool's size:
        a start costs the same whether it is done ahead or not, but done ahead nobody waits."""
        alike = len({(slot.threads, tuple(slot.environment().items())) for slot in self.slots})
        if self._zygote is None or alike != 1 or worker.kill_reason not in _FAULT_REASONS:
            return
        ready = any(w.spare and w.state is WorkerState.READY for w in self._workers.values())
        if not self._spares_wanted or (
            not ready and self._spares_wanted < min(MAX_SPARES, self.workers)
        ):
            self._spares_wanted += 1

    def _spawn(self, slot: Slot, spare: bool = False) -> None:
        assert self._selector is not None and self._watchdog_r is not None
        env = self._envs.get(slot.index)
        if env is None:
            env = self._envs[slot.index] = worker_environment(slot, self._depth)
        worker = self._start_worker(env)
        worker.slot_index = slot.index
        worker.spare = spare
        worker.memory_limit = self.memory_limit
        worker.tasks_left = self.max_tasks_per_child
        self._next_worker_id += 1
        self._workers[worker.worker_id] = worker
        self._selector.register(worker.sock, selectors.EVENT_READ, (worker, "sock"))
        if worker.pidfd >= 0:
            self._selector.register(worker.pidfd, selectors.EVENT_READ, (worker, "pid"))
        fds: list[int] = []
        shared: list[tuple[int, Any]] = []
        init_payload = None
        if self._init_payload is not None:
            self._attach_shared(worker, self._init_payload.handles, shared, fds)
            init_payload = self._descriptor(self._init_payload, fds)
        init = (  # a protocol.Init
            Msg.INIT.value, worker.worker_id, list(sys.path), self._depth, init_payload, shared,
            slot.device, slot.gpu_ids, _authkey(),
        )  # fmt: skip
        self._send(worker, init, fds)

    def _start_worker(self, env: dict[str, str]) -> WorkerHandle:
        """Fork it from the zygote (see process_zygote.py); if the zygote cannot start or stops
        answering, start interpreters directly from then on."""
        assert self._watchdog_r is not None
        if self._zygote is None and self._use_zygote:
            self._zygote = ZygoteClient.start(self._watchdog_r, self._zygote_environment())
            self._use_zygote = self._zygote is not None
            self._modules_preloaded = 0
            if self._zygote is not None:
                assert self._selector is not None
                self._selector.register(self._zygote.control, selectors.EVENT_READ, ZYGOTE_KEY)
                for name in self.preload:  # the pool's preload=: imported before the first fork
                    self._modules_run.setdefault(name, None)
                self._preload_in_zygote(self._zygote)
        if self._zygote is not None and self._next_worker_id >= self.workers:
            self._preload_in_zygote(self._zygote)  # a replacement: see process_zygote.py
        if self._zygote is not None:
            try:
                return WorkerHandle.start(
                    self._next_worker_id, self._watchdog_r, env, self._zygote, self._on_spawned
                )
            except OSError:
                self._zygote_failed()
        return WorkerHandle.start(self._next_worker_id, self._watchdog_r, env)

    def _on_spawned(self, worker: WorkerHandle, pid: int) -> None:
        """The zygote forked ``worker`` (or its Ready said the pid first): watch its pidfd."""
        if worker.pid or worker.worker_id not in self._workers:
            return  # known already, or gone (its socket closed first)
        assert self._selector is not None
        worker.set_pid(pid)
        if worker.pidfd >= 0:
            self._selector.register(worker.pidfd, selectors.EVENT_READ, (worker, "pid"))

    def _zygote_readable(self) -> None:
        assert self._zygote is not None
        try:
            self._zygote.receive_waiting()
        except OSError:
            self._zygote_failed()

    def _zygote_failed(self) -> None:
        """The zygote stopped answering: start workers as fresh interpreters from now on. A
        worker it never forked closes its socket (the zygote held the other end), which the
        manager takes as a death at start-up."""
        self._stop_zygote()
        self._use_zygote = False

    def _zygote_environment(self) -> dict[str, str]:
        """The caller's environment with the workers' thread caps (when every worker has the
        same), so what the zygote imports is capped as it would be in a worker."""
        from ..machine import thread_cap_env

        env = dict(os.environ, FORKJOIN_WORKER_DEPTH=str(self._depth))
        caps = {slot.threads for slot in self.slots}
        if len(caps) == 1:
            for name, value in thread_cap_env(caps.pop()).items():
                env.setdefault(name, value)
        return env

    def _learn_modules(self, function: Any) -> None:
        """Note the modules a worker needs to unpickle ``function`` (a FunctionRef) and run it:
        the zygote imports them (see _preload_in_zygote). Once per function."""
        if function.key in self._functions_learned:
            return
        self._functions_learned.add(function.key)
        names = function_modules(function.fn)
        stream = function.payload.stream if function.payload is not None else None
        if stream is not None:
            names += pickled_modules(stream)
        for name in names:
            self._modules_run.setdefault(name, None)

    def _preload_in_zygote(self, zygote: ZygoteClient) -> None:
        modules = list(self._modules_run)[self._modules_preloaded :]
        if modules and len({slot.threads for slot in self.slots}) == 1:
            zygote.preload(modules)
            self._modules_preloaded += len(modules)

    def _stop_zygote(self) -> None:
        if self._zygote is not None:
            if self._selector is not None:
                try:
                    self._selector.unregister(self._zygote.control)
                except (KeyError, ValueError):
                    pass
            self._zygote.close()
            self._zygote = None

    def _kill(self, worker: WorkerHandle, reason: KillReason) -> None:
        """Stop a worker (SIGTERM, then SIGKILL after a grace period)."""
        if worker.kill_reason is None:
            worker.kill_reason = reason
            worker.kill_deadline = time.monotonic() + TERM_GRACE_SECONDS
            worker.signal(signal.SIGTERM)

    def _retire(self, worker: WorkerHandle) -> None:
        """A worker that ran max_tasks_per_child= tasks exits; a fresh one takes its slot."""
        worker.kill_reason = KillReason.RETIRED
        worker.state = WorkerState.STOPPING
        worker.kill_deadline = time.monotonic() + STOP_GRACE_SECONDS
        self._send(worker, (Msg.STOP.value,))

    def _forget(self, worker: WorkerHandle) -> None:
        assert self._selector is not None
        self._workers.pop(worker.worker_id, None)
        for fileobj in (worker.sock, worker.pidfd):
            try:
                self._selector.unregister(fileobj)
            except (KeyError, ValueError):
                pass
        worker.close()

    def _on_death(self, worker: WorkerHandle) -> None:
        """A worker exited: blame the task it was running, requeue the others it held."""
        if worker.worker_id not in self._workers:
            return
        if worker.sock_open:
            self._read(worker, dying=True)  # results it sent before dying still count
        exitcode = worker.reap()
        self._drop_holdings(worker)
        blamed_id = worker.current_task_id()
        if not blamed_id and worker.in_flight and worker.slot is None:
            blamed_id = next(iter(worker.in_flight))
        self._forget(worker)
        if self.events is not None:
            self.events.worker_exited(worker.worker_id, worker.pid, exitcode, worker.peak_rss)
        if worker.state is WorkerState.STARTING and worker.kill_reason is None:
            self._failed_starts += 1
            if self._failed_starts >= MAX_FAILED_STARTS and self._broken is None:
                self._broken = BrokenPoolError(
                    f"worker processes exit during start-up (last exit code {exitcode}); see "
                    f"their output above. Is forkjoin importable by {sys.executable}?"
                )
                self._fail_everything(self._broken)
        if not worker.spare:
            self._want_a_spare(worker)
        requeue = []
        for task_id, (task, done) in worker.in_flight.items():
            if worker.kill_reason is KillReason.CANCELLED and task.cancelled:
                _release(task)
                continue
            if worker.kill_reason is KillReason.SHUTDOWN:
                self._report(task, done, TaskOutcome(Status.CANCELLED))
            elif task_id == blamed_id:
                outcome = death_outcome(worker, task, exitcode)
                self._report(task, done, with_partial_results(task, outcome))
            else:
                requeue.append((task, done))
        for task, done in reversed(requeue):
            task.partial, task.partial_failed, task.partial_error = [], False, None  # runs anew
            self._repack(task)
            self._pending.appendleft((task, done))

    # -- failing, closing ------------------------------------------------------------------------

    def _fail_everything(self, error: BaseException) -> None:
        """Every task this backend holds ends with ``error`` (a broken pool, a manager bug)."""
        outcome = TaskOutcome(Status.FAILED, error=error)
        # _broken is set before this runs, and submit reads it and queues under _lock: so a
        # task is either refused by submit or taken here, never left behind in _pending.
        with self._lock:
            pending = list(self._pending)
            self._pending.clear()
        for task, done in pending:
            self._report(task, done, outcome)
        for worker in list(self._workers.values()):
            for task, callback in list(worker.in_flight.values()):
                self._report(task, callback, outcome)
            worker.in_flight.clear()
            self._kill(worker, KillReason.BROKEN)

    def _finish_closing(self) -> bool:
        """Progress the shutdown; True once every worker is gone."""
        if self._cancel_pending:
            while self._pending:
                task, done = self._pending.popleft()
                self._report(task, done, TaskOutcome(Status.CANCELLED))
            for worker in self._workers.values():
                if worker.in_flight:
                    self._kill(worker, KillReason.SHUTDOWN)
        pending = self._pending  # nobody waits for cancelled tasks: drop them, stop running ones
        for _ in range(len(pending)):
            entry = pending.popleft()
            if entry[0].cancelled:
                _release(entry[0])
            else:
                pending.append(entry)
        for worker in self._workers.values():
            if worker.in_flight and all(t.cancelled for t, _ in worker.in_flight.values()):
                self._kill(worker, KillReason.CANCELLED)
        if self._pending or any(w.in_flight for w in self._workers.values()):
            return False
        if not self._workers:
            return True
        if self._stop_deadline is None:
            self._stop_deadline = time.monotonic() + STOP_GRACE_SECONDS
            for worker in self._workers.values():
                if worker.state is WorkerState.READY:
                    worker.state = WorkerState.STOPPING
                    self._send(worker, (Msg.STOP.value,))
                else:
                    self._kill(worker, KillReason.SHUTDOWN)
        return False


def _authkey() -> bytes:
    """The caller's multiprocessing authkey: workers take it on, so ``multiprocessing.Manager``
    proxies passed to tasks or ``initargs`` authenticate as they do in the standard library's
    pools (whose children inherit it)."""
    import multiprocessing

    return bytes(multiprocessing.current_process().authkey)



