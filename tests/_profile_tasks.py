"""Workloads with a known shape for the profiler's accuracy tests (imported by workers)."""

from __future__ import annotations

# Fixed amounts of the same work (not deadlines): on a loaded machine, time taken from the
# process stretches both parts alike, so slow_part stays 70% of the work.
SLOW_STEPS = 70_000
FAST_STEPS = 30_000


def _work(steps: int) -> int:
    total = 0
    for i in range(steps):
        total += i * i % 7
    return total


def slow_part() -> int:
    return _work(SLOW_STEPS)


def fast_part() -> int:
    return _work(FAST_STEPS)


def hot_task(x: int) -> int:
    """70% of its time in slow_part, 30% in fast_part."""
    slow_part()
    fast_part()
    return x * 2
