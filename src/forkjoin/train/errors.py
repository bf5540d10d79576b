"""Training errors: subclasses of forkjoin's exception tree, so ``except ForkjoinError`` (or the
standard library class each one also derives from) keeps working.

::

    ForkjoinError
     └── TrainingError                          the gang failed; ``rank`` names the rank
          ├── RankError          (+ TaskError)  a rank raised; its traceback is ``__cause__``
          ├── RankCrashedError   (+ WorkerCrashedError, BrokenExecutor)  a rank died
          └── RankTimeoutError   (+ TaskTimeoutError, TimeoutError)      a rank stalled

Every one of them carries ``rank``, ``restarts`` (how many relaunches were used before the run
gave up) and ``stack`` (faulthandler stacks of the ranks when the gang was stopped, where known).
"""

from __future__ import annotations

from typing import ClassVar

from forkjoin.errors import (
    ForkjoinError,
    RemoteTraceback,
    TaskError,
    TaskTimeoutError,
    WorkerCrashedError,
)

__all__ = ["TrainingError", "RankError", "RankCrashedError", "RankTimeoutError"]


class TrainingError(ForkjoinError):
    """A training gang failed: one rank raised, died or stalled."""

    rank: int | None = None
    restarts: int = 0
    stack: str = ""


class RankError(TrainingError, TaskError):
    """A rank's ``train_fn`` raised. ``original_type`` is the exception's type name,
    ``traceback_text`` the rank's traceback (also attached as ``__cause__``)."""

    _fields: ClassVar[tuple[str, ...]] = (
        "rank",
        "original",
        "original_type",
        "traceback_text",
        "restarts",
    )

    def __init__(
        self,
        message: str,
        *,
        rank: int,
        original: BaseException | None = None,
        original_type: str = "",
        traceback_text: str = "",
        restarts: int = 0,
    ) -> None:
        TaskError.__init__(
            self,
            message,
            original=original,
            original_type=original_type,
            index=rank,
            traceback_text=traceback_text,
        )
        self.rank = rank
        self.restarts = restarts
        if traceback_text:
            self.__cause__ = RemoteTraceback(traceback_text)


class RankCrashedError(TrainingError, WorkerCrashedError):
    """A rank's process died (signal, ``os._exit``, out of memory) before it finished."""

    _fields: ClassVar[tuple[str, ...]] = ("rank", "exitcode", "signal_name", "peak_rss", "restarts")

    def __init__(
        self,
        message: str,
        *,
        rank: int,
        exitcode: int | None = None,
        signal_name: str = "",
        peak_rss: int = 0,
        restarts: int = 0,
    ) -> None:
        WorkerCrashedError.__init__(
            self, message, exitcode=exitcode, signal_name=signal_name, peak_rss=peak_rss, index=rank
        )
        self.rank = rank
        self.restarts = restarts


class RankTimeoutError(TrainingError, TaskTimeoutError):
    """A rank sent no heartbeat for ``timeout`` seconds; ``stack`` is its Python stack."""

    _fields: ClassVar[tuple[str, ...]] = ("rank", "timeout", "stack", "restarts")

    def __init__(
        self, message: str, *, rank: int, timeout: float, stack: str = "", restarts: int = 0
    ) -> None:
        TaskTimeoutError.__init__(self, message, timeout=timeout, index=rank)
        self.rank = rank
        self.stack = stack
        self.restarts = restarts
