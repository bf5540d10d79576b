"""Dispatch for the process backend: which pending task goes to which worker, and when.

::

    pending deque ──> ready workers (not stuck, not retiring), fewest tasks first
                        each gets an even share of what waits, up to its prefetch budget:
                        ~PREFETCH_SECONDS of its function's measured duration (1 until measured)
                  <── queued tasks of a worker stuck behind a slow task (work stealing), sent
                      again to idle workers; the stuck worker asks "may run" before running a
                      task that waited long, and is told no for those

Encoding a task for a worker (``_encode``) attaches what that worker has not been sent yet: the
function (mirrored LRU cache), ``fj.shared`` objects, the argument segment's fd.

A mixin of ``ProcessBackend`` (process.py), which owns the state it uses; the manager thread
alone runs these methods.
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Any

from ..core.shared import Shared
from ..core.task import Task
from . import buffers, shm, wire
from .base import DoneCallback, EventSink
from .process_handle import WorkerHandle, WorkerState
from .process_worker import ASK_AFTER_SECONDS, FUNCTION_CACHE_SIZE
from .protocol import Msg

# Work queued on each worker, in seconds of measured task time: enough that a worker never waits
# for the next message (~0.1 ms round trip), small enough that tasks still balance at the end.
PREFETCH_SECONDS = 0.005
MAX_PREFETCH_TASKS = 1024
# Tasks longer than this are never queued behind another one on a worker (no prefetch).
NO_PREFETCH_ABOVE_SECONDS = 0.05
# Work stealing: a worker whose running task has not changed for this long (and at least
# STUCK_FACTOR times its function's measured duration) is stuck behind a slow task: nothing more
# is queued on it, and its queued tasks that were sent at least this long ago go back to the
# pending queue for idle workers. Must exceed process_worker.ASK_AFTER_SECONDS by a margin
# (see there): the worker asks before running a task that waited that long, so a task taken back
# never runs twice. tests/test_engine_trust.py: instant results never wait behind a 8 s task.
STEAL_AFTER_SECONDS = 0.05
STUCK_FACTOR = 4.0
assert STEAL_AFTER_SECONDS >= ASK_AFTER_SECONDS + 0.02, "see STEAL_AFTER_SECONDS"
# Functions whose task duration is remembered (the oldest is forgotten first).
MEASURED_FUNCTIONS = 256
# Smoothing of the measured task duration that sets each worker's prefetch budget.
DURATION_SMOOTHING = 0.2


class Dispatcher:
    """Dispatch, prefetch and work stealing (see the module docstring)."""

    # Owned by ProcessBackend; listed here for readers and type checkers.
    _pending: deque[tuple[Task, DoneCallback]]
    _workers: dict[int, WorkerHandle]
    _task_seconds: dict[int, float]
    _segments: shm.SegmentPool
    _closing: bool
    prefetch: int
    events: EventSink | None
    # Manager thread only. Set once per loop, just before the manager sleeps (process.py
    # _next_timeout), and read when it wakes (_take_back_queued_tasks): the check scans every
    # worker, so it runs once per loop, not twice.
    _steal_due: bool = False

    if TYPE_CHECKING:  # defined by the other parts of ProcessBackend

        def _send(
            self, worker: WorkerHandle, message: Any, fds: list[int] | None = None
        ) -> None: ...  # process_messages.py

        def _learn_modules(self, function: Any) -> None: ...  # process_lifecycle.py

    def _prefetch_budget(self, function_key: int) -> int:
        """Tasks of this function a worker may hold (running + queued), from their measured
        duration; 1 until measured, so an unknown (maybe slow) function is never queued."""
        seconds = self._task_seconds.get(function_key)
        if seconds is None or seconds >= NO_PREFETCH_ABOVE_SECONDS:
            return self.prefetch
        return max(2, self.prefetch, min(MAX_PREFETCH_TASKS, int(PREFETCH_SECONDS / seconds)))

    def _measure(self, function_key: int, seconds: float) -> None:
        """Fold one task's duration into its function's running estimate."""
        estimates = self._task_seconds
        previous = estimates.get(function_key)
        if previous is not None:
            estimates[function_key] = previous + DURATION_SMOOTHING * (seconds - previous)
            return
        estimates[function_key] = seconds
        if len(estimates) > MEASURED_FUNCTIONS:  # forget the function measured first
            del estimates[next(iter(estimates))]

    # -- work stealing: no task waits behind a slow one while a worker is free -------------------

    def _is_stuck(self, worker: WorkerHandle, now: float) -> bool:
        """True if the worker's running task has run long past what its function usually takes
        (from the slot's started number, refreshed here)."""
        if not worker.in_flight or worker.slot is None:
            return False
        started = worker.started_seq()
        if started != worker.seen_seq:
            worker.seen_seq, worker.seen_at = started, now
            return False
        running, _ = next(iter(worker.in_flight.values()))
        usual = self._task_seconds.get(running.function.key, 0.0)
        return now - worker.seen_at >= max(STEAL_AFTER_SECONDS, STUCK_FACTOR * usual)

    def _has_idle_worker(self) -> bool:
        return any(
            not w.in_flight and w.state is WorkerState.READY and w.kill_reason is None
            and not w.spare
            for w in self._workers.values()
        )

    def _steal_check_due(self) -> bool:
        """Whether the manager must wake up to look for stuck workers: a worker idles while
        another holds queued tasks."""
        if self._pending or self._closing:
            return False
        if not any(len(w.in_flight) > 1 for w in self._workers.values()):
            return False
        return self._has_idle_worker()

    def _take_back_queued_tasks(self) -> None:
        """Queued tasks of stuck workers go back to the front of the pending queue, if a worker
        is idle to take them (the stuck worker will ask before it runs them: see
        process_worker.ASK_AFTER_SECONDS)."""
        if not self._steal_due or self._pending or self._closing:
            return
        now = time.monotonic()
        sent_before = now - STEAL_AFTER_SECONDS
        taken: list[tuple[Task, DoneCallback]] = []
        for worker in self._workers.values():
            if len(worker.in_flight) < 2 or not self._is_stuck(worker, now):
                continue
            started = worker.seen_seq
            for task_id, (task, done) in list(worker.in_flight.items()):
                if (
                    task.dispatch_seq > max(started, worker.granted)
                    and task.dispatch_time <= sent_before
                ):
                    del worker.in_flight[task_id]
                    worker.stolen.add(task.dispatch_seq)
                    taken.append((task, done))
                    if worker.tasks_left is not None:
                        worker.tasks_left += 1  # it will not run this one
        if taken:
            taken.sort(key=lambda entry: entry[0].task_id)  # submission order
            self._pending.extendleft(reversed(taken))
            if self.events is not None:
                self.events.tasks_taken_back(len(taken))

    def _answer_may_run(self, worker: WorkerHandle, seq: int) -> None:
        """A worker asks before running a task that waited long in its queue, for that task and
        every one queued behind it (numbers up to ``seq``): the answer lists those given to
        another worker meanwhile, and none of the others is taken back from now on. One
        question per queue, not per task: behind a deep queue of tiny tasks, a round trip per
        task cost Pool.submit three quarters of its throughput."""
        refused = [stolen for stolen in worker.stolen if stolen <= seq]
        worker.stolen.difference_update(refused)
        worker.granted = max(worker.granted, seq)
        self._send(worker, (Msg.MAY_RUN.value, seq, refused))  # a protocol.MayRunAnswer

    # -- dispatch --------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        try:
            self._dispatch_pending()
        finally:
            self._pending_after_dispatch = len(self._pending)

    def _dispatch_pending(self) -> None:
        pending = self._pending
        if not pending:
            return
        now = time.monotonic()
        ready = [
            w
            for w in self._workers.values()
            if w.state is WorkerState.READY
            and w.kill_reason is None
            and not w.spare
            and not w.exclusive
            and not w.stolen  # it still owes answers about tasks taken back: stuck
            and not (w.in_flight and self._is_stuck(w, now))
            and w.tasks_left != 0
        ]
        ready.sort(key=lambda w: len(w.in_flight))
        for position, worker in enumerate(ready):
            # An even share of what is waiting, so a burst of tasks is not all queued on the
            # first idle worker while the others stay idle.
            room = -(-len(pending) // (len(ready) - position))
            batch: list[tuple[Any, ...]] = []
            fds: list[int] = []
            shared: list[tuple[int, Any]] = []
            budget_key, budget = -1, 0
            while room > 0 and pending:
                task, done = pending[0]
                if task.function.key != budget_key:
                    budget_key = task.function.key
                    budget = self._prefetch_budget(budget_key)
                if len(worker.in_flight) >= budget or worker.tasks_left == 0:
                    break
                if task.timeout is not None and (batch or worker.in_flight):
                    break  # a task with a timeout runs alone, so its clock is its own
                if fds and len(fds) + _fds_needed(task) > wire.MAX_FDS_PER_FRAME:
                    break
                pending.popleft()
                if not task.claim():
                    _release(task)
                    continue
                batch.append(self._encode(worker, task, fds, shared))
                worker.in_flight[task.task_id] = (task, done)
                if worker.tasks_left is not None:
                    worker.tasks_left -= 1
                task.worker = worker.worker_id
                room -= 1
                if task.timeout is not None:
                    worker.exclusive = True
                    worker.task_deadline = now + task.timeout
                    break
            if batch:
                self._send(worker, (Msg.TASKS.value, batch, shared), fds)  # a protocol.Tasks
            if not pending:
                return

    def _encode(
        self,
        worker: WorkerHandle,
        task: Task,
        fds: list[int],
        shared: list[tuple[int, Any]],
    ) -> tuple[Any, ...]:
        """The task as the worker receives it (a protocol.TaskSpec, in its field order); the fds
        it needs are appended to ``fds``."""
        function = task.function
        functions = worker.functions
        function_payload = None
        if function.key in functions:
            functions.move_to_end(function.key)
        else:
            functions[function.key] = None
            self._learn_modules(function)
            if len(functions) > FUNCTION_CACHE_SIZE:
                functions.popitem(last=False)
            self._attach_shared(worker, function.payload.handles, shared, fds)
            function_payload = self._descriptor(function.payload, fds)
        packed: buffers.Packed = task.payload
        if packed.handles:
            self._attach_shared(worker, packed.handles, shared, fds)
        segment = packed.segment
        if segment is not None and packed.pool is not None:
            self._segments.hold(segment)  # until this worker reports it released (or dies)
            worker.holding.append(segment)
        worker.next_seq += 1
        task.dispatch_seq = worker.next_seq
        task.dispatch_time = time.monotonic()
        return (
            task.task_id,
            function.key,
            function_payload,
            int(task.kind),
            self._descriptor(packed, fds),
            task.first_index,
            task.seed,
            task.dispatch_seq,
            task.dispatch_time,
            task.stream,
        )

    @staticmethod
    def _descriptor(packed: buffers.Packed, fds: list[int]) -> tuple[Any, ...]:
        if packed.segment is None:
            return packed.descriptor(-1)
        fds.append(packed.segment.fd)
        return packed.descriptor(len(fds) - 1)

    def _attach_shared(
        self,
        worker: WorkerHandle,
        handles: tuple[Shared[Any], ...],
        shared: list[tuple[int, Any]],
        fds: list[int],
    ) -> None:
        """fj.shared objects this worker has not been sent yet go with this message."""
        for handle in handles:
            if handle.shared_id in worker.shared_sent:
                continue
            packed: buffers.Packed = handle.transport
            self._attach_shared(worker, packed.handles, shared, fds)
            worker.shared_sent.add(handle.shared_id)
            shared.append((handle.shared_id, self._descriptor(packed, fds)))

    def _repack(self, task: Task) -> None:
        """A task that goes to another worker gets a fresh copy of its arguments: the dead
        worker may have written to the segment it mapped (tasks may modify their arguments)."""
        payload = task.payload
        # Only out-of-band buffers are mapped in place (a pickle stream is copied as it is
        # read), so a payload without them is as it was sent: send it again as it is.
        if isinstance(payload, buffers.Packed) and payload.segment is not None and payload.spans:
            payload.release()
            task.payload = buffers.pack(task.items, self._segments)

    def _drop_holdings(self, worker: WorkerHandle) -> None:
        """A dead worker maps nothing any more."""
        for segment in worker.holding:
            self._segments.drop(segment)
        worker.holding.clear()

    def _released_by(self, worker: WorkerHandle, segment_ids: list[int]) -> None:
        """The worker's last views of these argument segments are gone."""
        if not segment_ids:
            return
        released = set(segment_ids)
        keep = []
        for segment in worker.holding:
            if segment.segment_id in released:
                released.discard(segment.segment_id)
                self._segments.drop(segment)
            else:
                keep.append(segment)
        worker.holding[:] = keep



def _release(task: Task) -> None:
    """The task will not be sent again: its argument segment may go back to the pool. Runs for
    every task, so it only looks at an attribute unless there is a pooled segment."""
    payload = task.payload
    if payload is not None and payload.pool is not None:
        payload.release()


def _fds_needed(task: Task) -> int:
    """Most fds a task can add to a message (its segment, its function's, fj.shared objects)."""
    payload = task.payload
    handles = len(payload.handles) if isinstance(payload, buffers.Packed) else 0
    return 2 + handles
