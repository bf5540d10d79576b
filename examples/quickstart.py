"""Quickstart: a CPU-bound function over many items, on every core, with no setup.

Run:  python examples/quickstart.py
"""

from __future__ import annotations

import math
import operator
import time

import forkjoin as fj


def count_primes(limit: int) -> int:
    """Primes below ``limit`` by trial division: deliberately pure-Python CPU work."""
    return sum(all(n % d for d in range(2, int(math.isqrt(n)) + 1)) for n in range(2, limit))


def main() -> None:
    limits = [20_000 + i for i in range(40)]

    start = time.perf_counter()
    serial = [count_primes(n) for n in limits]
    serial_s = time.perf_counter() - start

    start = time.perf_counter()
    parallel = fj.map(count_primes, limits)  # ordered list, all usable cores
    parallel_s = time.perf_counter() - start

    assert parallel == serial
    total = fj.map_reduce(count_primes, limits, reduce=operator.add, initial=0)
    assert total == sum(serial)
    workers = fj.devices().cpus
    print(
        f"{len(limits)} items on {workers} cores: serial {serial_s:.2f} s, "
        f"parallel {parallel_s:.2f} s, speedup {serial_s / parallel_s:.2f}x"
    )


if __name__ == "__main__":
    main()
