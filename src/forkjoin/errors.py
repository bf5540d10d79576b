"""forkjoin's exception tree: one place, subclassing what users already catch.

::

    Exception
     └── ForkjoinError
          ├── TaskError                  a task raised; also an instance of the original type
          ├── WorkerCrashedError         (+ BrokenProcessPool) a worker died
          ├── BrokenPoolError            (+ BrokenProcessPool) the pool cannot run tasks any more
          │                              (its initializer failed, workers cannot start)
          ├── TaskTimeoutError           (+ TimeoutError) a task ran past timeout=
          ├── SerializationError         (+ pickle.PicklingError) something could not be
          │                              pickled / unpickled
          ├── ResourceError              asked for what no slot has
          ├── DataError                  corrupt or missing input
          └── BackendUnavailableError    (+ ImportError) an optional extra is not installed

A task's exception is re-raised as ``TaskError`` whose class *also* derives from the original
exception type when that is possible (``except ValueError`` keeps working, as with Ray's
``RayTaskError``); the worker's traceback is attached as ``__cause__``.

The standard-library bases make forkjoin a drop-in for code written for ``ProcessPoolExecutor``
(``concurrent.futures.process.BrokenProcessPool`` is a ``BrokenExecutor``; loky's
``TerminatedWorkerError`` does the same).
"""

from __future__ import annotations

import builtins
import pickle
from concurrent.futures.process import BrokenProcessPool
from typing import Any, ClassVar

from ._portable import portable_exception

__all__ = [
    "ForkjoinError",
    "TaskError",
    "WorkerCrashedError",
    "BrokenPoolError",
    "TaskTimeoutError",
    "SerializationError",
    "ResourceError",
    "DataError",
    "BackendUnavailableError",
    "RemoteTraceback",
]


class ForkjoinError(Exception):
    """Root of every error forkjoin raises on its own behalf.

    A subclass lists the keyword arguments of its ``__init__`` that it keeps as attributes in
    ``_fields``, once: pickling (errors cross processes: nested pools, cluster workers, training
    ranks) is derived from that list, so a new field cannot be forgotten there.
    """

    _fields: ClassVar[tuple[str, ...]] = ()

    def __reduce__(self) -> Any:
        if not self._fields:
            return super().__reduce__()
        return (_rebuild_kw, (type(self), str(self), self.field_values()))

    def field_values(self) -> dict[str, Any]:
        """The declared fields and their values (what ``__init__`` takes as keywords)."""
        return {name: getattr(self, name) for name in self._fields}


class RemoteTraceback(Exception):
    """Carries a worker's formatted traceback; shown as the ``__cause__`` of a TaskError."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb.rstrip()}\n"""'


class TaskError(ForkjoinError):
    """A task raised an exception in a worker.

    ``original`` is the exception as raised in the worker (``None`` when it could not be sent
    back); ``original_type`` its type name; ``index`` and ``item_repr`` name the item.
    """

    _fields: ClassVar[tuple[str, ...]] = (
        "original",
        "original_type",
        "index",
        "item_repr",
        "traceback_text",
    )

    def __init__(
        self,
        message: str,
        *,
        original: BaseException | None = None,
        original_type: str = "",
        index: int | None = None,
        item_repr: str = "",
        traceback_text: str = "",
    ) -> None:
        # Not super(): in a TaskError[CalledProcessError] the next __init__ in the MRO is the
        # original type's, which may require arguments of its own (returncode, cmd...).
        Exception.__init__(self, message)
        self.original = original
        self.original_type = original_type or (type(original).__name__ if original else "")
        self.index = index
        self.item_repr = item_repr
        self.traceback_text = traceback_text

    def __reduce__(self) -> Any:
        # Rebuilt through make_task_error, so the copy derives from the original type too; the
        # original itself travels in a form that comes back (see portable_exception).
        fields = self.field_values()
        if self.original is not None:
            fields["original"] = portable_exception(self.original)
        cls = type(self)
        if cls.__module__ == __name__:  # TaskError[...] cannot be pickled by name: rebuilt
            cls = TaskError
        return (_rebuild_task_error, (cls, str(self), fields))

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _rebuild_task_error(cls: type, message: str, fields: dict[str, Any]) -> TaskError:
    if cls is TaskError:  # it may have been a TaskError[...]: make_task_error makes it again
        return make_task_error(message, **fields)
    error: TaskError = cls(message, **fields)  # a subclass with its own __init__ (RankError)
    return error


_TASK_ERROR_CLASSES: dict[type, type] = {}


def _task_error_class_for(original_cls: type) -> type:
    """A class deriving from both TaskError and the original type, cached per type."""
    cls = _TASK_ERROR_CLASSES.get(original_cls)
    if cls is None:
        try:
            cls = type(
                f"TaskError[{original_cls.__name__}]",
                (TaskError, original_cls),
                {
                    "__module__": __name__,
                    "__init__": TaskError.__init__,
                    "__str__": TaskError.__str__,
                },
            )
        except TypeError:  # final classes or layout conflicts: plain TaskError is still correct
            cls = TaskError
        _TASK_ERROR_CLASSES[original_cls] = cls
    return cls


def make_task_error(
    message: str,
    *,
    original: BaseException | None,
    original_type: str,
    index: int | None,
    item_repr: str,
    traceback_text: str,
) -> TaskError:
    """Build the TaskError a caller sees: an instance of the original exception type too."""
    cls: type = TaskError
    original_cls = (
        type(original) if original is not None else getattr(builtins, original_type, None)
    )
    if (
        isinstance(original_cls, type)
        and issubclass(original_cls, Exception)
        and not issubclass(original_cls, ForkjoinError)
    ):
        cls = _task_error_class_for(original_cls)
    try:
        error: TaskError = cls.__new__(cls)  # type: ignore[call-overload]
    except Exception:  # a type whose __new__ wants its own arguments: the plain TaskError
        error = TaskError.__new__(TaskError)
    if original is not None and cls is not TaskError:
        _copy_attributes(original, error)
    TaskError.__init__(
        error,
        message,
        original=original,
        original_type=original_type,
        index=index,
        item_repr=item_repr,
        traceback_text=traceback_text,
    )
    if traceback_text:
        error.__cause__ = RemoteTraceback(traceback_text)
    return error


def _copy_attributes(original: BaseException, error: TaskError) -> None:
    """``except CalledProcessError as e: e.returncode`` keeps working: the original's instance
    attributes are copied onto the TaskError that stands in for it (TaskError's own fields are
    set afterwards, so they win)."""
    try:
        error.__dict__.update(vars(original))
    except TypeError:  # no __dict__ (slots only): the fields are on the original
        pass


class WorkerCrashedError(ForkjoinError, BrokenProcessPool):
    """A worker process died (signal, exit, OOM killer) while running a task.

    ``exitcode`` is the exit status (negative: killed by signal ``-exitcode``), ``signal_name``
    the signal's name, ``peak_rss`` the worker's peak resident memory in bytes (0 if unknown),
    ``index`` the item it was running, ``attempts`` how many workers the task took down.
    """

    _fields: ClassVar[tuple[str, ...]] = (
        "exitcode",
        "signal_name",
        "peak_rss",
        "index",
        "attempts",
    )

    def __init__(
        self,
        message: str,
        *,
        exitcode: int | None = None,
        signal_name: str = "",
        peak_rss: int = 0,
        index: int | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(message)
        self.exitcode = exitcode
        self.signal_name = signal_name
        self.peak_rss = peak_rss
        self.index = index
        self.attempts = attempts


class BrokenPoolError(ForkjoinError, BrokenProcessPool):
    """The pool can run no more tasks: its initializer raised, or its workers cannot start.
    Every pending and later task fails with this error; create a new pool once the cause is
    fixed."""


class TaskTimeoutError(ForkjoinError, TimeoutError):
    """A task ran past its ``timeout=``; its worker was stopped and replaced."""

    _fields: ClassVar[tuple[str, ...]] = ("timeout", "index")

    def __init__(self, message: str, *, timeout: float = 0.0, index: int | None = None) -> None:
        super().__init__(message)
        self.timeout = timeout
        self.index = index


class SerializationError(ForkjoinError, pickle.PicklingError):
    """Something could not be pickled or unpickled.

    ``what`` is one of ``WHAT``: the function, the call (a cluster engine's task as a whole),
    an argument, a result, the pool's initializer, an ``fj.shared`` object; ``side`` is where
    it failed: ``"caller"`` (pickling the call / unpickling the result in your process) or
    ``"worker"``.
    """

    WHAT: ClassVar[frozenset[str]] = frozenset(
        {"function", "call", "argument", "result", "initializer", "fj.shared object"}
    )
    _fields: ClassVar[tuple[str, ...]] = ("what", "side", "index")

    def __init__(
        self, message: str, *, what: str = "", side: str = "", index: int | None = None
    ) -> None:
        super().__init__(message)
        self.what = what
        self.side = side
        self.index = index


class ResourceError(ForkjoinError):
    """A task asked for resources that no worker slot can ever provide."""


class DataError(ForkjoinError):
    """Input data is corrupt, truncated or missing; the message names the file."""


class BackendUnavailableError(ForkjoinError, ImportError):
    """An optional backend's package is not installed; the message says what to install."""


def _rebuild_kw(cls: type, message: str, fields: dict[str, Any]) -> Exception:
    error: Exception = cls(message, **fields)
    return error
