"""What the benchmark's workers run.

Kept in their own importable module (not in ``bench_engine``, which runs as ``__main__``) so that
every contender's workers can import them by name: forked, spawned, loky and forkjoin workers
alike. Nothing here imports a parallel library, so importing it costs nothing measurable.
"""

from __future__ import annotations

import time


def identity(x):
    """A trivial task: all the cost is the library's."""
    return x


def spin(n: int) -> float:
    """``n`` steps of pure-Python CPU work; returns the seconds it ran, timed in the worker.

    Returning its own duration lets the benchmark tell compute time from the library's time
    (idle gaps, transport) without trusting the parent's view of the workers.
    """
    start = time.perf_counter()
    acc = 0
    for i in range(n):
        acc += i % 7
    return time.perf_counter() - start
