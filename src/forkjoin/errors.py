"""forkjoin's exception tree: one place, subclassing what users already catch.

::

    Exception
     └── ForkjoinError
          ├── TaskError                  a task raised; also an instance of the original type
          ├── WorkerCrashedError         (+ concurrent.futures.BrokenExecutor) a worker died
          ├── TaskTimeoutError           (+ TimeoutError) a task ran past timeout=
          ├── SerializationError         something could not be pickled / unpickled
          ├── ResourceError              asked for what no slot has
          ├── DataError                  corrupt or missing input
          └── BackendUnavailableError    (+ ImportError) an optional extra is not installed

A task's exception is re-raised as ``TaskError`` whose class *also* derives from the original
exception type when that is possible (``except ValueError`` keeps working, as with Ray's
``RayTaskError``); the worker's traceback is attached as ``__cause__``.
"""

from __future__ import annotations

import builtins
from concurrent.futures import BrokenExecutor
from typing import Any

__all__ = [
    "ForkjoinError",
    "TaskError",
    "WorkerCrashedError",
    "TaskTimeoutError",
    "SerializationError",
    "ResourceError",
    "DataError",
    "BackendUnavailableError",
    "RemoteTraceback",
]


class ForkjoinError(Exception):
    """Root of every error forkjoin raises on its own behalf."""


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
        super().__init__(message)
        self.original = original
        self.original_type = original_type or (type(original).__name__ if original else "")
        self.index = index
        self.item_repr = item_repr
        self.traceback_text = traceback_text

    def __reduce__(self) -> Any:  # keep the extra fields when a TaskError itself is pickled
        return (
            _rebuild_task_error,
            (
                str(self),
                self.original,
                self.original_type,
                self.index,
                self.item_repr,
                self.traceback_text,
            ),
        )

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _rebuild_task_error(
    message: str,
    original: BaseException | None,
    original_type: str,
    index: int | None,
    item_repr: str,
    traceback_text: str,
) -> TaskError:
    return make_task_error(
        message,
        original=original,
        original_type=original_type,
        index=index,
        item_repr=item_repr,
        traceback_text=traceback_text,
    )


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
    error: TaskError = cls.__new__(cls)  # type: ignore[call-overload]
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


class WorkerCrashedError(ForkjoinError, BrokenExecutor):
    """A worker process died (signal, exit, OOM killer) while running a task.

    ``exitcode`` is the exit status (negative: killed by signal ``-exitcode``), ``signal_name``
    the signal's name, ``peak_rss`` the worker's peak resident memory in bytes (0 if unknown),
    ``index`` the item it was running, ``attempts`` how many workers the task took down.
    """

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

    def __reduce__(self) -> Any:
        return (
            _rebuild_kw,
            (
                type(self),
                str(self),
                {
                    "exitcode": self.exitcode,
                    "signal_name": self.signal_name,
                    "peak_rss": self.peak_rss,
                    "index": self.index,
                    "attempts": self.attempts,
                },
            ),
        )


class TaskTimeoutError(ForkjoinError, TimeoutError):
    """A task ran past its ``timeout=``; its worker was stopped and replaced."""

    def __init__(self, message: str, *, timeout: float = 0.0, index: int | None = None) -> None:
        super().__init__(message)
        self.timeout = timeout
        self.index = index

    def __reduce__(self) -> Any:
        return (
            _rebuild_kw,
            (type(self), str(self), {"timeout": self.timeout, "index": self.index}),
        )


class SerializationError(ForkjoinError):
    """Something could not be pickled or unpickled.

    ``what`` is ``"function"``, ``"argument"``, ``"result"`` or ``"exception"``; ``side`` is
    where it failed: ``"caller"`` (pickling the call / unpickling the result in your process) or
    ``"worker"``.
    """

    def __init__(
        self, message: str, *, what: str = "", side: str = "", index: int | None = None
    ) -> None:
        super().__init__(message)
        self.what = what
        self.side = side
        self.index = index

    def __reduce__(self) -> Any:
        return (
            _rebuild_kw,
            (type(self), str(self), {"what": self.what, "side": self.side, "index": self.index}),
        )


class ResourceError(ForkjoinError):
    """A task asked for resources that no worker slot can ever provide."""


class DataError(ForkjoinError):
    """Input data is corrupt, truncated or missing; the message names the file."""


class BackendUnavailableError(ForkjoinError, ImportError):
    """An optional backend's package is not installed; the message says what to install."""


def _rebuild_kw(cls: type, message: str, fields: dict[str, Any]) -> Exception:
    error: Exception = cls(message, **fields)
    return error
