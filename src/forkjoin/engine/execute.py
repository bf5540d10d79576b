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


class ChunkRun:
    """What running a chunk produced: a value per item, and the failures by position."""

    __slots__ = ("values", "failures", "start_time", "end_time")

    def __init__(self) -> None:
        self.values: list[Any] = []
        self.failures: list[tuple[int, Exception, str]] = []  # (position, exception, traceback)
        self.start_time = 0.0
        self.end_time = 0.0


def run_chunk(
    fn: Callable[..., Any],
    kind: int,
    items: list[Any],
    first_index: int,
    seed: int | None,
    *,
    seed_globals: bool = True,
) -> ChunkRun:
    """Apply ``fn`` to every item, catching each item's exception so the others still run.

    ``BaseException``s that are not ``Exception`` (SystemExit, KeyboardInterrupt) propagate: in a
    worker process they end the worker, which the caller then reports as a crash.
    """
    run = ChunkRun()
    values = run.values
    run.start_time = time.monotonic()
    if seed is None and kind == CallKind.MAP:
        # The hot path for many tiny items: no per-item branching beyond the try.
        for position, item in enumerate(items):
            try:
                values.append(fn(item))
            except Exception as exc:
                values.append(None)
                run.failures.append((position, exc, _format_traceback()))
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
            except Exception as exc:
                values.append(None)
                run.failures.append((position, exc, _format_traceback()))
            finally:
                if seed is not None:
                    seeding.leave_item()
    run.end_time = time.monotonic()
    return run
