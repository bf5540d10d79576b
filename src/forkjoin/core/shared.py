"""``fj.shared(obj)``: put a large read-only object once and hand it to many tasks.

Without it, an array that every item needs is pickled into every task. A handle is pickled as a
few bytes instead; the process backend copies the object into shared memory once, and each
worker maps it the first time a task needs it and keeps the result for the tasks after that.
Backends that do not pickle (inline, threads) hand over the object itself.

Tasks call ``handle.get()``: it is explicit so the same function runs unchanged on every backend,
and the cost (one unpickle per worker, then a cache hit) is visible where it is paid. In a worker
the arrays inside are read-only: a task that wrote to them would change what the next task on
that worker sees.
"""

from __future__ import annotations

import itertools
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_ids = itertools.count(1)
# Handles made in this process, by id: a handle a task returns comes back as this very object.
_live: weakref.WeakValueDictionary[int, Shared[Any]] = weakref.WeakValueDictionary()
_UNRESOLVED: Any = object()
_pickling = threading.local()  # .handles: where a backend's pickling collects the handles


def collect_handles(handles: list[Shared[Any]] | None) -> list[Shared[Any]] | None:
    """From now on (in this thread), a pickled handle becomes a reference to its id and is
    appended to ``handles``, so the backend can send each object once by its own means.
    Returns the previous collector; pass it back to restore it (None: pickle by value)."""
    previous: list[Shared[Any]] | None = getattr(_pickling, "handles", None)
    _pickling.handles = handles
    return previous


class Shared(Generic[T]):
    """A handle to an object shared with every worker; ``get()`` returns the object."""

    __slots__ = ("shared_id", "_value", "transport", "__weakref__")

    # Set in a worker process by its backend: shared id -> object (mapped and unpickled once).
    resolver: Callable[[int], Any] | None = None

    def __init__(self, value: T) -> None:
        # Unique across processes, so a worker's own handles never collide with the caller's.
        self.shared_id = (os.getpid() << 32) | next(_ids)
        self._value = value
        self.transport: Any = None  # what a backend made of it (the process backend: a segment)
        _live[self.shared_id] = self

    def get(self) -> T:
        """The shared object (in a worker: mapped from shared memory on first use, then cached)."""
        value = self._value
        if value is _UNRESOLVED:
            if Shared.resolver is None:
                raise RuntimeError(
                    "this fj.shared() handle was unpickled outside a forkjoin worker, where its "
                    "object does not exist; pass the object itself, or the handle to fj.map"
                )
            value = Shared.resolver(self.shared_id)
        return value  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        state = "in a worker" if self._value is _UNRESOLVED else type(self._value).__name__
        return f"fj.shared(id={self.shared_id}, {state})"

    def __reduce__(self) -> tuple[Any, ...]:
        if self._value is _UNRESOLVED:  # a worker's view of the caller's handle: send it home
            return (_reference, (self.shared_id,))
        collected = getattr(_pickling, "handles", None)
        if collected is not None:  # a backend that ships the object itself: just the id
            collected.append(self)
            return (_reference, (self.shared_id,))
        # Any other pickler (a user's, another engine's): carry the object itself, so a
        # handle still works wherever it is unpickled.
        return (_by_value, (self._value,))

    @classmethod
    def _reference(cls, shared_id: int) -> Shared[Any]:
        """The handle as a worker sees it: an id that its backend resolves on ``get()``."""
        handle: Shared[Any] = cls.__new__(cls)
        handle.shared_id = shared_id
        handle._value = _UNRESOLVED
        handle.transport = None
        return handle


def _by_value(value: Any) -> Shared[Any]:
    return Shared(value)


def _reference(shared_id: int) -> Shared[Any]:
    original = _live.get(shared_id)  # back in the process that made it
    return original if original is not None else Shared._reference(shared_id)


def shared(obj: T) -> Shared[T]:
    """Share ``obj`` (an array, a table, a model) with every task: it is copied to the workers'
    shared memory once, not pickled into each task. Tasks call ``.get()`` on the handle.

    >>> import numpy as np
    >>> table = fj.shared(np.arange(10**6))
    >>> fj.map(lambda i: int(table.get()[i]), [0, 10, 999_999], workers=2)
    [0, 10, 999999]
    """
    if isinstance(obj, Shared):
        return obj
    return Shared(obj)
