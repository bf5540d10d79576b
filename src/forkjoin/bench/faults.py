"""The faults a stress run injects, and what each must produce.

``Faulty`` wraps the user's function: it runs in the workers, so this module stays small (the
workers import it, not the stress runner). ``plan_faults`` picks the items that misbehave;
``Checker`` counts each result against the serial reference and the plan.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .stress import StressReport

FAULT_KINDS = ("kill", "hang", "raise", "unpicklable", "memory")
# Faults after which the item must come back as an error (kills are retried and must succeed).
FAILING = ("hang", "raise", "unpicklable", "memory")
# How long a hang lasts, as a multiple of timeout=: long enough to be surely past it.
HANG_FACTOR = 4.0


class InjectedFault(Exception):
    """The exception the ``raise`` fault throws."""


class Unpicklable:
    """What the ``unpicklable`` fault returns."""

    def __reduce__(self) -> Any:
        raise TypeError("injected fault: this result cannot be pickled")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Unpicklable)

    def __hash__(self) -> int:
        return 0


def trivial(x: int) -> int:
    """The built-in tiny task."""
    return x * 2 + 1


def checksum(data: bytes) -> int:
    """The built-in large-payload task."""
    import zlib

    return zlib.crc32(data)


class Payloads(Sequence[bytes]):
    """``count`` payloads of ``size`` bytes, made on demand (memory stays flat)."""

    def __init__(self, count: int, size: int) -> None:
        self.length = count
        self.size = size

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.length))]
        if not 0 <= index < self.length:
            raise IndexError(index)
        word = index.to_bytes(8, "little")
        return word * (self.size // 8) + word[: self.size % 8]


WORKLOADS: dict[str, Callable[[int, int], tuple[Callable[[Any], Any], Sequence[Any]]]] = {
    "trivial": lambda n, _size: (trivial, range(n)),
    "payload": lambda n, size: (checksum, Payloads(n, size)),
}


def _first_time(marker_dir: str, index: int) -> bool:
    try:
        fd = os.open(os.path.join(marker_dir, f"k{index}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


class Faulty:
    """``fn`` wrapped to take ``(index, item)``, return ``(index, value)`` and misbehave on the
    indices in ``faults``. Picklable, so it travels to workers by reference to this module."""

    def __init__(
        self,
        fn: Callable[[Any], Any],
        faults: dict[int, str],
        marker_dir: str = "",
        hang_seconds: float = 0.0,
        memory_bytes: int = 0,
    ) -> None:
        self.fn = fn
        self.faults = faults
        self.marker_dir = marker_dir
        self.hang_seconds = hang_seconds
        self.memory_bytes = memory_bytes

    def __call__(self, pair: tuple[int, Any]) -> tuple[int, Any]:
        index, item = pair
        kind = self.faults.get(index) if self.faults else None
        if kind is not None:
            if kind == "kill":
                if _first_time(self.marker_dir, index):
                    os.kill(os.getpid(), signal.SIGKILL)
                    time.sleep(5)  # the signal is on its way
            elif kind == "hang":
                time.sleep(self.hang_seconds)
            elif kind == "raise":
                raise InjectedFault(f"injected fault at item {index}")
            elif kind == "unpicklable":
                return (index, Unpicklable())
            elif kind == "memory":
                block = b"\x01" * self.memory_bytes  # written, so resident
                time.sleep(2.0)  # the memory watchdog stops this worker meanwhile
                del block
        return (index, self.fn(item))


def plan_faults(n: int, rates: dict[str, float], seed: int) -> dict[int, str]:
    """Which item indices get which fault: ``round(rate * n)`` distinct indices per kind."""
    rng = random.Random(seed)
    want = {kind: round(rate * n) for kind, rate in rates.items() if rate > 0}
    total = sum(want.values())
    if total > n:
        raise ValueError(f"fault rates add up to more than one fault per item ({total} > {n})")
    chosen = rng.sample(range(n), total) if total else []
    plan: dict[int, str] = {}
    position = 0
    for kind, count in want.items():
        for index in chosen[position : position + count]:
            plan[index] = kind
        position += count
    return plan


def expected_error(kind: str) -> type[BaseException]:
    from ..errors import SerializationError, TaskError, TaskTimeoutError, WorkerCrashedError

    return {
        "hang": TaskTimeoutError,
        "raise": TaskError,
        "unpicklable": SerializationError,
        "memory": WorkerCrashedError,
    }[kind]


class Checker:
    """Counts each result against the reference and the fault plan, as results arrive."""

    def __init__(
        self,
        report: StressReport,
        reference: list[Any],
        plan: dict[int, str],
        n: int,
        serializes: bool,
    ) -> None:
        self.report = report
        self.reference = reference
        self.plan = plan
        self.n = n
        self.serializes = serializes
        self.seen = bytearray(n)

    def note(self, text: str) -> None:
        if len(self.report.examples) < 5:
            self.report.examples.append(text)

    def consume(self, results: Any) -> None:
        """The fast path for the common case (a good result of an item without a fault); the
        rest goes through ``add``. Per result it costs about what the engine's own loop does,
        so that checking does not slow down the run it checks."""
        seen = self.seen
        reference = self.reference
        plan = self.plan
        n = self.n
        good = 0
        for value in results:
            if value.__class__ is tuple and len(value) == 2:
                index, got = value
                if (
                    index.__class__ is int and 0 <= index < n and not seen[index]
                    and index not in plan and got == reference[index]
                ):  # fmt: skip
                    seen[index] = 1
                    good += 1
                    continue
            self.add(value)
        self.report.done += good

    def _count(self, index: int) -> None:
        self.seen[index] = min(255, self.seen[index] + 1)

    def add(self, value: Any) -> None:
        report = self.report
        plan = self.plan
        if isinstance(value, tuple) and len(value) == 2 and value[0] == "__stress_error__":
            report.unexpected_failures += 1
            self.note(f"the run itself raised {type(value[1]).__name__}: {value[1]}")
            return
        if isinstance(value, BaseException):
            index = getattr(value, "index", None)
            if index is None or not 0 <= index < self.n:
                report.unexpected_failures += 1
                self.note(f"failure naming no item: {type(value).__name__}: {value}")
                return
            self._count(index)
            kind = plan.get(index)
            if kind in FAILING and isinstance(value, expected_error(kind)):
                report.failed_as_expected += 1
            else:
                report.unexpected_failures += 1
                self.note(f"item {index} (fault {kind}): {type(value).__name__}: {value}")
            return
        try:
            index, got = value
        except (TypeError, ValueError):
            report.unexpected_failures += 1
            self.note(f"a result that is not (index, value): {value!r:.80}")
            return
        if not isinstance(index, int) or not 0 <= index < self.n:
            report.wrong += 1
            return
        self._count(index)
        kind = plan.get(index)
        if kind == "unpicklable" and not self.serializes and isinstance(got, Unpicklable):
            report.failed_as_expected += 1  # nothing pickled it: it came back as it was
        elif kind in FAILING:
            report.unexpected_failures += 1
            self.note(f"item {index} should have failed ({kind}) but returned {got!r:.60}")
        elif got == self.reference[index]:
            report.done += 1
        else:
            report.wrong += 1
            self.note(f"item {index}: got {got!r:.60}, expected {self.reference[index]!r:.60}")

    def finish(self) -> None:
        seen = self.seen
        self.report.lost = seen.count(0)
        self.report.duplicated = self.n - seen.count(0) - seen.count(1)
        if self.report.lost:
            self.note(f"{self.report.lost} item(s) never came back, e.g. item {seen.index(0)}")
