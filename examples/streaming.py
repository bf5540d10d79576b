"""Streaming: an endless generator, results as they finish, memory flat, reproducible random.

Run:  python examples/streaming.py
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import forkjoin as fj


def sensor_readings() -> Iterator[int]:
    """An endless input: forkjoin pulls items only as workers free up."""
    yield from itertools.count()


def noisy_measurement(reading: int) -> float:
    return reading + fj.rng().normal(scale=0.1)  # this item's own random stream


def main() -> None:
    taken = list(itertools.islice(fj.imap(noisy_measurement, sensor_readings(), seed=7), 50_000))
    again = fj.map(noisy_measurement, range(50_000), seed=7, workers=1)  # inline, same streams
    assert taken == again
    print(f"{len(taken)} readings from an endless generator; identical with workers=1: True")

    with fj.Pool(workers=2, seed=7) as pool:  # options given to a Pool apply to its calls
        futures = [pool.submit(noisy_measurement, i) for i in range(1000)]
        total = sum(f.result() for f in futures)
        stats = pool.stats()
    print(f"pool: {stats.tasks_done} tasks, {stats.bytes_sent} bytes sent, mean {total / 1000:.1f}")


if __name__ == "__main__":
    main()
