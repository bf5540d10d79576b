"""The inline backend: runs each task at once, in the caller's thread.

Deterministic and easy to step through in a debugger; it is also what ``workers=1`` means, and
the test double every other backend is compared with.
"""

from __future__ import annotations

import os
import time

from ..core.context import WorkerContext, install
from ..core.execute import run_chunk
from ..core.task import Status, Task, TaskOutcome
from ..errors import WorkerCrashedError
from .base import (
    Backend,
    Capabilities,
    DoneCallback,
    outcome_from_values,
    report_outcome,
    task_error,
)


def run_task_here(
    task: Task, *, seed_globals: bool = True, catch_interrupt: bool = False
) -> TaskOutcome:
    """Run a task in this thread and turn what happened into an outcome.

    ``seed_globals``: under ``seed=``, also reseed ``random`` and NumPy's global generator per
    item (as worker processes do). Thread pools pass False: those generators are shared by all
    threads, so only ``forkjoin.rng()`` (thread-local) can be reproducible there.
    """
    task.worker = 0
    try:
        run = run_chunk(
            task.function.fn,
            task.kind,
            task.items,
            task.first_index,
            task.seed,
            seed_globals=seed_globals,
            catch_interrupt=catch_interrupt,
        )
    except SystemExit as exc:  # a task must not end the caller's program
        task.end_time = time.monotonic()
        return TaskOutcome(
            Status.CRASHED,
            error=WorkerCrashedError(
                f"{task.describe()} called sys.exit({exc.code!r}) inside a task",
                exitcode=exc.code if isinstance(exc.code, int) else 1,
                index=task.first_index,
            ),
        )
    task.start_time, task.end_time = run.start_time, run.end_time
    failures = (
        (pos, task_error(task, pos, exc, type(exc).__name__, str(exc), tb))
        for pos, exc, tb in run.failures
    )
    return outcome_from_values(task, run.values, failures)


class InlineBackend(Backend):
    """Runs tasks synchronously inside ``submit``."""

    name = "inline"
    capabilities = Capabilities(parallel=False)

    def __init__(self, workers: int = 1, **kwargs: object) -> None:
        super().__init__(1, **kwargs)  # type: ignore[arg-type]
        self._closed = False
        self._initialized = False
        slot = self.slots[0]
        self._context = WorkerContext(  # installed only while its tasks run
            0, "inline", device=slot.device_in_caller(), gpus=slot.gpu_ids
        )

    def submit(self, task: Task, done: DoneCallback) -> None:
        if self._closed:
            raise RuntimeError("cannot submit to the inline backend after shutdown")
        previous = install(self._context)
        try:
            if not self._initialized:
                self._initialized = True
                if self.events is not None:
                    self.events.worker_started(0, os.getpid(), 0.0)
                if self.initializer is not None:
                    self.initializer(*self.initargs)
            task.submit_time = time.monotonic()
            if not task.claim():
                return
            outcome = run_task_here(task)
        finally:
            install(previous)
        report_outcome(done, task, outcome)

    def shutdown(self, wait: bool = True, *, cancel_pending: bool = False) -> None:
        self._closed = True

    @property
    def alive(self) -> bool:
        return not self._closed
