"""Test helpers for users' own pipelines: put them through faults, and check they are safe to
run in parallel.

- ``chaos(fn, items, rates={"kill": 0.01, "raise": 0.01}, ...)``: runs ``fn`` over ``items`` on a
  pool while injecting faults (``forkjoin.bench.stress``); raises ``AssertionError`` naming what
  went wrong if any item was lost, duplicated or wrong, or a process or segment leaked.
- ``assert_parallel_safe(fn, items)``: runs ``fn`` serially (twice, and in reverse order) and in
  parallel at several worker counts and chunk sizes; raises ``AssertionError`` if the results
  differ, saying whether ``fn`` depends on a shared RNG or state kept between calls, on the
  order of calls, or on per-process state.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .bench.stress import FAULT_KINDS, StressReport, stress

__all__ = [
    "FAULT_KINDS",
    "ParallelSafetyReport",
    "StressReport",
    "assert_parallel_safe",
    "chaos",
    "check_parallel_safe",
]

# Items a safety check runs by default: enough to spread over several chunks and workers.
DEFAULT_SAMPLE = 200


def chaos(
    fn: Callable[[Any], Any] | None = None,
    items: Sequence[Any] | None = None,
    *,
    rates: dict[str, float] | None = None,
    raise_on_failure: bool = True,
    **options: Any,
) -> StressReport:
    """Run ``fn`` over ``items`` with faults injected (see ``forkjoin.bench.stress`` for the
    fault kinds and options: backend, workers, kill_every, timeout, memory_limit, retries,
    time_limit...). Default rates: 1% of items raise, 0.5% kill their worker once."""
    if rates is None:
        rates = {"raise": 0.01, "kill": 0.005}
    options.setdefault("tasks", 2000)
    options.setdefault("time_limit", 120.0)
    report = stress(fn, items, rates=rates, **options)
    if raise_on_failure and not report.ok:
        raise AssertionError("chaos run failed:\n" + report.table())
    return report


def _equal(a: Any, b: Any) -> bool:
    try:
        result = a == b
        if isinstance(result, bool):
            return result
        return bool(getattr(result, "all", lambda: result)())
    except Exception:
        try:
            return pickle.dumps(a) == pickle.dumps(b)
        except Exception:
            return False


@dataclass
class Difference:
    run: str
    index: int
    expected: Any
    got: Any

    def __str__(self) -> str:
        return f"{self.run}: item {self.index}: {self.got!r:.60} instead of {self.expected!r:.60}"


@dataclass
class ParallelSafetyReport:
    items: int
    runs: list[str]
    differences: list[Difference] = field(default_factory=list)
    diagnosis: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def safe(self) -> bool:
        return not self.differences and not self.errors

    def summary(self) -> str:
        if self.safe:
            return (
                f"parallel safe: {self.items} items gave the same results in "
                f"{len(self.runs)} runs ({', '.join(self.runs)})"
            )
        lines = ["NOT parallel safe:"]
        lines += [f"  - {d}" for d in self.diagnosis]
        lines += [f"  {e}" for e in self.errors[:5]]
        lines += [f"  {d}" for d in self.differences[:10]]
        if len(self.differences) > 10:
            lines.append(f"  ... and {len(self.differences) - 10} more differences")
        return "\n".join(lines)


def _compare(
    report: ParallelSafetyReport, run: str, expected: list[Any], got: list[Any]
) -> int:
    report.runs.append(run)
    found = 0
    for index, (a, b) in enumerate(zip(expected, got, strict=True)):
        if not _equal(a, b):
            found += 1
            if found <= 20:
                report.differences.append(Difference(run, index, a, b))
    return found


def check_parallel_safe(
    fn: Callable[[Any], Any],
    items: Sequence[Any],
    *,
    workers: Sequence[int] = (2, 3),
    chunksizes: Sequence[int | str] = (1, 7, "auto"),
    backend: str = "process",
    sample: int | None = DEFAULT_SAMPLE,
    **options: Any,
) -> ParallelSafetyReport:
    """Run ``fn`` serially and in parallel; report every difference and what it suggests."""
    import forkjoin as fj

    data = list(items)[:sample] if sample else list(items)
    report = ParallelSafetyReport(items=len(data), runs=[])
    try:
        first = [fn(x) for x in data]
        second = [fn(x) for x in data]
        backwards = [fn(x) for x in reversed(data)][::-1]
    except Exception as exc:
        report.errors.append(f"the function raised when run serially: {type(exc).__name__}: {exc}")
        return report
    report.runs.append("serial")
    unstable = _compare(report, "serial again", first, second)
    ordered = _compare(report, "serial, reversed order", first, backwards)
    parallel_diffs = 0
    for count in workers:
        with fj.Pool(workers=count, backend=backend, **options) as pool:
            for chunksize in chunksizes:
                run = f"workers={count} chunksize={chunksize}"
                try:
                    got = pool.map_list(fn, data, chunksize=chunksize)
                except Exception as exc:
                    report.errors.append(f"{run}: raised {type(exc).__name__}: {exc}")
                    continue
                parallel_diffs += _compare(report, run, first, got)
    if unstable:
        report.diagnosis.append(
            f"two serial runs in the same order differ ({unstable} items): the function uses "
            f"an unseeded random generator, the clock, or state kept between calls; draw "
            f"randomness from forkjoin.rng() and pass seed= to the map"
        )
    if ordered and not unstable:
        report.diagnosis.append(
            f"the result depends on the order of calls ({ordered} items differ when run in "
            f"reverse): the function keeps state between calls (a counter, a cache that "
            f"changes results, a shared RNG advanced by each call)"
        )
    if parallel_diffs and not (unstable or ordered):
        report.diagnosis.append(
            f"parallel runs differ from the serial one ({parallel_diffs} item results): the "
            f"function depends on per-process global state (module variables set at import or "
            f"by earlier calls, a per-process RNG, the worker's environment)"
        )
    elif parallel_diffs:
        report.diagnosis.append(
            f"parallel runs also differ from the serial one ({parallel_diffs} item results)"
        )
    return report


def assert_parallel_safe(
    fn: Callable[[Any], Any], items: Sequence[Any], **options: Any
) -> ParallelSafetyReport:
    """Raise ``AssertionError`` if ``fn`` gives different results serially and in parallel
    (at several worker counts and chunk sizes), or from one serial run to the next."""
    report = check_parallel_safe(fn, items, **options)
    if not report.safe:
        raise AssertionError(report.summary())
    return report
