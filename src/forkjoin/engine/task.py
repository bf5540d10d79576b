"""The task model: what one unit of parallel work is, and what comes back.

A ``Task`` is a chunk of consecutive items plus the function to apply, the attempt number and the
limits it runs under. Backends fill in where and when it ran; the engine reads that into the event
log. A ``TaskOutcome`` is what a backend reports when the task is over.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from enum import IntEnum
from typing import TYPE_CHECKING, Any

from .._text import short_repr as _short_repr

if TYPE_CHECKING:  # workers import this module: keep concurrent.futures out of their start-up
    from concurrent.futures import Future


class CallKind(IntEnum):
    """How the function is applied to each item of a task."""

    MAP = 0  # fn(item)
    STAR = 1  # fn(*item)
    CALL = 2  # fn(*args, **kwargs); the item is (args, kwargs)


_function_keys = itertools.count(1)


class FunctionRef:
    """A function plus a key that names it on the wire, so a worker receives it once.

    The pickled form is computed lazily by the backend that needs it and cached here.
    """

    __slots__ = ("fn", "key", "payload", "__weakref__")

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.key = next(_function_keys)
        self.payload: Any = None  # the backend's encoded form (process: a buffers.Packed)

    def __repr__(self) -> str:
        return f"FunctionRef({getattr(self.fn, '__qualname__', self.fn)!r}, key={self.key})"


class FunctionRefCache:
    """Reuses one FunctionRef per function object for ``submit`` (bounded, thread-safe), so a
    worker receives a hot function once.

    A function that lives as long as its module anyway (``module.qualname`` is it) is kept
    here; anything else (a bound method, a closure, a ``partial``, a callable object) only as
    long as a task still holds it, so the pool never keeps a user's object alive after its
    futures are done (``submit(big_model.predict, x)`` then ``del big_model`` frees it).
    """

    MAX_ENTRIES = 128  # more distinct module functions than this just re-send them

    def __init__(self) -> None:
        # id(fn) -> the FunctionRef (module functions) or a weak reference to it (the rest)
        self._refs: OrderedDict[int, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, fn: Callable[..., Any]) -> FunctionRef:
        entry = self._refs.get(id(fn))  # lock-free hit: the common case of one hot function
        if entry is not None:
            ref = entry if entry.__class__ is FunctionRef else entry()
            if ref is not None and ref.fn is fn:
                return ref
        with self._lock:
            ref = FunctionRef(fn)  # holds fn strongly, so its id cannot be reused meanwhile
            key = id(fn)
            if _lives_with_its_module(fn):
                self._refs[key] = ref
            else:
                refs = self._refs

                def forget(dead: weakref.ref[FunctionRef]) -> None:
                    if refs.get(key) is dead:
                        refs.pop(key, None)

                self._refs[key] = weakref.ref(ref, forget)
            if len(self._refs) > self.MAX_ENTRIES:
                self._refs.popitem(last=False)  # oldest first: a re-used function is re-sent
            return ref


def _lives_with_its_module(fn: Any) -> bool:
    """True for a function its module holds by name (``module.qualname is fn``)."""
    import sys

    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    target: Any = module
    for part in getattr(fn, "__qualname__", "<locals>").split("."):
        target = getattr(target, part, None)
        if target is None:
            return False
    return target is fn


_task_ids = itertools.count(1)


class Task:
    """One unit of work: ``items[i]`` is the item with global index ``first_index + i``.

    A plain class with ``__slots__`` rather than a dataclass: one is built per submitted task,
    so construction cost is on the hot path.
    """

    __slots__ = (
        "function", "kind", "items", "first_index", "attempt", "timeout", "seed", "resources",
        "future", "task_id", "cancelled", "claimed", "resent", "stream",
        # Filled by the backend: the encoded items, where and when the task ran, bytes moved,
        # and (process backend) its place in its worker's queue and when it was sent there.
        "payload", "worker", "submit_time", "start_time", "end_time", "bytes_sent",
        "bytes_received", "dispatch_seq", "dispatch_time",
        # Results a worker streamed before the task ended (``stream``): decoded values, and
        # whether any is an ItemFailure; or the outcome that says they could not be read.
        "partial", "partial_failed", "partial_error",
    )  # fmt: skip

    def __init__(
        self,
        function: FunctionRef,
        kind: CallKind,
        items: list[Any],
        first_index: int,
        attempt: int = 0,
        timeout: float | None = None,
        seed: int | None = None,
        resources: Mapping[str, float] | None = None,
        future: Future[Any] | None = None,
        claimed: bool = False,
    ) -> None:
        self.function = function
        self.kind = kind
        self.items = items
        self.first_index = first_index
        self.attempt = attempt
        self.timeout = timeout
        self.seed = seed
        self.resources = resources
        self.future = future
        self.task_id = next(_task_ids)
        self.cancelled = False
        self.claimed = claimed
        self.resent = False  # a chunk sent again whole after its worker died (once at most)
        # Set once its job has seen a worker die or a timeout: the worker then streams the
        # results of a long chunk as it goes, so a crash loses only the last few milliseconds.
        self.stream = False
        self.payload: Any = None
        self.worker = -1
        self.submit_time = 0.0
        self.start_time = 0.0
        self.end_time = 0.0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.dispatch_seq = 0
        self.dispatch_time = 0.0
        self.partial: list[Any] = []
        self.partial_failed = False
        self.partial_error: TaskOutcome | None = None

    def __repr__(self) -> str:
        return (
            f"Task(id={self.task_id}, items={self.first_index}.."
            f"{self.first_index + len(self.items) - 1}, attempt={self.attempt})"
        )

    def __len__(self) -> int:
        return len(self.items)

    def claim(self) -> bool:
        """Called by a backend just before the task starts; False if it was cancelled."""
        if self.cancelled:
            return False
        if not self.claimed:
            self.claimed = True  # a requeued or retried task has claimed its future already
            if self.future is not None:
                return self.future.set_running_or_notify_cancel()
        return True

    def item_repr(self, position: int) -> str:
        item = self.items[position]
        if self.kind is CallKind.CALL:
            args, kwargs = item
            parts = [_short_repr(a, 30) for a in args]
            parts += [f"{k}={_short_repr(v, 30)}" for k, v in kwargs.items()]
            text = f"({', '.join(parts)})"
            return text if len(text) <= 80 else text[:77] + "..."
        return _short_repr(item)

    def describe(self, position: int = 0) -> str:
        """How messages name an item: ``item 17 (42)``, or ``call 3: fetch(1, x=2)`` for submit."""
        index = self.first_index + position
        if self.kind is CallKind.CALL:
            name = getattr(self.function.fn, "__qualname__", "fn")
            return f"call {index}: {name}{self.item_repr(position)}"
        return f"item {index} ({self.item_repr(position)})"

    def split(self) -> list[Task]:
        """One task per item, keeping attempt and limits: used to isolate a failing item."""
        return [self.single(position) for position in range(len(self.items))]

    def halves(self) -> list[Task]:
        """This chunk in two halves, keeping attempt and limits, each marked as sent again (a
        half that fails is split further, not resent): bisection of a failing chunk."""
        middle = len(self.items) // 2
        halves = []
        for start, stop in ((0, middle), (middle, len(self.items))):
            half = self._copy(self.attempt)
            half.items = self.items[start:stop]
            half.first_index = self.first_index + start
            half.resent = True
            halves.append(half)
        return halves

    def head(self, stop: int) -> Task:
        """The items before ``stop``, same attempt: the ones a failed chunk's worker reported."""
        task = self._copy(self.attempt)
        task.items = self.items[:stop]
        return task

    def tail(self, start: int) -> Task:
        """The items from ``start`` on, same attempt, not marked as sent again: the rest of a
        chunk whose worker reported the items before ``start`` and then failed. Progress was
        made, so the failure is not yet held against this part (see scheduler._salvage)."""
        task = self._copy(self.attempt)
        task.items = self.items[start:]
        task.first_index = self.first_index + start
        return task

    def single(self, position: int) -> Task:
        """A task of just the item at ``position``, with the same attempt and limits."""
        return Task(
            function=self.function,
            kind=self.kind,
            items=[self.items[position]],
            first_index=self.first_index + position,
            attempt=self.attempt,
            timeout=self.timeout,
            seed=self.seed,
            resources=self.resources,
            future=self.future,
            claimed=self.claimed,
        )

    def resend(self) -> Task:
        """This chunk again, whole, same attempt: its worker died, maybe for no fault of its own
        (a kill from outside, the OOM killer choosing it); if it dies again, it is split."""
        task = self._copy(self.attempt)
        task.resent = True
        return task

    def retry(self) -> Task:
        """A fresh copy of this task for its next attempt."""
        return self._copy(self.attempt + 1)

    def _copy(self, attempt: int) -> Task:
        task = Task(
            function=self.function,
            kind=self.kind,
            items=self.items,
            first_index=self.first_index,
            attempt=attempt,
            timeout=self.timeout,
            seed=self.seed,
            resources=self.resources,
            future=self.future,
            claimed=self.claimed,
        )
        task.stream = self.stream
        return task


class ItemFailure:
    """Stands in place of a result for an item that failed; ``error`` is what to raise."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __repr__(self) -> str:
        return f"ItemFailure({self.error!r})"


class Status(IntEnum):
    """How a task ended, as a backend reports it."""

    DONE = 0  # ran; ``values`` has one entry per item (some may be ItemFailure)
    CRASHED = 1  # the worker died; ``error`` is a WorkerCrashedError
    TIMED_OUT = 2  # ran past its timeout; ``error`` is a TaskTimeoutError
    UNREADABLE = 3  # the call (in the worker) or the results (in the caller) could not be
    # unpickled; ``error`` is a SerializationError. The engine runs a chunk's items one by one
    # to find the culprit.
    CANCELLED = 4  # dropped before or while running, at the caller's request
    FAILED = 5  # could not run at all (broken pool); ``error`` says why; never retried
    OVER_MEMORY = 6  # stopped for pushing its worker past memory_limit=; never retried


class TaskOutcome:
    """How a task ended: ``status``, a value (or ItemFailure) per item, or one ``error``."""

    __slots__ = ("status", "values", "error", "any_failed")

    def __init__(
        self,
        status: Status,
        values: list[Any] | None = None,
        error: BaseException | None = None,
        any_failed: bool = False,
    ) -> None:
        self.status = status
        self.values = values if values is not None else []
        self.error = error
        self.any_failed = any_failed

    def __repr__(self) -> str:
        return f"TaskOutcome({self.status.name}, {len(self.values)} values, error={self.error!r})"
