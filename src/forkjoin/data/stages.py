"""Stages: a ``map_batches`` step with its own workers, resources and (for a class) state.

::

    ds.map_batches(Embedder, fn_constructor_args=(path,), resources={"gpu": 1}, workers=2)
       │
       ▼  StageOp (recorded in the plan like any operation; pipeline.py runs it)
    each worker of the stage, on its first batch:   instance = Embedder(path)   (once per worker)
                         on every batch:            instance(batch, **fn_kwargs)
                         when the stage's workers stop:   instance.close()      (if it has one)

A plain function becomes a stage too when it asks for ``resources=`` or ``workers=``: it then
runs on workers of its own instead of being fused into the reading task.

The instance is kept per worker (``forkjoin.worker_context().state``; per thread on the threads
backend, per process on Ray and Dask, whose engines own the processes). A stage worker started
by the pipeline builds it as it starts (``warm_up``), so the model loads while upstream stages
read; on Ray and Dask it is built on the first batch a process gets. A constructor that raises
stops the run with a ``StageError`` that names the stage: every batch of that stage needs it.
"""

from __future__ import annotations

import atexit
import os
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from ..errors import ForkjoinError
from .plan import Op, check_batching, describe_function, function_name, map_in_batches

__all__ = ["StageError", "StageOp", "close_instances", "warm_up"]


class StageError(ForkjoinError):
    """A stage could not run at all: its class failed to construct on a worker (a model that
    does not load), or its resources cannot be had. The message names the stage."""


Workers = int | tuple[int, int] | None


def parse_workers(workers: Any, where: str) -> tuple[int, int] | None:
    """``workers=`` as a (min, max) range, or None for "size it from the machine"."""
    if workers is None:
        return None
    if isinstance(workers, int) and not isinstance(workers, bool):
        if workers < 1:
            raise ValueError(f"{where}: workers must be >= 1, got {workers}")
        return workers, workers
    if (
        isinstance(workers, (tuple, list))
        and len(workers) == 2
        and all(isinstance(w, int) and not isinstance(w, bool) for w in workers)
    ):
        low, high = int(workers[0]), int(workers[1])
        if not 1 <= low <= high:
            raise ValueError(f"{where}: workers=(min, max) needs 1 <= min <= max, got {workers}")
        return low, high
    raise TypeError(f"{where}: workers must be an int or a (min, max) pair, got {workers!r}")


@dataclass
class StageOp(Op):
    """A ``map_batches`` that runs on a stage's own workers (see the module docstring)."""

    fn: Callable[..., Any] | type
    batch_size: int | None = 4096
    batch_format: str = "pyarrow"
    fn_kwargs: dict[str, Any] = field(default_factory=dict)
    constructor_args: tuple[Any, ...] = ()
    constructor_kwargs: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, Any] | None = None
    workers: tuple[int, int] | None = None
    label: str = ""
    # Names this stage's instances in every worker; new for each map_batches call.
    uid: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    name = "map_batches"
    stage = True

    def __post_init__(self) -> None:
        check_batching(self.batch_size, self.batch_format)
        if not self.label:
            self.label = f"map_batches({function_name(self.fn)})"
        is_class = isinstance(self.fn, type)
        if not is_class and (self.constructor_args or self.constructor_kwargs):
            raise TypeError(
                f"{self.label}: fn_constructor_args/fn_constructor_kwargs are for a callable "
                f"class; {function_name(self.fn)} is a function"
            )
        if is_class and not callable(getattr(self.fn, "__call__", None)):  # noqa: B004
            raise TypeError(f"{self.label}: class {self.fn.__name__} has no __call__(batch)")
        if self.resources:
            from ..core.resources import Shape

            Shape.parse(self.resources)  # unknown or negative resources: refused now

    @property
    def is_class(self) -> bool:
        return isinstance(self.fn, type)

    def key(self) -> str:
        kwargs = sorted(self.fn_kwargs.items())
        built = f"{self.constructor_args!r},{sorted(self.constructor_kwargs.items())!r}"
        return (
            f"map_batches({describe_function(self.fn)},{built},{self.batch_size},"
            f"{self.batch_format},{kwargs!r})"
        )

    def callable(self) -> Callable[..., Any]:
        """What to call per batch here: the function, or this worker's instance."""
        if not self.is_class:
            return self.fn
        return _instance(self)

    def apply(self, table: pa.Table) -> pa.Table:
        if table.num_rows == 0:
            return table  # no instance built for an empty partition
        return map_in_batches(table, self.callable(), self.batch_size, self.batch_format,
                              self.fn_kwargs, self.label)  # fmt: skip


def warm_up(op: StageOp) -> None:
    """A task sent to each new stage worker before its first block: the class is built while
    upstream stages still read and decode (as Ray Data's actors are), not once a block has
    arrived. Returns nothing (the instance stays in the worker). A constructor that raises
    here raises again on the first block, which reports it as a StageError."""
    if op.is_class:
        _instance(op)


def has_stages(ops: Sequence[Op]) -> bool:
    return any(getattr(op, "stage", False) for op in ops)


# -- instances, one per worker -------------------------------------------------------------------

_lock = threading.Lock()
# Every instance this process built, with the dict that holds it: closed at process exit (a
# stage's worker process) or when the run ends (threads and inline run in the caller).
_built: list[tuple[str, Any, dict[str, Any], str]] = []
_atexit_registered = False
_fallback_state: dict[str, Any] = {}  # outside any worker (inline helpers such as schema())


def _state() -> dict[str, Any]:
    from ..core.context import worker_context

    try:
        return worker_context().state
    except RuntimeError:
        return _fallback_state


def _instance(op: StageOp) -> Any:
    global _atexit_registered
    state = _state()
    key = f"forkjoin.stage:{op.uid}"
    instance = state.get(key)
    if instance is not None:
        return instance
    cls = op.fn
    assert isinstance(cls, type)
    try:
        instance = cls(*op.constructor_args, **op.constructor_kwargs)
    except Exception as exc:
        raise StageError(
            f"stage {op.label}: {cls.__qualname__}(...) failed to construct in worker "
            f"pid {os.getpid()}: {type(exc).__name__}: {exc}. Every batch of this stage needs "
            f"it, so the run stops: fix what the constructor loads (path, device, memory) "
            f"and run again"
        ) from exc
    state[key] = instance
    with _lock:
        _built.append((op.uid, instance, state, key))
        if not _atexit_registered:
            atexit.register(close_instances)
            _atexit_registered = True
    return instance


def close_instances(uid: str | None = None) -> list[BaseException]:
    """Call ``close()`` on the instances this process built (of stage ``uid``, or all), and
    forget them. Errors are returned, not raised: every instance gets its turn."""
    with _lock:
        chosen = [entry for entry in _built if uid is None or entry[0] == uid]
        _built[:] = [entry for entry in _built if not (uid is None or entry[0] == uid)]
    errors: list[BaseException] = []
    for _, instance, state, key in chosen:
        state.pop(key, None)
        close = getattr(instance, "close", None)
        if callable(close):
            try:
                close()
            except Exception as exc:  # one bad close() must not stop the others
                errors.append(exc)
    return errors


def build_stage(
    fn: Callable[..., Any] | type,
    *,
    batch_size: int | None,
    batch_format: str,
    fn_kwargs: Mapping[str, Any] | None,
    constructor_args: Sequence[Any],
    constructor_kwargs: Mapping[str, Any] | None,
    resources: Mapping[str, Any] | None,
    workers: Workers,
    name: str | None,
) -> StageOp:
    label = f"map_batches({name or function_name(fn)})"
    return StageOp(
        fn,
        batch_size,
        batch_format,
        dict(fn_kwargs or {}),
        tuple(constructor_args),
        dict(constructor_kwargs or {}),
        dict(resources) if resources else None,
        parse_workers(workers, label),
        label,
    )
