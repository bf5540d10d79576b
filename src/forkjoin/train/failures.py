"""What went wrong in a gang, and the exception that says so.

A failure is a rank's own error report, a death seen on its process sentinel, or a stall seen
in the heartbeats. When several arrive together (a killed rank makes its peers fail in gloo
within milliseconds) the root cause is chosen by ``Failure.priority``: a death first, then a
rank's own exception, then a stall, and last the peers' "connection closed" fallout.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass

import cloudpickle

from .errors import RankCrashedError, RankError, RankTimeoutError, TrainingError

__all__ = ["Failure", "crash", "is_communication_error", "in_collective", "to_error"]


@dataclass
class Failure:
    kind: str  # "error", "crash", "stall"
    rank: int
    when: float
    message: str = ""
    original_type: str = ""
    traceback_text: str = ""
    original: BaseException | None = None
    exitcode: int | None = None
    communication: bool = False  # a collective failed because a peer went away

    def priority(self) -> tuple[int, float]:
        """Root cause first: a death, then a rank's own error, then its peers' fallout."""
        order = {"crash": 0, "stall": 2}.get(self.kind, 3 if self.communication else 1)
        return (order, self.when)


_COMMUNICATION_TYPES = {"DistBackendError", "DistNetworkError", "DistStoreError", "DistError"}


def is_communication_error(type_name: str, message: str) -> bool:
    if type_name in _COMMUNICATION_TYPES:
        return True
    lowered = message.lower()
    return any(
        s in lowered
        for s in ("connection closed by peer", "connection reset", "broken pipe", "gloo")
    )


def crash(rank: int, exitcode: int | None) -> Failure:
    return Failure("crash", rank, time.time(), exitcode=exitcode)


def loads_or_none(data: bytes | None) -> BaseException | None:
    if data is None:
        return None
    try:
        value = cloudpickle.loads(data)
    except Exception:
        return None
    return value if isinstance(value, BaseException) else None


def in_collective(stack: str) -> bool:
    main = last_thread_dump(stack).split("\n\n")
    current = next((b for b in main if b.startswith("Current thread")), main[0] if main else "")
    return "torch/distributed/" in current


def last_thread_dump(text: str) -> str:
    """faulthandler's dump, with the rank's own helper threads (lifeline) left out."""
    blocks = [b for b in text.strip().split("\n\n") if b.strip()]
    keep = [b for b in blocks if "_lifeline" not in b]
    return "\n\n".join(keep or blocks)


def to_error(f: Failure, workers: int, timeout: float | None) -> TrainingError:
    """The exception the caller sees for the gang's root-cause failure."""
    where = f"rank {f.rank} of {workers}"
    if f.kind == "crash":
        code = f.exitcode
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            cause = " (likely out of memory)" if name == "SIGKILL" else ""
            message = f"{where} was killed by {name}{cause}; the gang was stopped"
        else:
            name = ""
            message = f"{where} exited with code {code} before train_fn returned"
        return RankCrashedError(message, rank=f.rank, exitcode=code, signal_name=name)
    if f.kind == "stall":
        message = (
            f"{where} stalled: {f.message}; the gang was stopped. Its Python stack:\n"
            f"{last_thread_dump(f.traceback_text) or '(no stack: the rank did not answer)'}"
        )
        assert timeout is not None
        return RankTimeoutError(
            message, rank=f.rank, timeout=timeout, stack=f.traceback_text
        )
    message = f"{where} raised {f.original_type}: {f.message}"
    return RankError(
        message, rank=f.rank, original=f.original, original_type=f.original_type,
        traceback_text=f.traceback_text,
    )
