"""The threads backend: a thread pool in the caller's process.

For I/O-bound work and functions that release the GIL (NumPy, pyarrow, torch kernels). Nothing
is pickled, so it also accepts objects that cannot cross a process boundary.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor

from ..core.context import WorkerContext, install
from ..core.task import Status, Task, TaskOutcome
from .base import Backend, Capabilities, DoneCallback, report_outcome
from .inline import run_task_here


class ThreadBackend(Backend):
    """Runs tasks on ``workers`` threads."""

    name = "threads"
    capabilities = Capabilities()

    def __init__(self, workers: int, **kwargs: object) -> None:
        super().__init__(workers, **kwargs)  # type: ignore[arg-type]
        self._thread_ids: dict[int, int] = {}
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(
            max_workers=workers,
            thread_name_prefix="forkjoin-thread",
            initializer=self._start_thread,
        )
        self._closed = False
        self._unreported = 0  # tasks submitted whose outcome is not yet reported (under _lock)

    def _start_thread(self) -> None:
        with self._lock:
            worker = self._thread_ids[threading.get_ident()] = len(self._thread_ids)
        slot = self.slots[worker % len(self.slots)]
        context = WorkerContext(
            worker, "threads", device=slot.device_in_caller(), gpus=slot.gpu_ids
        )
        install(context)  # this thread serves only this pool
        if self.events is not None:
            self.events.worker_started(worker, os.getpid(), 0.0)
        if self.initializer is not None:
            self.initializer(*self.initargs)

    def _run(self, task: Task) -> TaskOutcome | None:
        if not task.claim():
            return None
        outcome = run_task_here(task, seed_globals=False, catch_interrupt=True)
        task.worker = self._thread_ids.get(threading.get_ident(), 0)
        return outcome

    def submit(self, task: Task, done: DoneCallback) -> None:
        if self._closed:
            raise RuntimeError("cannot submit to the threads backend after shutdown")
        task.submit_time = time.monotonic()
        with self._lock:
            self._unreported += 1
        try:
            inner = self._executor.submit(self._run, task)
        except BaseException:
            with self._lock:
                self._unreported -= 1
            raise

        def report(finished: Future[TaskOutcome | None]) -> None:
            try:
                outcome = finished.result()
            except CancelledError:
                outcome = TaskOutcome(Status.CANCELLED)
            except BaseException as exc:  # forkjoin's own code failed: fail the task, never hang
                outcome = TaskOutcome(Status.FAILED, error=exc)
            try:
                if outcome is not None and not (
                    task.cancelled and outcome.status != Status.CANCELLED
                ):
                    report_outcome(done, task, outcome)
            finally:
                with self._lock:
                    self._unreported -= 1

        inner.add_done_callback(report)

    def shutdown(self, wait: bool = True, *, cancel_pending: bool = False) -> None:
        self._closed = True
        if threading.get_ident() in self._thread_ids:
            wait = False  # called from a task or done-callback on one of our threads: no self-join
        self._executor.shutdown(wait=wait, cancel_futures=cancel_pending)

    @property
    def alive(self) -> bool:
        return not self._closed

    @property
    def reporting(self) -> bool:
        with self._lock:
            return not self._closed or self._unreported > 0
