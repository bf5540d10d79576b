"""What a worker's reply, or its death, means for the task it concerned."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

from ..engine.task import CallKind, Status, Task, TaskOutcome
from ..errors import SerializationError, TaskTimeoutError, WorkerCrashedError
from .buffers import unpack
from .failures import failure_from_record
from .process_handle import WorkerHandle


def death_outcome(worker: WorkerHandle, task: Task, exitcode: int | None) -> TaskOutcome:
    """The outcome of the task a worker was running when it died (or was stopped)."""
    task.end_time = time.monotonic()
    if worker.kill_reason == "timeout":
        return TaskOutcome(
            Status.TIMED_OUT,
            error=TaskTimeoutError(
                f"{task.describe()} ran past its timeout of "
                f"{task.timeout:g} s; its worker was stopped and replaced",
                timeout=task.timeout or 0.0,
                index=task.first_index,
            ),
        )
    if worker.kill_reason == "memory":
        limit = worker.memory_limit or 0
        return TaskOutcome(
            Status.OVER_MEMORY,
            error=WorkerCrashedError(
                f"{task.describe()} pushed worker {worker.worker_id} past memory_limit="
                f"{limit / 1e6:,.0f} MB (peak RSS {worker.peak_rss / 1e6:,.0f} MB); the task "
                f"was stopped and the worker replaced: lower the memory it needs or raise "
                f"memory_limit=",
                exitcode=exitcode,
                signal_name="SIGKILL",
                peak_rss=worker.peak_rss,
                index=task.first_index,
                attempts=task.attempt + 1,
            ),
        )
    if exitcode is not None and exitcode < 0:
        try:
            how = f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            how = f"was killed by signal {-exitcode}"
        signal_name = how.rsplit(" ", 1)[-1]
    else:
        how, signal_name = f"exited with code {exitcode}", ""
    peak = worker.peak_rss
    hint = (
        "SIGKILL usually means the out-of-memory killer: lower workers= or the memory "
        "each task needs"
        if signal_name == "SIGKILL"
        else "the task crashed the interpreter or called exit"
    )
    done = len(task.partial)  # results it streamed before it died: not what killed it
    items = (
        f"item {task.first_index + done} or a later one of its chunk of {len(task)}"
        if len(task) > 1
        else task.describe()
    )
    return TaskOutcome(
        Status.CRASHED,
        error=WorkerCrashedError(
            f"worker {worker.worker_id} (pid {worker.pid}) {how} while running {items} "
            f"(peak RSS {peak / 2**20:.1f} MiB): {hint}",
            exitcode=exitcode,
            signal_name=signal_name,
            peak_rss=peak,
            index=task.first_index + done,
            attempts=task.attempt + 1,
        ),
    )


def decode_results(
    task: Task,
    descriptor: tuple[Any, ...],
    failures: list[tuple[Any, ...]],
    fds: list[int],
    on_unmapped: Callable[[int], None] | None,
) -> TaskOutcome:
    """Unpickle a task's results (views of the worker's segment, no copy); turn the worker's
    failure records into ItemFailures."""
    try:
        values = unpack(descriptor, fds, on_unmapped)
    except BaseException as exc:  # SystemExit from a __reduce__ too: never the manager's end
        where = (
            f"item {task.first_index}"
            if len(task) == 1
            else f"one of items {task.first_index}..{task.first_index + len(task) - 1}"
        )
        if len(task) == 1 and task.kind == CallKind.CALL:
            where = task.describe()
        unreadable = SerializationError(
            f"the result of {where} could not be unpickled in the caller "
            f"({type(exc).__name__}: {exc}); is its class importable here?",
            what="result",
            side="caller",
            index=task.first_index,
        )
        return TaskOutcome(Status.UNREADABLE, error=unreadable)
    base = len(task.partial)  # the items whose results came in earlier messages
    for record in failures:
        values[record[0]] = failure_from_record(task, record, base)  # never raises
    return TaskOutcome(Status.DONE, values, any_failed=bool(failures))


def with_partial_results(task: Task, outcome: TaskOutcome) -> TaskOutcome:
    """The task's outcome with the results its worker streamed before (``Task.stream``) in
    front: all of them for a task that finished; the ones before the failure for a task whose
    worker died or was stopped, so that the scheduler sends only the rest again."""
    if task.partial_error is not None:
        return task.partial_error if outcome.status is Status.DONE else outcome
    if not task.partial:
        return outcome
    if outcome.status is Status.DONE:
        outcome.values = task.partial + outcome.values
        outcome.any_failed = outcome.any_failed or task.partial_failed
    elif outcome.status in (Status.CRASHED, Status.TIMED_OUT, Status.OVER_MEMORY):
        outcome.values = task.partial
        outcome.any_failed = task.partial_failed
    task.partial = []
    return outcome
