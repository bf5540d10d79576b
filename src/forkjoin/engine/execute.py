"""Running one task's items: the loop every backend shares (inline, threads, process workers)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from . import seeding
from .task import CallKind


def _format_traceback() -> str:
    import traceback  # only when an item fails: keeps worker start-up light

    return traceback.format_exc()


_CAUGHT_WITH_INTERRUPT = (Exception, KeyboardInterrupt)


class ChunkRun:
    """What running a chunk produced: a value per item, and the failures by position.

    Another thread may read it while the chunk runs (a process worker streams the results so
    far, see process_worker.PARTIAL_SECONDS): both lists only grow, and an item's failure is
    recorded before its placeholder value, so any prefix ``values[:n]`` has its failures in
    ``failures`` already. ``sent`` counts the values already streamed.
    """

    __slots__ = ("values", "failures", "start_time", "end_time", "sent", "failures_sent")

    def __init__(self) -> None:
        self.values: list[Any] = []
        # (position, exception, traceback)
        self.failures: list[tuple[int, BaseException, str]] = []
        self.start_time = 0.0
        self.end_time = 0.0
        self.sent = 0
        self.failures_sent = 0


def run_chunk(
    fn: Callable[..., Any],
    kind: int,
    items: list[Any],
    first_index: int,
    seed: int | None,
    *,
    seed_globals: bool = True,
    catch_interrupt: bool = False,
    run: ChunkRun | None = None,
) -> ChunkRun:
    """Apply ``fn`` to every item, catching each item's exception so the others still run.

    ``SystemExit`` propagates: in a worker process it ends the worker, which the caller reports
    as a crash (a task that exits is never a success). ``KeyboardInterrupt`` is an item's failure
    where nothing but the task can have raised it (``catch_interrupt``: worker processes ignore
    SIGINT, and only the main thread receives it), so it comes back once as a TaskError instead
    of killing the worker and being retried; in the caller's own thread (inline) it is Ctrl-C
    and propagates.
    """
    caught: Any = _CAUGHT_WITH_INTERRUPT if catch_interrupt else Exception
    if run is None:
        run = ChunkRun()
    values = run.values
    run.start_time = time.monotonic()
    if seed is None and kind == CallKind.MAP:
        # The hot path for many tiny items: no per-item branching beyond the try.
        for position, item in enumerate(items):
            try:
                values.append(fn(item))
            except caught as exc:
                run.failures.append((position, exc, _format_traceback()))
                values.append(None)
    else:
        for position, item in enumerate(items):
            if seed is not None:
                seeding.enter_item(seed, first_index + position, seed_globals=seed_globals)
            try:
                if kind == CallKind.MAP:
                    values.append(fn(item))
                elif kind == CallKind.STAR:
                    values.append(fn(*item))
                else:
                    args, kwargs = item
                    values.append(fn(*args, **kwargs))
            except caught as exc:
                run.failures.append((position, exc, _format_traceback()))
                values.append(None)
            finally:
                if seed is not None:
                    seeding.leave_item()
    run.end_time = time.monotonic()
    return run
