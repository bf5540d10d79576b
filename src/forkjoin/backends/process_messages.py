"""The manager thread's conversation with its workers: commands, sockets, messages.

::

    caller threads ──(Command, arg)──> command deque ──> _run_commands: one round's releases,
                                                         unmaps and forgets batched per worker
    _send: frame (wire.py), write without blocking; the rest waits for the socket (EVENT_WRITE)
    _read: whole frames -> _handle_message: Results (each ResultEntry: a task's values, or
           PARTIAL values of a streaming chunk), Ready, MayRun, InitError (see protocol.py)

A mixin of ``ProcessBackend`` (process.py), which owns the state it uses; the manager thread
alone runs these methods.
"""

from __future__ import annotations

import selectors
import time
import weakref
from collections import deque
from functools import partial
from typing import TYPE_CHECKING, Any

from ..core.task import Status, Task, TaskOutcome
from ..errors import BrokenPoolError, SerializationError
from . import buffers, wire
from .base import DoneCallback, EventSink, report_outcome
from .process_dispatch import _release
from .process_handle import WorkerHandle, WorkerState
from .process_outcomes import decode_results, with_partial_results
from .protocol import (
    Command,
    InitError,
    KillReason,
    MayRun,
    Msg,
    Ready,
    Reply,
    ResultEntry,
    Results,
    is_inline,
    segment_id_of,
    view,
)

# A worker's reply status for a task it could not even start -> SerializationError.what
_UNREADABLE_WHAT: dict[str, str] = {
    Reply.UNREADABLE_FUNCTION: "function",
    Reply.UNREADABLE_ARGUMENT: "argument",
}
_WITH_VALUES = frozenset({Reply.DONE, Reply.PARTIAL})  # replies whose values are results


def _result_unmapped(backend_ref: weakref.ref[Any], worker_id: int, segment_id: int) -> None:
    """The caller's last view of a worker's result segment is gone: the worker may reuse it.
    Runs wherever the garbage collector runs, so it only queues a command."""
    backend = backend_ref()
    if backend is not None and backend._manager is not None:
        backend._commands.append((Command.RELEASE, (worker_id, segment_id)))
        backend._wake()


class Messages:
    """Commands and worker messages (see the module docstring)."""

    # Owned by ProcessBackend; listed here for readers and type checkers.
    _commands: deque[Any]
    _workers: dict[int, WorkerHandle]
    _selector: selectors.BaseSelector | None
    _failed_starts: int
    _broken: BaseException | None
    events: EventSink | None

    if TYPE_CHECKING:  # defined by the other parts of ProcessBackend

        def _kill(self, worker: WorkerHandle, reason: KillReason) -> None: ...
        def _retire(self, worker: WorkerHandle) -> None: ...
        def _on_death(self, worker: WorkerHandle) -> None: ...
        def _on_spawned(self, worker: WorkerHandle, pid: int) -> None: ...
        def _fail_everything(self, error: BaseException) -> None: ...
        def _answer_may_run(self, worker: WorkerHandle, seq: int) -> None: ...
        def _released_by(self, worker: WorkerHandle, segment_ids: list[int]) -> None: ...
        def _measure(self, function_key: int, seconds: float) -> None: ...

    def _run_commands(self) -> None:
        releases: dict[int, list[int]] = {}
        forgotten: set[int] = set()
        unmapped: list[int] = []
        while self._commands:
            command, argument = self._commands.popleft()
            match command:
                case Command.CANCEL:
                    grace, task_ids = argument
                    deadline = time.monotonic() + grace
                    for worker in list(self._workers.values()):
                        if any(task_id in task_ids for task_id in worker.in_flight):
                            if grace <= 0:
                                self._kill(worker, KillReason.CANCELLED)
                            elif worker.abandon_deadline is None:
                                worker.abandon_deadline = deadline
                case Command.RELEASE:
                    worker_id, segment_id = argument
                    releases.setdefault(worker_id, []).append(segment_id)
                case Command.FORGET:
                    forgotten.add(argument)
                case Command.UNMAP:
                    unmapped.append(argument)
                case Command.DROP_FUNCTION:
                    for worker in self._workers.values():
                        if argument in worker.functions:  # the mirror, then the worker's cache
                            del worker.functions[argument]
                            if worker.state is WorkerState.READY:
                                self._send(worker, (Msg.DROP_FUNCTION.value, argument))
        # Batched: one message per worker for all the commands of this round.
        if unmapped:
            for worker in self._workers.values():
                if worker.state is WorkerState.READY:
                    self._send(worker, (Msg.UNMAP.value, unmapped))
        for worker_id, segment_ids in releases.items():
            owner = self._workers.get(worker_id)
            if owner is not None and owner.state is WorkerState.READY:
                self._send(owner, (Msg.RELEASE.value, segment_ids))
        if forgotten:
            for worker in self._workers.values():
                drop = forgotten & worker.shared_sent
                if drop and worker.state is WorkerState.READY:
                    worker.shared_sent -= drop
                    self._send(worker, (Msg.FORGET.value, list(drop)))

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
        match message[0]:
            case Msg.RESULTS:
                results = view(Results, message)
                worker.peak_rss = max(worker.peak_rss, results.peak_rss)
                self._released_by(worker, results.released)
                for entry in results.entries:
                    self._on_result(worker, view(ResultEntry, entry), fds)
            case Msg.READY:
                worker.state = WorkerState.READY
                self._failed_starts = 0
                if not worker.pid:  # it answered before the zygote did
                    self._on_spawned(worker, view(Ready, message).pid)
                if self.events is not None:
                    self.events.worker_started(
                        worker.worker_id, worker.pid, time.monotonic() - worker.started_at
                    )
            case Msg.MAY_RUN:
                self._answer_may_run(worker, view(MayRun, message).seq)
            case Msg.INIT_ERROR:
                error = view(InitError, message)
                if self._broken is None:
                    self._broken = BrokenPoolError(
                        f"the pool's initializer raised {error.summary} in a worker; fix it or "
                        f"create the pool without initializer=\n{error.traceback}"
                    )
                    self._fail_everything(self._broken)
            case kind:
                raise RuntimeError(f"worker {worker.worker_id} sent an unknown message {kind!r}")

    def _on_result(self, worker: WorkerHandle, entry: ResultEntry, fds: list[int]) -> None:
        task_id, status, start, end, payload, failures = entry
        held = (
            worker.in_flight.get(task_id)
            if status == Reply.PARTIAL
            else worker.in_flight.pop(task_id, None)
        )
        if held is None:  # nobody waits for it: hand the worker its segment back at once
            if status in _WITH_VALUES and not is_inline(payload) and segment_id_of(payload):
                self._commands.append((Command.RELEASE, (worker.worker_id, segment_id_of(payload))))
            return
        task, done = held
        if status == Reply.PARTIAL:
            self._on_partial(worker, task, payload, failures, fds)
            return
        if worker.tasks_left == 0 and not worker.in_flight:
            self._retire(worker)
        if task.timeout is not None:
            worker.exclusive = False
            worker.task_deadline = None
        task.start_time, task.end_time = start, end
        if status != Reply.DONE:  # UNREADABLE_FUNCTION or UNREADABLE_ARGUMENT
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
